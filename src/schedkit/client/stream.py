"""Streaming ready-made batches over one ScheduleTasks call: a bounded window of batches in
flight, a watchdog for a server that stops answering, and each answer matched back to the
caller's items (local errors in their places, field paths renumbered)."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable, Iterator

import grpc

from schedkit.client.status import error_from_rpc
from schedkit.errors import FieldViolation, SchedkitError, Unavailable, error_class_for
from schedkit.model import Outcome, ScheduleResult
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.batches import Batch
from schedkit.wire.convert import outcome_from_proto


def stream_batches(
    stub: pb_grpc.ScheduleServiceStub,
    batches: Iterable[Batch],
    *,
    max_in_flight: int,
    stall_timeout: float | None,
) -> Iterator[ScheduleResult]:
    """One result per item of every batch, in order (see ``Client.schedule_batches``)."""
    pending: collections.deque[Batch] = collections.deque()
    slots = threading.Semaphore(max_in_flight)
    finished = threading.Event()
    progress = _Progress()

    def requests() -> Iterator[pb.ScheduleTasksRequest]:
        for batch in batches:
            if not batch.sent:
                pending.append(batch)  # nothing to send: answered from its local errors
                continue
            while not slots.acquire(timeout=0.5):
                if finished.is_set():
                    return
            pending.append(batch)
            yield batch.request

    def unsent() -> Iterator[ScheduleResult]:
        while pending and not pending[0].sent:
            for error in pending.popleft().local_errors:
                yield ScheduleResult("", Outcome.REJECTED, error)

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
            yield from unsent()
            yield from _answers(pending.popleft(), response)
        yield from unsent()
    except grpc.RpcError as exc:
        if progress.stalled:
            raise Unavailable(
                f"the server answered no batch for {stall_timeout:g}s; gave up on this "
                "stream (re-sending keyed tasks is safe)"
            ) from exc
        raise error_from_rpc(exc) from exc
    finally:
        finished.set()
        responses.cancel()


_OUTCOMES = {
    pb.SCHEDULE_OUTCOME_CREATED: Outcome.CREATED,
    pb.SCHEDULE_OUTCOME_EXISTING: Outcome.EXISTING,
}


class _Progress:
    """When a stream last got an answer, and a watch that cancels it once it stalls."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.stalled = False

    def mark(self) -> None:
        self.last = time.monotonic()

    def watch(
        self,
        call: grpc.RpcContext,
        pending: collections.deque[Batch],
        finished: threading.Event,
        timeout: float,
    ) -> None:
        """Cancel ``call`` when batches wait for an answer and none came for ``timeout`` s."""
        while not finished.wait(min(1.0, timeout / 4)):
            waiting = any(batch.sent for batch in list(pending))
            if not waiting:
                self.mark()  # nothing asked: the clock runs from the next request
            elif time.monotonic() - self.last > timeout:
                self.stalled = True
                call.cancel()
                return


# Fields that the server numbers by an item's place among the items sent.
_NUMBERED_FIELDS = (
    "specs",
    "columns.run_time_micros",
    "columns.idempotency_keys",
    "columns.template_index",
)


def _answers(batch: Batch, response: pb.ScheduleTasksResponse) -> Iterator[ScheduleResult]:
    """The results of one batch in the caller's order, from its response and local errors."""
    remote = iter(response.results)
    sent = 0
    for index, error in enumerate(batch.local_errors):
        if error is not None:
            yield ScheduleResult("", Outcome.REJECTED, error)
            continue
        result = next(remote)
        outcome = _OUTCOMES.get(result.outcome)
        if outcome is not None:  # created or existing: nothing else to read
            yield ScheduleResult(result.id, outcome)
        else:
            # The server numbered only what was sent; name the caller's index.
            field = result.error.field
            name = next((n for n in _NUMBERED_FIELDS if field.startswith(f"{n}[{sent}]")), "")
            renumber = (f"{name}[{sent}]", f"{name}[{index}]") if name else None
            yield result_from_proto(result, renumber=renumber)
        sent += 1


def result_from_proto(
    msg: pb.ScheduleResult, *, renumber: tuple[str, str] | None = None
) -> ScheduleResult:
    """A ScheduleResult from its message; a rejection carries the matching error.

    ``renumber`` = (old, new) rewrites a field path prefix, such as a batch index.
    """
    outcome = outcome_from_proto(msg.outcome)
    error: SchedkitError | None = None
    if outcome is Outcome.REJECTED:
        code = next((c for c in grpc.StatusCode if c.value[0] == msg.error.code), None)
        cls = error_class_for(code) if code else SchedkitError
        field, message = msg.error.field, msg.error.message
        if renumber and field.startswith(renumber[0]):
            field = renumber[1] + field.removeprefix(renumber[0])
            message = message.replace(renumber[0], renumber[1])
        violations = (FieldViolation(field, message),) if field else ()
        error = cls(message, violations=violations)
    return ScheduleResult(msg.id, outcome, error)
