"""Build, start and stop the gRPC server: ScheduleService, health and reflection."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import replace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from schedkit.auth import TokenInterceptor, check_exposure, server_credentials
from schedkit.errors import Unavailable
from schedkit.interceptors import ErrorInterceptor
from schedkit.schedules import Schedules
from schedkit.service import ScheduleService
from schedkit.settings import Settings
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ScheduleService"].full_name
# How often the server asks the store whether it answers, to report it in health.
STORE_CHECK_EVERY = 1.0


class Server:
    """A running gRPC server; ``port`` is the bound port (useful with ``localhost:0``).

    Listen address, threads, message size, token and TLS come from ``settings`` (the
    schedules' own unless given); a non-loopback address needs a token or mTLS unless
    ``settings.insecure``.
    """

    def __init__(
        self, schedules: Schedules, *, settings: Settings | None = None, listen: str | None = None
    ) -> None:
        settings = settings or schedules.settings
        if listen is not None:
            settings = replace(settings, listen=listen)
        check_exposure(settings)
        tokens = settings.tokens()
        credentials = server_credentials(settings)  # unreadable files fail before binding
        # The token check runs first: an unauthenticated call never reaches the servicer.
        interceptors: list[grpc.ServerInterceptor] = [TokenInterceptor(tokens)] if tokens else []
        interceptors.append(ErrorInterceptor())
        self.health = health.HealthServicer()
        self._schedules = schedules
        self._stopping = threading.Event()
        self._store_watch: threading.Thread | None = None
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=settings.server_threads, thread_name_prefix="schedkit-rpc"
            ),
            interceptors=interceptors,
            options=[
                # Batches of thousands of tasks exceed gRPC's 4 MiB default.
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_ScheduleServiceServicer_to_server(ScheduleService(schedules), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        listen = settings.listen
        self.tls = credentials is not None
        if credentials is None:
            self.port = self._grpc.add_insecure_port(listen)
        else:
            self.port = self._grpc.add_secure_port(listen, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        host = listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"
        self.authenticated = bool(tokens)

    def start(self) -> Server:
        """Start serving and report SERVING, then NOT_SERVING whenever the store is down."""
        self._grpc.start()
        self._set_health(serving=True)
        self._store_watch = threading.Thread(
            target=self._watch_store, name="schedkit-store-health", daemon=True
        )
        self._store_watch.start()
        log.info(
            "schedkit gRPC server listening on %s (tls=%s, token=%s)",
            self.address,
            self.tls,
            self.authenticated,
        )
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Flip health to NOT_SERVING, then let in-flight calls finish for ``grace`` seconds."""
        self._stopping.set()
        if self._store_watch is not None:
            self._store_watch.join(STORE_CHECK_EVERY + 5)
        self.health.enter_graceful_shutdown()
        self._grpc.stop(grace).wait()

    def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def _watch_store(self) -> None:
        """Health follows the store: every call needs it, so a server without it cannot serve
        (for readiness checks; a liveness check would restart servers that are fine)."""
        serving = True
        while not self._stopping.wait(STORE_CHECK_EVERY):
            try:
                self._schedules.store.ping()
            except Unavailable as exc:
                if serving:
                    log.warning("store unreachable, health NOT_SERVING: %s", exc)
                serving = False
            else:
                if not serving:
                    log.info("store reachable again, health SERVING")
                serving = True
            if not self._stopping.is_set():
                self._set_health(serving=serving)

    def wait(self) -> None:
        """Block until the server stops."""
        self._grpc.wait_for_termination()
