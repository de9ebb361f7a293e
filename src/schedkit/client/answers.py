"""ScheduleTasks answers matched back to the caller's items: each batch's results in order,
local errors in their places and field paths renumbered. Pure: the blocking and the asyncio
stream both feed it the batches they sent and the responses they read."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import grpc

from schedkit.errors import FieldViolation, SchedkitError, Unavailable, error_class_for
from schedkit.model import Outcome, ScheduleResult
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.batches import Batch
from schedkit.wire.convert import outcome_from_proto


class Pending:
    """The batches of one stream that wait for their answer, in the order they were given
    (batches with nothing to send wait in their place and are answered from local errors)."""

    def __init__(self) -> None:
        self.batches: collections.deque[Batch] = collections.deque()

    def add(self, batch: Batch) -> None:
        """A batch given to the stream (sent, or kept for its local errors)."""
        self.batches.append(batch)

    @property
    def waiting(self) -> bool:
        """Whether a sent batch waits for its answer."""
        return any(batch.sent for batch in list(self.batches))

    def unsent(self) -> Iterator[ScheduleResult]:
        """The results of the batches at the head that were never sent."""
        while self.batches and not self.batches[0].sent:
            for error in self.batches.popleft().local_errors:
                yield ScheduleResult("", Outcome.REJECTED, error)

    def answer(self, response: pb.ScheduleTasksResponse) -> Iterator[ScheduleResult]:
        """The results up to and including the batch that ``response`` answers."""
        yield from self.unsent()
        yield from _answers(self.batches.popleft(), response)


def stalled(stall_timeout: float) -> Unavailable:
    """The error of a stream whose server answered no batch for ``stall_timeout`` seconds."""
    return Unavailable(
        f"the server answered no batch for {stall_timeout:g}s; gave up on this "
        "stream (re-sending keyed tasks is safe)"
    )


_OUTCOMES = {
    pb.SCHEDULE_OUTCOME_CREATED: Outcome.CREATED,
    pb.SCHEDULE_OUTCOME_EXISTING: Outcome.EXISTING,
}

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
