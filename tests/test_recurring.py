"""Recurring schedules on a real Redis, with the clock in the test's hands: the use case
(service/recurring), the store scripts and the materializer, without a worker.

Claims about which runs are *made* live here, at any instant the test picks; claims about
runs that *ran* go through a real dispatcher and worker in test_schedules_stack.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from conftest import Clock, schedule_ids
from schedkit.demo import app as demo_app
from schedkit.dispatch.materialize import Materializer
from schedkit.dispatch.registry import TaskRegistry
from schedkit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from schedkit.model import EPOCH, Outcome, TaskSpec, TaskState, task_id_for
from schedkit.recurrence import Recurrence
from schedkit.recurring import NOMINAL_LABEL, SCHEDULE_LABEL, Overlap, ScheduleDef, run_key
from schedkit.service.edits import TaskEdits
from schedkit.service.recurring import Recurring
from schedkit.service.schedules import Schedules
from schedkit.settings import Settings
from schedkit.store.query import TaskQuery
from schedkit.store.store import Store

T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def recurring(store: Store, settings: Settings, clock: Clock) -> Recurring:
    return Recurring(Schedules(store, TaskRegistry(demo_app), settings, clock=clock))


def materializer(store: Store, settings: Settings, clock: Callable[[], datetime]) -> Materializer:
    return Materializer(store, settings, clock=clock)


def every(step: timedelta, **options: object) -> ScheduleDef:
    return ScheduleDef(
        recurrence=Recurrence(every=step, start=EPOCH),
        action=TaskSpec("add", EPOCH, [1, 2]),
        **options,  # type: ignore[arg-type]
    )


def nominals(
    store: Store, schedule_id: str, states: frozenset[TaskState] = frozenset()
) -> list[datetime]:
    """The nominal times of the schedule's runs in the store, from their labels."""
    query = TaskQuery(states=states, labels=((SCHEDULE_LABEL, schedule_id),))
    records, _ = store.page(query, page_size=1000)
    return sorted(datetime.fromisoformat(r.spec.labels[NOMINAL_LABEL]) for r in records)


def grid(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """The oracle of an every-schedule anchored at the epoch: multiples of step in [start, end)."""
    first = EPOCH + -((EPOCH - start) // step) * step
    out = []
    while first < end:
        out.append(first)
        first += step
    return out


def test_runs_are_parked_a_lookahead_ahead_with_ids_from_schedule_and_time(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    recurring.create("tick", every(timedelta(minutes=1)))
    made = materializer(store, settings, clock).run_once()
    lookahead = timedelta(seconds=settings.schedule_lookahead)
    assert nominals(store, "tick") == grid(T0, T0 + lookahead, timedelta(minutes=1))
    assert made == len(grid(T0, T0 + lookahead, timedelta(minutes=1)))
    clock.now = T0 + timedelta(minutes=2)
    materializer(store, settings, clock).run_once()
    assert nominals(store, "tick") == grid(T0, clock.now + lookahead, timedelta(minutes=1))
    record = recurring.get("tick")
    assert record.run_count == len(nominals(store, "tick"))
    assert recurring.next_times(record)[0] == clock.now
    # One partition: a run's id is its key's own, as before partitions (so a store made
    # then makes the same runs again, not copies).
    query = TaskQuery(labels=((SCHEDULE_LABEL, "tick"),))
    records, _ = store.page(query, page_size=1000)
    assert records
    for run in records:
        nominal = datetime.fromisoformat(run.spec.labels[NOMINAL_LABEL])
        assert run.id == task_id_for(run_key("tick", nominal))


def test_three_materializers_racing_make_each_run_once(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    for n in range(20):
        recurring.create(f"race-{n}", every(timedelta(seconds=7)))
    stores = [Store.from_url(settings.store_url) for _ in range(3)]
    start = threading.Barrier(3)

    def race(own: Store) -> None:
        start.wait()
        for step in range(30):
            Materializer(
                own, settings, clock=lambda step=step: T0 + timedelta(seconds=10 * step)
            ).run_once()

    threads = [threading.Thread(target=race, args=(own,)) for own in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for own in stores:
        own.close()
    end = T0 + timedelta(seconds=290 + settings.schedule_lookahead)
    expected = grid(T0, end, timedelta(seconds=7))
    for n in range(20):
        made = nominals(store, f"race-{n}")
        assert len(made) == len(set(made))  # no nominal time twice
        assert set(made) <= set(expected)
        assert made == expected[: len(made)]  # no gap
        assert recurring.get(f"race-{n}").run_count == len(made)


def test_create_is_idempotent_and_other_content_under_an_id_is_refused(
    recurring: Recurring,
) -> None:
    first, outcome = recurring.create("daily", every(timedelta(days=1)))
    assert outcome is Outcome.CREATED
    again, outcome = recurring.create("daily", every(timedelta(days=1)))
    assert outcome is Outcome.EXISTING
    assert again.created_at == first.created_at
    with pytest.raises(AlreadyExists, match="other content"):
        recurring.create("daily", every(timedelta(hours=1)))


@pytest.mark.parametrize(
    ("schedule_id", "definition", "field"),
    [
        ("bad id!", every(timedelta(minutes=1)), "schedule_id"),
        ("x" * 200, every(timedelta(minutes=1)), "schedule_id"),
        (
            "c",
            ScheduleDef(Recurrence(cron=("* * * * *",) * 9), TaskSpec("add", EPOCH, [1, 2])),
            "schedule.spec.cron_expressions",
        ),
        (
            "c",
            ScheduleDef(Recurrence(cron=("99 * * * *",)), TaskSpec("add", EPOCH, [1, 2])),
            "schedule.spec",
        ),
        ("c", every(timedelta(minutes=1), jitter=timedelta(hours=2)), "schedule.spec.jitter"),
        (
            "c",
            every(timedelta(minutes=1), catchup_window=timedelta(days=999)),
            "schedule.policies.catchup_window",
        ),
        (
            "c",
            every(timedelta(minutes=1), labels={f"k{i}": "v" for i in range(65)}),
            "schedule.labels",
        ),
        (
            "c",
            ScheduleDef(Recurrence(every=timedelta(minutes=1)), TaskSpec("nope", EPOCH)),
            "schedule.action.task.task",
        ),
        (
            "c",
            ScheduleDef(
                Recurrence(every=timedelta(minutes=1)),
                TaskSpec("add", EPOCH, [1, 2], labels={f"k{i}": "v" for i in range(62)}),
            ),
            "schedule.action.task.labels",
        ),
    ],
)
def test_bad_schedules_are_refused_naming_the_field_and_nothing_is_stored(
    recurring: Recurring, schedule_id: str, definition: ScheduleDef, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        recurring.create(schedule_id, definition)
    assert field in [v.field for v in caught.value.violations]
    assert recurring.store.count() == 0


def test_the_number_of_schedules_is_bounded(store: Store, settings: Settings, clock: Clock) -> None:
    small = Settings(**{**settings.__dict__, "max_schedules": 3})
    bounded = Recurring(Schedules(store, TaskRegistry(demo_app), small, clock=clock))
    for n in range(3):
        bounded.create(f"s{n}", every(timedelta(hours=1)))
    with pytest.raises(Exception, match="at most 3 schedules"):
        bounded.create("s3", every(timedelta(hours=1)))
    assert bounded.store.count() == 3


def test_pause_removes_parked_runs_and_resume_makes_nothing_of_the_paused_day(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    recurring.create("hourly", every(timedelta(hours=1)))
    mat = materializer(store, settings, clock)
    mat.run_once()
    assert nominals(store, "hourly") == [T0]
    clock.now = T0 + timedelta(minutes=30)
    _, removed = recurring.pause("hourly", "maintenance")
    assert removed == 1
    assert nominals(store, "hourly") == []
    assert recurring.get("hourly").note == "maintenance"
    for hour in range(24):  # a paused day: dispatchers keep running, nothing is made
        clock.now = T0 + timedelta(hours=hour, minutes=30)
        mat.run_once()
    assert nominals(store, "hourly") == []
    clock.now = T0 + timedelta(days=1, minutes=30)
    recurring.resume("hourly", "done")
    mat.run_until_idle()
    lookahead = timedelta(seconds=settings.schedule_lookahead)
    assert nominals(store, "hourly") == grid(clock.now, clock.now + lookahead, timedelta(hours=1))


def test_catchup_window_of_an_hour_after_three_hours_down_makes_the_last_hour(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    step = timedelta(minutes=10)
    recurring.create("ten", every(step, catchup_window=timedelta(hours=1)))
    mat = materializer(store, settings, clock)
    mat.run_once()
    made_before = nominals(store, "ten")
    clock.now = T0 + timedelta(hours=3)  # the dispatchers were down for three hours
    mat.run_until_idle()
    lookahead = timedelta(seconds=settings.schedule_lookahead)
    expected = set(made_before) | set(
        grid(clock.now - timedelta(hours=1), clock.now + lookahead, step)
    )
    assert set(nominals(store, "ten")) == expected


def test_coalescing_makes_the_missed_hour_one_run_at_its_latest_time(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    step = timedelta(minutes=10)
    recurring.create("ten", every(step, catchup_window=timedelta(hours=1), coalesce=True))
    mat = materializer(store, settings, clock)
    mat.run_once()
    made_before = set(nominals(store, "ten"))
    clock.now = T0 + timedelta(hours=3)  # the dispatchers were down for three hours
    mat.run_until_idle()
    lookahead = timedelta(seconds=settings.schedule_lookahead)
    missed = grid(clock.now - timedelta(hours=1), clock.now, step)
    assert len(missed) == 6
    expected = made_before | {missed[-1]} | set(grid(clock.now, clock.now + lookahead, step))
    assert set(nominals(store, "ten")) == expected


def test_coalescing_an_hour_of_missed_seconds_reads_past_one_round(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    # More missed times than one round computes: still one run, the latest.
    recurring.create(
        "sec", every(timedelta(seconds=1), catchup_window=timedelta(hours=1), coalesce=True)
    )
    clock.now = T0 + timedelta(hours=5)
    materializer(store, settings, clock).run_until_idle()
    made = nominals(store, "sec")
    assert [t for t in made if t < clock.now] == [clock.now - timedelta(seconds=1)]
    assert min(t for t in made if t >= clock.now) == clock.now


def test_backfill_makes_each_nominal_time_once_however_often_asked(
    recurring: Recurring, store: Store
) -> None:
    recurring.create("bf", every(timedelta(minutes=15)))
    start, end = T0 - timedelta(days=1), T0 - timedelta(hours=20)
    first = recurring.backfill("bf", start, end)
    second = recurring.backfill("bf", start, end)
    assert (first.created, first.existing) == (16, 0)
    assert (second.created, second.existing) == (0, 16)
    assert nominals(store, "bf") == grid(start, end, timedelta(minutes=15))
    assert recurring.get("bf").run_count == 16


def test_a_backfill_of_a_century_of_seconds_is_refused_naming_the_bound(
    recurring: Recurring, store: Store
) -> None:
    recurring.create("sec", every(timedelta(seconds=1)))
    with pytest.raises(InvalidArgument, match="more than 10,000 runs") as caught:
        recurring.backfill("sec", T0 - timedelta(days=36525), T0)
    assert caught.value.violations[0].field == "end_time"
    assert nominals(store, "sec") == []


def test_max_runs_stops_the_schedule(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    recurring.create("five", every(timedelta(seconds=10), max_runs=5))
    mat = materializer(store, settings, clock)
    for minute in range(20):
        clock.now = T0 + timedelta(minutes=minute)
        mat.run_once()
    assert nominals(store, "five") == grid(T0, T0 + timedelta(seconds=50), timedelta(seconds=10))
    assert recurring.next_times(recurring.get("five")) == []


def test_update_remakes_parked_runs_from_the_new_content(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    recurring.create("up", every(timedelta(minutes=1)))
    mat = materializer(store, settings, clock)
    mat.run_once()
    changed = every(timedelta(minutes=2))
    recurring.update("up", changed)
    mat.run_once()
    lookahead = timedelta(seconds=settings.schedule_lookahead)
    assert nominals(store, "up") == grid(T0, T0 + lookahead, timedelta(minutes=2))


def test_trigger_runs_now_and_delete_removes_parked_runs(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    recurring.create(
        "trig",
        every(timedelta(days=1)),
    )
    task = recurring.trigger("trig", Overlap.ALLOW_ALL)
    assert task.spec.run_at == T0
    assert task.spec.labels["schedkit.overlap"] == "allow_all"
    assert recurring.delete("trig") == 1
    with pytest.raises(NotFound):
        recurring.get("trig")


def test_update_task_moves_a_parked_task_and_refuses_a_handed_off_one(
    schedules: Schedules, store: Store
) -> None:
    edits = TaskEdits(schedules)
    run_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    first, second = schedule_ids(
        schedules, [TaskSpec("add", run_at, [1, 2], key="k1"), TaskSpec("add", run_at, [3, 4])]
    )
    moved = edits.update(first, {"run_at": run_at + timedelta(hours=1), "args": [5, 6]})
    assert moved.spec.run_at == run_at + timedelta(hours=1)
    assert moved.spec.args == [5, 6]
    assert store.next_run_at() == run_at  # the other one is first now
    store.claim(window_seconds=7200, lease_seconds=30, limit=10)
    store.mark_queued([second])
    with pytest.raises(FailedPrecondition, match="QUEUED"):
        edits.update(second, {"priority": 3})


def test_cancel_tasks_by_filter_counts_in_slices(schedules: Schedules, store: Store) -> None:
    edits = TaskEdits(schedules)
    run_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    schedule_ids(
        schedules, [TaskSpec("add", run_at, [n, 1], labels={"batch": "a"}) for n in range(2500)]
    )
    schedule_ids(
        schedules, [TaskSpec("add", run_at, [n, 1], labels={"batch": "b"}) for n in range(10)]
    )
    assert edits.cancel(TaskQuery(labels=(("batch", "a"),))) == 2500
    assert store.count(TaskState.CANCELLED) == 2500
    assert store.count(TaskState.SCHEDULED) == 10
    with pytest.raises(InvalidArgument, match="filter"):
        edits.cancel(TaskQuery())


def test_a_schedule_that_cannot_be_computed_does_not_stop_the_others(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    recurring.create("good", every(timedelta(minutes=1)))
    recurring.create("broken", every(timedelta(minutes=1)))
    # A record corrupted behind the server's back (its checks would refuse this spec).
    key = store.keys.schedule("broken")
    text = store.redis.hget(key, "d")
    assert isinstance(text, str)
    store.redis.hset(key, "d", text.replace('"cron":[]', '"cron":["61 * * * *"]'))
    made = materializer(store, settings, clock).run_once()
    assert made == 5
    assert nominals(store, "good") == grid(T0, T0 + timedelta(minutes=5), timedelta(minutes=1))
    assert nominals(store, "broken") == []


def test_an_unreadable_schedule_record_does_not_stop_the_others(
    recurring: Recurring, store: Store, settings: Settings, clock: Clock
) -> None:
    recurring.create("fine", every(timedelta(minutes=1)))
    recurring.create("garbled", every(timedelta(minutes=1)))
    store.redis.hset(store.keys.schedule("garbled"), "d", "{not json")
    assert materializer(store, settings, clock).run_once() == 5
    assert len(nominals(store, "fine")) == 5
