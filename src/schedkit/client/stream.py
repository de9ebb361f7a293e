"""The blocking client's ScheduleTasks stream: a bounded window of batches in flight and a
watchdog thread for a server that stops answering (answers are matched by client/answers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import grpc

from schedkit.client.answers import Pending, stalled
from schedkit.client.status import error_from_rpc
from schedkit.model import ScheduleResult
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.batches import Batch


def stream_batches(
    stub: pb_grpc.ScheduleServiceStub,
    batches: Iterable[Batch],
    *,
    max_in_flight: int,
    stall_timeout: float | None,
) -> Iterator[ScheduleResult]:
    """One result per item of every batch, in order (see ``Client.schedule_batches``)."""
    pending = Pending()
    slots = threading.Semaphore(max_in_flight)
    finished = threading.Event()
    progress = _Progress()

    def requests() -> Iterator[pb.ScheduleTasksRequest]:
        for batch in batches:
            if not batch.sent:
                pending.add(batch)  # nothing to send: answered from its local errors
                continue
            while not slots.acquire(timeout=0.5):
                if finished.is_set():
                    return
            pending.add(batch)
            yield batch.request

    responses = stub.ScheduleTasks(requests())
    if stall_timeout is not None:
        watchdog = threading.Thread(
            target=progress.watch,
            args=(responses, pending, finished, stall_timeout),
            name="schedkit-stall-watch",
            daemon=True,
        )
        watchdog.start()
    try:
        for response in responses:
            progress.mark()
            slots.release()
            yield from pending.answer(response)
        yield from pending.unsent()
    except grpc.RpcError as exc:
        if progress.stalled and stall_timeout is not None:
            raise stalled(stall_timeout) from exc
        raise error_from_rpc(exc) from exc
    finally:
        finished.set()
        responses.cancel()


class _Progress:
    """When a stream last got an answer, and a watch that cancels it once it stalls."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.stalled = False

    def mark(self) -> None:
        self.last = time.monotonic()

    def watch(
        self, call: grpc.RpcContext, pending: Pending, finished: threading.Event, timeout: float
    ) -> None:
        """Cancel ``call`` when batches wait for an answer and none came for ``timeout`` s."""
        while not finished.wait(min(1.0, timeout / 4)):
            if not pending.waiting:
                self.mark()  # nothing asked: the clock runs from the next request
            elif time.monotonic() - self.last > timeout:
                self.stalled = True
                call.cancel()
                return
