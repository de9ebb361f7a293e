"""Build, start and stop the gRPC server: ScheduleService, health and reflection."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from schedkit.interceptors import ErrorInterceptor
from schedkit.schedules import Schedules
from schedkit.service import ScheduleService
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ScheduleService"].full_name
# Batches of thousands of tasks exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Server:
    """A running gRPC server; ``port`` is the bound port (useful with ``localhost:0``)."""

    def __init__(self, schedules: Schedules, *, listen: str, threads: int = 32) -> None:
        self.health = health.HealthServicer()
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="schedkit-rpc"),
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_ScheduleServiceServicer_to_server(ScheduleService(schedules), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        self.port = self._grpc.add_insecure_port(listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        host = listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"

    def start(self) -> Server:
        """Start serving and report SERVING."""
        self._grpc.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("schedkit gRPC server listening on %s", self.address)
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Flip health to NOT_SERVING, then let in-flight calls finish for ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        self._grpc.stop(grace).wait()

    def wait(self) -> None:
        """Block until the server stops."""
        self._grpc.wait_for_termination()
