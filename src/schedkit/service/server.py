"""Build, start and stop the gRPC server: ScheduleService, health and reflection.

The server is ``grpc.aio``: a call is a coroutine on one event loop, so a stream (a watch, a
quiet batch stream, a health watch, reflection) costs no thread and cannot starve the others.
The loop runs in a thread of its own; :class:`Server` keeps a blocking API (start, stop, wait)
for the stack, the CLI and tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from schedkit.errors import Unavailable
from schedkit.service.auth import TokenInterceptor, check_exposure, server_credentials
from schedkit.service.interceptors import ErrorInterceptor
from schedkit.service.schedules import Schedules
from schedkit.service.servicer import ScheduleService
from schedkit.service.streams import StreamGuard, StreamLimits
from schedkit.service.watch import ChangeFeed
from schedkit.settings import Settings
from schedkit.store.aio import AsyncStore
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ScheduleService"].full_name
# How often the server asks the store whether it answers, to report it in health.
STORE_CHECK_EVERY = 1.0
# Unary calls waiting for a store thread, beyond the streams' own ceilings; more are
# answered RESOURCE_EXHAUSTED by gRPC instead of queueing without limit.
MAX_WAITING_CALLS = 1000
# Unary calls one connection may have in flight beside its streams.
UNARY_CALLS_PER_CONNECTION = 100


class Server:
    """A running gRPC server; ``port`` is the bound port (useful with ``localhost:0``).

    Listen address, threads, message size, stream limits, token and TLS come from
    ``settings`` (the schedules' own unless given); a non-loopback address needs a token or
    mTLS unless ``settings.insecure``. With ``reuse_port`` the port may be shared with other
    server processes of the same user (SO_REUSEPORT: the kernel spreads connections).
    """

    def __init__(
        self,
        schedules: Schedules,
        *,
        settings: Settings | None = None,
        listen: str | None = None,
        reuse_port: bool = False,
    ) -> None:
        settings = settings or schedules.settings
        if listen is not None:
            settings = replace(settings, listen=listen)
        check_exposure(settings)
        self.settings = settings
        self._tokens = settings.tokens()
        self._credentials = server_credentials(settings)  # unreadable files fail before binding
        self._schedules = schedules
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.server_threads, thread_name_prefix="schedkit-rpc"
        )
        self._loop = _grpc_loop()
        self._reuse_port = reuse_port
        self._stopped = threading.Event()
        self._store_watch: asyncio.Task[None] | None = None
        try:
            self.port = self._run(self._build())
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        host = settings.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"
        self.tls = self._credentials is not None
        self.authenticated = bool(self._tokens)

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run ``coroutine`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _build(self) -> int:
        settings = self.settings
        token_check = TokenInterceptor(self._tokens) if self._tokens else None
        # The token check runs first: an unauthenticated call never reaches the servicer,
        # and its request is never read.
        interceptors: list[grpc.aio.ServerInterceptor] = [token_check] if token_check else []
        interceptors += [
            StreamGuard(StreamLimits.of(settings), token_check.caller_of if token_check else None),
            ErrorInterceptor(SERVICE_NAME),
        ]
        self._grpc = grpc.aio.server(
            interceptors=interceptors,
            options=[
                # Batches of thousands of tasks exceed gRPC's 4 MiB default.
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # HTTP/2 streams one connection may open at once; more wait at the client.
                # Room for a caller's every stream plus unary calls beside them, so a caller
                # past its stream bound hears RESOURCE_EXHAUSTED rather than waiting.
                (
                    "grpc.max_concurrent_streams",
                    settings.max_streams_per_caller + UNARY_CALLS_PER_CONNECTION,
                ),
                # Off unless asked: a second server on a taken port must fail, not share it.
                ("grpc.so_reuseport", int(self._reuse_port)),
            ],
            maximum_concurrent_rpcs=settings.max_streams
            + 2 * settings.max_open_streams
            + MAX_WAITING_CALLS,
        )
        self._store = AsyncStore(self._schedules.store)
        self.feed = ChangeFeed(self._store)
        servicer = ScheduleService(self._schedules, self._executor, self._store, self.feed)
        pb_grpc.add_ScheduleServiceServicer_to_server(servicer, self._grpc)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        if self._credentials is None:
            port = self._grpc.add_insecure_port(settings.listen)
        else:
            port = self._grpc.add_secure_port(settings.listen, self._credentials)
        if port == 0:
            raise OSError(f"cannot listen on {settings.listen}")
        return port

    def start(self) -> Server:
        """Start serving and report SERVING, then NOT_SERVING whenever the store is down."""
        self._run(self._start())
        log.info(
            "schedkit gRPC server listening on %s (tls=%s, token=%s)",
            self.address,
            self.tls,
            self.authenticated,
        )
        return self

    async def _start(self) -> None:
        await self._grpc.start()
        await self._set_health(serving=True)
        self._store_watch = asyncio.create_task(self._watch_store(), name="schedkit-health")

    def stop(self, grace: float = 5.0) -> None:
        """Flip health to NOT_SERVING, then let in-flight calls finish for ``grace`` seconds."""
        if self._stopped.is_set():
            return
        try:
            self._run(self._stop(grace), timeout=grace + 30)
        finally:
            self._stopped.set()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _stop(self, grace: float) -> None:
        if self._store_watch is not None:
            self._store_watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self._grpc.stop(grace)
        await self.feed.close()
        await self._store.close()

    async def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _watch_store(self) -> None:
        """Health follows the store: every call needs it, so a server without it cannot serve
        (for readiness checks; a liveness check would restart servers that are fine)."""
        serving = True
        while True:
            await asyncio.sleep(STORE_CHECK_EVERY)
            try:
                # Not on the store executor: calls stuck on a silent store must not hold the
                # check that reports it.
                await asyncio.to_thread(self._schedules.store.ping)
            except Unavailable as exc:
                if serving:
                    log.warning("store unreachable, health NOT_SERVING: %s", exc)
                serving = False
            else:
                if not serving:
                    log.info("store reachable again, health SERVING")
                serving = True
            await self._set_health(serving=serving)

    def wait(self) -> None:
        """Block until the server stops."""
        self._stopped.wait()


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _grpc_loop() -> asyncio.AbstractEventLoop:
    """The one event loop every server of this process runs on, in a daemon thread.

    One for all: grpc.aio binds its completion queue to the loop that first used it, so
    a server on a second loop, or on a loop closed after the first server stopped, would
    never see its calls.
    """
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="schedkit-grpc", daemon=True).start()
        return _loop
