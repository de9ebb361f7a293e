"""Recurring schedules through the whole stack: oracle tests of what *ran*.

Each oracle computes, independently of schedkit, the nominal times a spec and a policy give
over a span with an outage or a pause, and compares them with the runs a real worker
finished. Materialization follows a clock the test moves (``Clock``): a day of hourly runs
cannot take a day. The runs it makes lie in the past of the real clock, so the stack's real
dispatcher hands them off at once and a real Celery worker runs them; the worker's own trace
(schedkit.demo.runs) says how often each ran.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import pytest

from conftest import FAST, Clock, poll, violations
from schedkit.client.client import Client
from schedkit.demo import runs
from schedkit.dispatch.dispatcher import Dispatcher
from schedkit.dispatch.registry import TaskRegistry
from schedkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from schedkit.model import EPOCH, FINAL_STATES, TaskRecord, TaskSpec, TaskState
from schedkit.recurrence import Recurrence
from schedkit.recurring import NOMINAL_LABEL, SCHEDULE_LABEL, Overlap, ScheduleDef
from schedkit.service.recurring import Recurring
from schedkit.service.schedules import Schedules
from schedkit.testing import LocalStack, local_stack
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc

BERLIN = ZoneInfo("Europe/Berlin")
# Shorter than the default catch-up window (1 min): a longer step would be an outage.
STEP = timedelta(seconds=30)


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[LocalStack]:
    with local_stack(data_dir=tmp_path / "data", **FAST) as running:
        yield running


def controlled(stack: LocalStack, start: datetime) -> tuple[Clock, Recurring]:
    """Put the stack's materializer on a test clock; a use case on the same clock."""
    assert stack.dispatcher is not None
    assert stack.store is not None
    assert stack.app is not None
    clock = Clock(start)
    stack.dispatcher.materializer.clock = clock
    schedules = Schedules(stack.store, TaskRegistry(stack.app), stack.settings, clock=clock)
    return clock, Recurring(schedules)


def walk(stack: LocalStack, clock: Clock, until: datetime) -> None:
    """Move the clock in steps shorter than the lookahead, materializing at each."""
    assert stack.dispatcher is not None
    while clock.now < until:
        clock.now = min(until, clock.now + STEP)
        stack.dispatcher.materializer.run_until_idle(clock.now)


def settled_runs(
    client: Client, stack: LocalStack, schedule_id: str, timeout: float = 90
) -> list[TaskRecord]:
    """The schedule's runs once every run it made is listed and final. (A claimed task is in
    no state index for a moment, so the count comes from the schedule, not the listing.)"""
    deadline = time.monotonic() + timeout
    while True:
        made = client.get_schedule(schedule_id).run_count
        tasks = list(client.tasks(labels={SCHEDULE_LABEL: schedule_id}))
        if len(tasks) == made and all(t.state in FINAL_STATES for t in tasks):
            return tasks
        assert time.monotonic() < deadline, Counter(t.state for t in tasks)
        time.sleep(0.2)  # polling the store: the condition is checked, not the time


def ran(client: Client, stack: LocalStack, schedule_id: str) -> list[datetime]:
    """Nominal times of the runs that a worker finished, each checked to have run once."""
    tasks = settled_runs(client, stack, schedule_id)
    assert stack.store is not None
    started = Counter(r["id"] for r in runs(stack.store))
    done = [t for t in tasks if t.state is TaskState.SUCCEEDED]
    others = [(t.state, t.error, t.spec.labels[NOMINAL_LABEL]) for t in tasks if t not in done]
    assert not others  # every run made ran: none expired, failed or was cancelled
    assert all(started[t.id] == 1 for t in done)
    return sorted(datetime.fromisoformat(t.spec.labels[NOMINAL_LABEL]) for t in done)


def hourly(start: datetime, end: datetime) -> list[datetime]:
    """The oracle: every whole UTC hour in [start, end) (Berlin's offsets are whole hours)."""
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(hours=1)
    out = []
    while first < end:
        out.append(first)
        first += timedelta(hours=1)
    return out


def definition(**spec: object) -> ScheduleDef:
    """Runs of a past span all start at once: these oracles are about which nominal times
    run, so overlapping is allowed (overlap has its own test)."""
    return ScheduleDef(
        recurrence=Recurrence(**spec),  # type: ignore[arg-type]
        action=TaskSpec("add", EPOCH, [1, 2]),
        overlap=Overlap.ALLOW_ALL,
    )


@pytest.mark.parametrize(("day", "runs_that_day"), [((2026, 10, 25), 25), ((2026, 3, 29), 23)])
def test_an_hourly_cron_in_berlin_runs_every_real_hour_of_a_dst_day(
    own_stack: LocalStack, day: tuple[int, int, int], runs_that_day: int
) -> None:
    begin = datetime(*day, tzinfo=BERLIN).astimezone(UTC)
    end = (datetime(*day, tzinfo=BERLIN) + timedelta(days=1)).astimezone(UTC)
    clock, recurring = controlled(own_stack, begin)
    recurring.create(
        "berlin",
        definition(cron=("0 * * * *",), tz="Europe/Berlin", end=end - timedelta(seconds=1)),
    )
    walk(own_stack, clock, end)
    with own_stack.client() as client:
        done = ran(client, own_stack, "berlin")
    assert len(done) == runs_that_day
    assert done == hourly(begin, end)


def test_resume_after_a_paused_day_runs_nothing_from_that_day(own_stack: LocalStack) -> None:
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    clock, recurring = controlled(own_stack, t0)
    recurring.create("paused", definition(every=timedelta(hours=1), start=t0))
    walk(own_stack, clock, t0 + timedelta(hours=2))
    with own_stack.client() as client:
        settled_runs(
            client, own_stack, "paused"
        )  # what was made has run: nothing parked at the pause
        paused_at = clock.now
        recurring.pause("paused", "a day off")
        walk(own_stack, clock, t0 + timedelta(hours=26, minutes=30))
        resumed_at = clock.now
        recurring.resume("paused", "back")
        walk(own_stack, clock, t0 + timedelta(hours=28, minutes=30))
        done = ran(client, own_stack, "paused")
    lookahead = timedelta(seconds=own_stack.settings.schedule_lookahead)
    expected = hourly(t0, paused_at + lookahead) + hourly(resumed_at, clock.now + lookahead)
    assert done == expected
    assert not [t for t in done if paused_at + lookahead <= t < resumed_at]


@pytest.mark.parametrize("coalesce", [False, True], ids=["each", "coalesced"])
def test_a_catchup_window_of_an_hour_after_three_hours_down_runs_the_last_hour(
    own_stack: LocalStack, coalesce: bool
) -> None:
    t0 = datetime(2026, 6, 2, tzinfo=UTC)
    step = timedelta(minutes=10)
    clock, recurring = controlled(own_stack, t0)
    recurring.create(
        "catchup",
        ScheduleDef(
            Recurrence(every=step, start=t0),
            TaskSpec("add", EPOCH, [1, 2]),
            catchup_window=timedelta(hours=1),
            overlap=Overlap.ALLOW_ALL,
            coalesce=coalesce,
        ),
    )
    walk(own_stack, clock, t0 + timedelta(minutes=30))
    down_from = clock.now
    clock.now = down_from + timedelta(hours=3)  # the dispatchers were down for three hours
    back = clock.now
    assert own_stack.dispatcher is not None
    own_stack.dispatcher.materializer.run_until_idle(back)  # the first round back
    walk(own_stack, clock, back + timedelta(minutes=30))
    with own_stack.client() as client:
        done = ran(client, own_stack, "catchup")
    lookahead = timedelta(seconds=own_stack.settings.schedule_lookahead)

    def grid(a: datetime, b: datetime) -> list[datetime]:
        return [t0 + k * step for k in range(10_000) if a <= t0 + k * step < b]

    missed = grid(back - timedelta(hours=1), back)
    assert len(missed) == 6
    after_outage = missed[-1:] if coalesce else missed
    assert done == grid(t0, down_from + lookahead) + after_outage + grid(
        back, clock.now + lookahead
    )


def test_a_backfill_called_twice_runs_each_nominal_time_once(own_stack: LocalStack) -> None:
    with own_stack.client() as client:
        # It ended last June: only the backfill's runs run in this test.
        client.create_schedule(
            "bf",
            "add",
            args=[1, 2],
            every=timedelta(minutes=15),
            end=datetime(2026, 6, 1, tzinfo=UTC),
            overlap="allow_all",
        )
        start = datetime(2026, 5, 1, 8, tzinfo=UTC)
        end = start + timedelta(hours=2)
        assert client.backfill("bf", start, end) == (8, 0)
        assert client.backfill("bf", start, end) == (0, 8)
        done = ran(client, own_stack, "bf")
    assert done == [start + timedelta(minutes=15 * k) for k in range(8)]


def test_overlap_skip_never_lets_two_runs_of_a_schedule_be_started_at_once(
    own_stack: LocalStack,
) -> None:
    with own_stack.client() as client:
        client.create_schedule(
            "long", "nap", kwargs={"seconds": 2.5}, every=timedelta(seconds=1), overlap="skip"
        )
        deadline = time.monotonic() + 60
        while len([t for t in client.tasks(labels={SCHEDULE_LABEL: "long"})
                   if t.state is TaskState.SUCCEEDED]) < 2:  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.2)
        client.pause("long")
        tasks = settled_runs(client, own_stack, "long")
    done = sorted((t for t in tasks if t.state is TaskState.SUCCEEDED), key=lambda t: t.spec.run_at)
    skipped = [t for t in tasks if t.state is TaskState.CANCELLED and "overlap" in t.error]
    assert len(done) >= 2
    assert skipped  # a 2.5 s task every second: most runs found the last one going
    for first, second in itertools.pairwise(done):
        assert first.finished_at is not None
        assert second.started_at is not None
        assert first.finished_at <= second.started_at


def test_three_dispatchers_make_and_run_each_run_of_many_schedules_once(
    own_stack: LocalStack,
) -> None:
    assert own_stack.store is not None
    assert own_stack.app is not None
    t0 = datetime(2026, 7, 1, tzinfo=UTC)
    clock, recurring = controlled(own_stack, t0)
    extra = [
        Dispatcher(own_stack.store, own_stack.app, own_stack.settings, broker=own_stack.broker)
        for _ in range(2)
    ]
    for dispatcher in extra:
        dispatcher.materializer.clock = clock
        dispatcher.start()
    try:
        for n in range(10):
            recurring.create(f"many-{n}", definition(every=timedelta(minutes=7), start=t0))
        end = t0 + timedelta(hours=2)
        while clock.now < end:  # every dispatcher's loop materializes at the clock too
            clock.now += timedelta(minutes=1)
            for dispatcher in [own_stack.dispatcher, *extra]:
                assert dispatcher is not None
                dispatcher.materializer.run_once(clock.now)
        with own_stack.client() as client:  # the clock stands still: nothing more is made
            lookahead = timedelta(seconds=own_stack.settings.schedule_lookahead)
            expected = [t0 + k * timedelta(minutes=7) for k in range(100)]
            expected = [t for t in expected if t < end + lookahead]
            for n in range(10):
                assert ran(client, own_stack, f"many-{n}") == expected
    finally:
        for dispatcher in extra:
            dispatcher.stop()


def test_schedules_over_grpc_name_bad_fields_and_map_errors(client: Client) -> None:
    created = client.create_schedule(
        "grpc-daily", "add", args=[1, 2], cron="0 8 * * *", tz="Europe/Paris", labels={"t": "g"}
    )
    assert created.outcome == "CREATED"
    assert len(created.next_run_times) == 10
    assert (
        client.create_schedule(
            "grpc-daily", "add", args=[1, 2], cron="0 8 * * *", tz="Europe/Paris", labels={"t": "g"}
        ).outcome
        == "EXISTING"
    )
    with pytest.raises(AlreadyExists):
        client.create_schedule("grpc-daily", "add", args=[1, 3], cron="0 8 * * *")
    with pytest.raises(InvalidArgument) as caught:
        client.create_schedule("grpc-bad", "add", args=[1, 2], cron="0 25 * * *")
    assert caught.value.violations[0].field == "schedule.spec"
    with pytest.raises(InvalidArgument) as caught:
        client.create_schedule(
            "grpc-bad", "add", args=[1, 2], every=timedelta(minutes=1), tz="Nowhere/Else"
        )
    assert caught.value.violations[0].field == "schedule.spec"
    assert [s.id for s in client.schedules(labels={"t": "g"})] == ["grpc-daily"]
    assert client.pause("grpc-daily", "why not").note == "why not"
    assert client.resume("grpc-daily").paused is False
    run = client.trigger("grpc-daily")
    assert client.wait_for(run.id, ["SUCCEEDED"], timeout=60).state is TaskState.SUCCEEDED
    assert client.get_schedule("grpc-daily").recent_runs[0].task_id == run.id
    client.delete_schedule("grpc-daily")
    with pytest.raises(NotFound):
        client.get_schedule("grpc-daily")


def test_update_task_and_cancel_tasks_over_grpc(client: Client) -> None:
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    task = client.schedule("add", 1, 2, run_at=later, labels={"edit": "me"})
    moved = client.update_task(task.id, run_at=later + timedelta(hours=1), args=[3, 4])
    assert (moved.spec.run_at, moved.spec.args) == (later + timedelta(hours=1), [3, 4])
    done = client.schedule("add", 1, 1, run_at=datetime.now(UTC))
    client.wait_for(done.id, ["SUCCEEDED"], timeout=60)
    with pytest.raises(FailedPrecondition, match="SUCCEEDED"):
        client.update_task(done.id, priority=1)
    for n in range(5):
        client.schedule("add", n, 0, run_at=later, labels={"edit": "me"})
    assert client.cancel_tasks(labels={"edit": "me"}) == 6
    assert client.cancel_tasks(labels={"edit": "me"}) == 0


def test_update_schedule_replaces_what_the_mask_names(
    client: Client, stub: pb_grpc.ScheduleServiceStub
) -> None:
    client.create_schedule("grpc-upd", "add", args=[1, 2], cron="0 8 * * *", labels={"a": "1"})
    change = pb.Schedule(id="grpc-upd", labels={"a": "2"})
    change.spec.cron_expressions.append("0 9 * * *")
    request = pb.UpdateScheduleRequest(schedule=change)
    request.update_mask.paths.append("labels")
    stub.UpdateSchedule(request)
    after = client.get_schedule("grpc-upd")
    assert after.definition.labels == {"a": "2"}
    assert after.definition.recurrence.cron == ("0 8 * * *",)  # spec was not in the mask
    request.update_mask.paths.append("spec")
    stub.UpdateSchedule(request)
    assert client.get_schedule("grpc-upd").definition.recurrence.cron == ("0 9 * * *",)
    request.update_mask.paths.append("state")
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateSchedule(request)
    assert violations(caught.value) == {
        "update_mask.paths[2]": "'state' cannot be updated; one of spec, action, policies, labels"
    }
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListSchedules(pb.ListSchedulesRequest(page_size=5000))
    assert "page_size" in violations(caught.value)
    client.delete_schedule("grpc-upd")


@pytest.mark.parametrize("policy", ["buffer_all", "cancel_other"])
def test_buffer_and_cancel_other_never_let_two_runs_go_at_once(
    own_stack: LocalStack, policy: str
) -> None:
    with own_stack.client() as client:
        client.create_schedule(
            policy, "nap", kwargs={"seconds": 1.5}, every=timedelta(seconds=1), overlap=policy
        )
        deadline = time.monotonic() + 60
        while len([t for t in client.tasks(labels={SCHEDULE_LABEL: policy})
                   if t.state in FINAL_STATES]) < 3:  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.2)
        client.pause(policy)
        tasks = settled_runs(client, own_stack, policy)
    ended = sorted(
        (t for t in tasks if t.started_at is not None and t.finished_at is not None),
        key=lambda t: t.started_at or EPOCH,
    )
    assert len(ended) >= 3
    for first, second in itertools.pairwise(ended):
        assert first.finished_at is not None
        assert second.started_at is not None
        assert first.finished_at <= second.started_at
    if policy == "buffer_all":  # waited, never skipped
        assert not [t for t in tasks if t.state is TaskState.CANCELLED]
    else:  # the newer run stopped the older one
        assert [t for t in tasks if "overlap: cancelled by run" in t.error]


def test_exclusions_read_back_and_skip_their_days(client: Client) -> None:
    made = client.create_schedule(
        "grpc-weekdays", "add", args=[1, 2], cron="0 8 * * *", exclude=["* * * * sat,sun"]
    )
    assert made.definition.recurrence.exclude == ("* * * * sat,sun",)
    assert {t.weekday() for t in made.next_run_times} <= {0, 1, 2, 3, 4}
    client.delete_schedule("grpc-weekdays")


def test_coalesce_reads_back_over_grpc(client: Client) -> None:
    made = client.create_schedule(
        "grpc-coalesce", "add", args=[1, 2], every=timedelta(hours=1), coalesce=True
    )
    assert made.definition.coalesce
    assert client.get_schedule("grpc-coalesce").definition.coalesce
    client.delete_schedule("grpc-coalesce")


def test_a_failed_run_pauses_a_schedule_that_asks_for_it(client: Client) -> None:
    client.create_schedule(
        "grpc-fragile", "fail", every=timedelta(seconds=1), pause_on_failure=True
    )
    deadline = time.monotonic() + 60
    while not (schedule := client.get_schedule("grpc-fragile")).paused:
        assert time.monotonic() < deadline, "never paused"
        time.sleep(0.2)
    assert schedule.note.startswith("paused on failure of run ")
    run_id = schedule.note.removeprefix("paused on failure of run ")
    # The pause is written as the run fails; its finish record follows from the worker's
    # batched recorder, a moment later.
    poll(lambda: client.get(run_id).state is TaskState.FAILED, 30, "the named run to be FAILED")
    assert client.get(run_id).spec.labels[SCHEDULE_LABEL] == "grpc-fragile"
    client.delete_schedule("grpc-fragile")
