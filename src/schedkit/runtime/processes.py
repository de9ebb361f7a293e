"""Several server processes on one address: ``schedkit serve --processes N``.

One Python process answers from one core (the GIL), so unary throughput grows only with
processes. Each child runs a whole server (:func:`schedkit.runtime.serving.build_server`) with
SO_REUSEPORT on the same port, and the kernel spreads incoming connections over them. The
servers share nothing but the store, which already holds all state: WatchTasks follows the
store's event stream, so a watch sees changes made through any process.

The parent only reserves the port, starts the children, restarts one that dies and stops
them all on SIGTERM or Ctrl-C. It binds the port first (without listening, so it receives no
connections) for two reasons: ``:0`` becomes one concrete port every child can share, and the
port stays held while a child restarts.

Children are started with ``spawn``, not ``fork``: gRPC and redis-py state must not be
inherited from a parent that may have created some.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import socket
import threading
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess

from schedkit.errors import ConfigError, SchedkitError
from schedkit.logs import configure
from schedkit.settings import Settings

log = logging.getLogger(__name__)

#: The most server processes one command may start; more than cores only adds contention.
MAX_PROCESSES = 64
#: Seconds a child has to import, connect to the store and bind before start fails.
START_TIMEOUT = 60.0
#: A slot whose process died is restarted no sooner than this after its last start, so a
#: child that dies at once (store gone, port stolen) does not spin the parent.
RESTART_DELAY = 1.0


def check_count(count: int) -> int:
    """``count`` if it is a usable number of processes, else ConfigError naming the setting."""
    if not 1 <= count <= MAX_PROCESSES:
        raise ConfigError(
            f"SCHEDKIT_SERVER_PROCESSES (--processes) is {count}: give 1 to {MAX_PROCESSES}"
        )
    return count


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """Bind (not listen on) ``listen`` with SO_REUSEPORT; return the socket and the address
    with the port it got, which ``:0`` leaves to the kernel."""
    host, _, port = listen.rpartition(":")
    try:
        number = int(port)
        infos = socket.getaddrinfo(
            host.strip("[]") or None, number, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (ValueError, OSError) as exc:
        raise ConfigError(f"cannot listen on {listen!r}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {listen}: {exc}") from exc
    return sock, f"{host}:{sock.getsockname()[1]}"


def _serve_child(
    settings: Settings, ready: multiprocessing.connection.Connection, log_level: int
) -> None:
    """One child: a server on the shared port until the parent sends SIGTERM."""
    configure(settings.log_format, level=log_level)
    stop = threading.Event()
    # Ctrl-C reaches the whole process group; the parent decides, and tells the children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    from schedkit.runtime.serving import build_server, connect_store  # heavy: Celery, gRPC

    try:
        server = build_server(settings, connect_store(settings), reuse_port=True).start()
    except Exception as exc:
        ready.send(str(exc) or type(exc).__name__)
        raise SystemExit(2) from None
    ready.send("")
    stop.wait()
    server.stop(settings.shutdown_grace)


class ServerProcesses:
    """``count`` server processes sharing ``settings.listen``; see the module docstring."""

    def __init__(self, settings: Settings, count: int, *, log_level: int = logging.INFO) -> None:
        self.settings = settings
        self.count = check_count(count)
        self._log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self._children: list[BaseProcess] = []
        self._started_at: list[float] = []
        self._reserved: socket.socket | None = None
        self.address = settings.listen

    @property
    def pids(self) -> list[int]:
        """Process ids of the children now running."""
        return [child.pid for child in self._children if child.pid is not None]

    def start(self) -> ServerProcesses:
        """Reserve the port and start every child; raise if one cannot serve."""
        self._reserved, self.address = reserve_port(self.settings.listen)
        try:
            for _ in range(self.count):
                self._children.append(self._spawn())
                self._started_at.append(time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> BaseProcess:
        settings = replace(self.settings, listen=self.address)
        reader, writer = self._context.Pipe(duplex=False)
        child = self._context.Process(
            target=_serve_child,
            args=(settings, writer, self._log_level),
            name="schedkit-server",
            daemon=False,
        )
        child.start()
        writer.close()
        try:
            if not multiprocessing.connection.wait([reader, child.sentinel], START_TIMEOUT):
                child.kill()
                raise SchedkitError(f"a server process did not start in {START_TIMEOUT:.0f} s")
            try:
                failure = reader.recv()
            except EOFError:
                child.join(5)
                failure = f"it exited with code {child.exitcode}"
        finally:
            reader.close()
        if failure:
            child.join(5)
            raise SchedkitError(f"a server process could not start: {failure}")
        return child

    def supervise(self, stop: threading.Event) -> None:
        """Restart any child that dies, until ``stop`` is set."""
        while not stop.is_set():
            sentinels = [child.sentinel for child in self._children]
            multiprocessing.connection.wait(sentinels, timeout=0.5)
            if stop.is_set():
                return
            for slot, child in enumerate(self._children):
                if child.is_alive():
                    continue
                wait = self._started_at[slot] + RESTART_DELAY - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    return
                log.warning(
                    "server process %s exited with code %s; starting another",
                    child.pid,
                    child.exitcode,
                )
                self._started_at[slot] = time.monotonic()
                try:
                    self._children[slot] = self._spawn()
                except SchedkitError as exc:
                    log.error("%s; trying again", exc)

    def stop(self) -> None:
        """SIGTERM every child, give them the shutdown grace, then kill what is left."""
        for child in self._children:
            if child.is_alive():
                child.terminate()
        deadline = time.monotonic() + self.settings.shutdown_grace + 10
        for child in self._children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(5)
        self._children.clear()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
