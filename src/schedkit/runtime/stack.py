"""The whole schedkit stack in one process tree: what ``schedkit up`` runs.

Starts only what is missing: the embedded Redis when no store URL is given, a Celery worker
unless told not to, and always the dispatcher and the gRPC server. Stops in reverse order, the
server first (health NOT_SERVING, in-flight calls drained) and Redis last.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from types import TracebackType

from celery import Celery

from schedkit.dispatch.broker import Broker
from schedkit.dispatch.dispatcher import Dispatcher
from schedkit.dispatch.registry import TaskRegistry, load_app
from schedkit.errors import Unavailable
from schedkit.runtime.embedded import RedisServer
from schedkit.runtime.metrics import MetricsServer, serve_metrics
from schedkit.runtime.processes import ServerProcesses, check_count
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.settings import Settings
from schedkit.store.store import Store

log = logging.getLogger(__name__)


class Stack:
    """Store, worker, dispatcher and server, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker: bool = True,
        worker_pool: str = "prefork",
        worker_log: str | None = None,
    ) -> None:
        self.settings = settings
        self.run_worker = worker
        self.worker_pool = worker_pool
        self.worker_log = worker_log
        self.redis: RedisServer | None = None
        self.store: Store | None = None
        self.app: Celery | None = None
        self.broker: Broker | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.dispatcher: Dispatcher | None = None
        self.server: Server | None = None
        #: The server processes, instead of ``server``, when settings ask for more than one.
        self.servers: ServerProcesses | None = None
        self._servers_supervisor: threading.Thread | None = None
        self.metrics: MetricsServer | None = None
        #: How often the worker exited by itself and was started again.
        self.worker_restarts = 0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        # Held while the supervisor restarts a worker or stop_worker detaches it, so a worker
        # stopped on purpose is never taken for one that died and started again.
        self._worker_lock = threading.Lock()

    @property
    def address(self) -> str:
        """host:port the gRPC server listens on."""
        if self.servers is not None:
            return self.servers.address
        assert self.server is not None, "stack not started"
        return self.server.address

    def start(self, *, wait_for_worker: float | None = None) -> Stack:
        """Start every part; optionally wait until the worker answers a ping."""
        try:
            self._start(wait_for_worker)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, wait_for_worker: float | None) -> None:
        settings = self.settings
        _ = settings.effective_broker_url  # a broker in the store's database: ConfigError now
        if not settings.store_url:
            self.redis = RedisServer(
                data_dir=settings.data_dir / "redis", appendfsync=settings.appendfsync
            ).start()
            settings = self.settings = settings.with_store(self.redis.url)
            log.info("embedded Redis on %s (data in %s)", self.redis.url, self.redis.data_dir)
        self.store = Store.for_settings(settings)
        self.store.ping()
        # The app is only read here (task names, signatures); publishing and control go
        # through this stack's own broker connection, so stacks sharing an app stay apart.
        self.app = load_app(settings.app)
        self.broker = Broker.for_settings(self.app, settings)
        if self.run_worker:
            self.start_worker()
            if wait_for_worker:
                self.wait_for_worker(wait_for_worker)
            self._supervisor = threading.Thread(
                target=self._supervise, name="schedkit-worker-supervisor", daemon=True
            )
            self._supervisor.start()
        self.dispatcher = Dispatcher(self.store, self.app, settings, broker=self.broker).start()
        if check_count(settings.server_processes) > 1:
            self._start_server_processes(settings)
        else:
            registry = TaskRegistry(self.app, settings.allow_tasks, settings.allow_queues)
            schedules = Schedules(self.store, registry, settings, broker=self.broker)
            self.server = Server(schedules).start()
        if settings.metrics_port:
            self.metrics = serve_metrics(
                self.store, port=settings.metrics_port, addr=settings.metrics_addr
            )

    def _start_server_processes(self, settings: Settings) -> None:
        level = logging.getLogger("schedkit").getEffectiveLevel()
        self.servers = ServerProcesses(settings, settings.server_processes, log_level=level)
        self.servers.start()
        self._servers_supervisor = threading.Thread(
            target=self.servers.supervise,
            args=(self._stopping,),
            name="schedkit-server-supervisor",
            daemon=True,
        )
        self._servers_supervisor.start()

    def worker_command(self) -> list[str]:
        """The command line of the worker process."""
        return [
            sys.executable, "-m", "schedkit", "worker",
            "--app", self.settings.app,
            "--store", self.settings.store_url,
            "--broker", self.settings.effective_broker_url,
            "--concurrency", str(self.settings.worker_concurrency),
            "--pool", self.worker_pool,
            "--loglevel", self.settings.worker_loglevel,
        ]  # fmt: skip

    def worker_env(self) -> dict[str, str]:
        """The worker's environment: this process's, then every one of the stack's settings
        (the start guard waits for the replicas the stack asks for, the worker consumes every
        queue a task may name, the overlap guard buffers as configured, ...)."""
        env = {**os.environ, **self.settings.to_env()}
        env.pop("SCHEDKIT_TOKEN", None)  # the worker answers no calls: it needs no token
        return env

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start (or restart) the Celery worker process."""
        output = open(self.worker_log, "ab") if self.worker_log else None  # noqa: SIM115
        # A session of its own: Ctrl-C reaches schedkit up, which stops the parts in order.
        self.worker = subprocess.Popen(
            self.worker_command(),
            env=self.worker_env(),
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
        )
        if output:
            output.close()
        return self.worker

    def _supervise(self, every: float = 1.0) -> None:
        # A Celery worker can die by itself (killed, out of memory, or kombu's "Unrecoverable
        # error" when the Redis broker goes away at the wrong moment); start it again. What it
        # held comes back from the broker after the visibility timeout.
        while not self._stopping.wait(every):
            with self._worker_lock:
                worker = self.worker
                if worker is None or worker.poll() is None or self._stopping.is_set():
                    continue
                log.warning(
                    "the Celery worker exited with code %s; starting it again",
                    worker.returncode,
                    extra={"exit_code": worker.returncode},
                )
                self.worker_restarts += 1
                self.start_worker()

    def wait_for_worker(self, timeout: float) -> None:
        """Block until a worker answers Celery's ping, or raise Unavailable."""
        assert self.broker is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.worker is not None and self.worker.poll() is not None:
                raise Unavailable(f"the Celery worker exited with code {self.worker.returncode}")
            if self.broker.ping(timeout=0.5):
                return
        raise Unavailable(f"no Celery worker answered within {timeout:g}s")

    def stop_worker(self, timeout: float = 20.0) -> None:
        """Warm-shutdown the worker (SIGTERM), killing it after ``timeout``."""
        with self._worker_lock:
            worker, self.worker = self.worker, None
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

    def stop(self) -> None:
        """Stop everything that was started, server first, Redis last."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
            self._supervisor = None
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        if self.server is not None:
            self.server.stop(self.settings.shutdown_grace)
            self.server = None
        if self._servers_supervisor is not None:
            self._servers_supervisor.join(5)
            self._servers_supervisor = None
        if self.servers is not None:
            self.servers.stop()
            self.servers = None
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
        self.stop_worker()
        if self.broker is not None:
            self.broker.close()
            self.broker = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def local_settings(**overrides: object) -> Settings:
    """Settings for a throwaway stack: free ports everywhere, no environment read."""
    return replace(Settings(listen="127.0.0.1:0"), **overrides)  # type: ignore[arg-type]
