"""schedkit.notebook driven from Python as a user would: set values, click, and check the
real stack (tasks created and cancelled) and what the widget shows (results and errors)."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from html import unescape
from pathlib import Path
from zoneinfo import ZoneInfo

import matplotlib
import pandas as pd
import pytest

from conftest import ARTIFACTS
from schedkit.client.client import Client
from schedkit.errors import InvalidArgument, NotFound
from schedkit.notebook import ScheduleBuilder, ScheduleInspector, timeline
from schedkit.notebook._common import ERROR_CLASS, fmt_time
from schedkit.recurring import Overlap
from schedkit.testing import LocalStack

matplotlib.use("Agg")  # no display in tests


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _later(minutes: float, tz: str = "Europe/Paris") -> datetime:
    """A naive wall-clock time ``minutes`` from now in ``tz``, as a picker holds it."""
    moment = datetime.now(ZoneInfo(tz)) + timedelta(minutes=minutes)
    return moment.replace(microsecond=0, tzinfo=None)


@pytest.fixture
def builder(client: Client) -> Iterator[ScheduleBuilder]:
    made = ScheduleBuilder(client, tz="Europe/Paris")
    yield made
    made.close()


@pytest.fixture
def inspector_of(client: Client) -> Iterator[list[ScheduleInspector]]:
    """Inspectors made by a test, stopped at its end: no thread outlives the test."""
    made: list[ScheduleInspector] = []
    yield made
    for inspector in made:
        inspector.close()
        assert not inspector.running


# -- builder ------------------------------------------------------------------------------------


def test_builder_lists_task_types_with_signature(builder: ScheduleBuilder) -> None:
    assert "water_plants" in builder.task.options
    builder.task.value = "water_plants"
    assert "water_plants(plant: 'str', litres: 'float' = 1.0)" in unescape(builder.task_help.value)
    assert "Water a plant" in builder.task_help.value


def test_builder_checks_arguments_as_they_are_typed(builder: ScheduleBuilder) -> None:
    builder.task.value = "water_plants"
    builder.args.value = '["rose", 2'
    assert "not valid JSON" in builder.arguments_check.value
    assert builder.add_button.disabled
    builder.args.value = "[]"
    assert "do not fit water_plants" in builder.arguments_check.value
    assert "missing a required argument: 'plant'" in unescape(builder.arguments_check.value)
    builder.args.value = '["rose"]'
    builder.kwargs.value = '{"litres": 2, "colour": "red"}'
    assert "unexpected keyword argument" in builder.arguments_check.value
    builder.kwargs.value = '{"litres": 2}'
    assert "arguments fit the task" in builder.arguments_check.value
    assert not builder.add_button.disabled


def test_builder_adds_removes_and_schedules_rows(builder: ScheduleBuilder, client: Client) -> None:
    tag = _tag()
    builder.labels.value = f"test={tag}, team=garden"
    builder.task.value = "water_plants"
    for plant in ("rose", "fern", "cactus"):
        builder.args.value = json.dumps([plant])
        builder.run_at.value = _later(30)
        builder.add_button.click()
    assert "added row 3" in builder.feedback.message.value
    assert list(builder.frame["args"]) == ['["rose"]', '["fern"]', '["cactus"]']
    assert set(builder.frame["tz"]) == {"Europe/Paris"}
    assert "cactus" in builder.draft_table.value

    builder.remove_select.value = (2,)
    builder.remove_button.click()
    assert list(builder.frame["args"]) == ['["rose"]', '["cactus"]']

    builder.schedule_button.click()

    assert "2 created" in builder.feedback.message.value
    assert list(builder.results["outcome"]) == ["created", "created"]
    for task_id, plant in zip(builder.results["id"], ("rose", "cactus"), strict=True):
        assert task_id in builder.results_table.value
        stored = client.get(task_id)
        assert stored.spec.args == [plant]
        assert stored.spec.labels == {"test": tag, "team": "garden", "source": "notebook"}
        wall = stored.spec.run_at.astimezone(ZoneInfo("Europe/Paris")).replace(tzinfo=None)
        assert abs(wall - _later(30)) < timedelta(minutes=1)


def test_builder_recurring_row_schedules_each_run(builder: ScheduleBuilder, client: Client) -> None:
    tag = _tag()
    builder.task.value = "add"
    builder.args.value = "[1, 2]"
    builder.run_at.value = _later(60)
    builder.repeat.value = "every"
    builder.rule.value = "10min"
    builder.count.value = 3
    builder.labels.value = f"test={tag}"
    builder.add_button.click()
    assert "(3 runs)" in builder.feedback.message.value
    builder.schedule_button.click()
    assert list(builder.results["outcome"]) == ["created"] * 3
    assert len(client.tasks_frame(labels={"test": tag})) == 3


def test_builder_shows_a_bad_row_in_the_widget_and_keeps_the_draft(
    builder: ScheduleBuilder,
) -> None:
    builder.task.value = "add"
    builder.args.value = "[1, 2]"
    builder.repeat.value = "cron"
    builder.rule.value = "61 * * * *"
    builder.add_button.click()
    assert "cron" in builder.feedback.message.value
    assert "schedkit-error" in builder.feedback.message.value
    assert len(builder.frame) == 0

    builder.repeat.value = ""
    builder.run_at.value = _later(-60 * 24)
    builder.add_button.click()
    assert "in the past" in builder.feedback.message.value
    assert len(builder.frame) == 0

    builder.schedule_button.click()
    assert "draft: empty" in builder.feedback.message.value


def test_builder_from_a_frame_shows_errors_per_row(client: Client) -> None:
    tag = _tag()
    start = pd.Timestamp.now(tz="UTC").floor("s") + pd.Timedelta(hours=3)
    frame = pd.DataFrame(
        {
            "task": ["add", "add", "nope"],
            "run_at": [start, start, start],
            "args": ["[1, 2]", '"x"', "[]"],
            "labels": [json.dumps({"test": tag})] * 3,
        }
    )
    builder = ScheduleBuilder(client, frame=frame)
    try:
        assert len(builder.frame) == 3
        builder.schedule_button.click()
        assert list(builder.results["outcome"]) == ["created", "invalid", "rejected"]
        assert "see the error column" in builder.feedback.message.value
        assert "expected a JSON list" in builder.results_table.value
        assert "unknown task 'nope'" in unescape(builder.results_table.value)
        assert len(client.tasks_frame(labels={"test": tag})) == 1
    finally:
        builder.close()


def test_builder_runs_a_row_whose_time_passed_instead_of_dropping_it(client: Client) -> None:
    tag = _tag()
    an_hour_ago = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(hours=1)
    frame = pd.DataFrame(
        {
            "task": ["add"],
            "run_at": [an_hour_ago],
            "args": ["[4, 4]"],
            "labels": f'{{"test": "{tag}"}}',
        }
    )
    builder = ScheduleBuilder(client, frame=frame)
    try:
        builder.schedule_button.click()
        assert list(builder.results["outcome"]) == ["created"]
        assert bool(builder.results["moved_to_now"].iloc[0])
        task_id = builder.results["id"].iloc[0]
        assert client.wait_for(task_id, ["SUCCEEDED"]).result == "8"

        builder.schedule_button.click()  # sent again: the same task, not a second one
        assert list(builder.results["outcome"]) == ["existing"]
        assert list(builder.results["id"]) == [task_id]
        assert len(client.tasks_frame(labels={"test": tag})) == 1
    finally:
        builder.close()


def test_builder_asks_for_a_zone_and_flags_an_unknown_one(client: Client) -> None:
    builder = ScheduleBuilder(client)
    try:
        # A fresh form says what it needs, in grey: nothing is wrong before anything is typed.
        for part in (builder.arguments_check, builder.when, builder.feedback.message):
            assert ERROR_CLASS not in part.value
        assert "pick the time zone" in builder.when.value
        builder.task.value = "add"
        assert ERROR_CLASS not in builder.arguments_check.value  # add(x, y) not yet filled
        builder.args.value = "[1]"
        assert ERROR_CLASS in builder.arguments_check.value  # typed, and wrong
        builder.args.value = "[1, 2]"
        builder.run_at.value = _later(30, "Europe/Paris")

        builder.add_button.click()  # a naive time with no zone: refused, draft unchanged
        assert "time zone: required: the run time has no zone" in builder.feedback.message.value
        assert len(builder.frame) == 0

        builder.tz.value = "Paris"  # shown as typed, flagged, never silently replaced
        assert builder.tz.value == "Paris"
        assert "did you mean Europe/Paris?" in builder.when.value
        builder.add_button.click()
        assert "unknown time zone 'Paris'" in unescape(builder.feedback.message.value)
        assert len(builder.frame) == 0

        builder.tz.value = "Europe/Paris"
        assert "CET" in builder.when.value or "CEST" in builder.when.value
        builder.add_button.click()
        assert list(builder.frame["tz"]) == ["Europe/Paris"]
    finally:
        builder.close()


def test_builder_refuses_frame_rows_without_a_zone_unless_tz_is_given(client: Client) -> None:
    frame = pd.DataFrame(
        {"task": ["add"], "run_at": [_later(60, "UTC").isoformat()], "args": ["[1, 2]"]}
    )
    builder = ScheduleBuilder(client, frame=frame)
    try:
        result = builder.schedule()
        assert list(result["outcome"]) == ["invalid"]
        assert "has no time zone" in result["error"].iloc[0]
    finally:
        builder.close()
    builder = ScheduleBuilder(client, frame=frame, tz="UTC")
    try:
        assert list(builder.schedule()["outcome"]) == ["created"]
    finally:
        builder.close()


def test_builder_previews_the_next_runs_of_a_rule_in_its_zone(builder: ScheduleBuilder) -> None:
    assert builder.preview.value == ""
    builder.repeat.value = "cron"
    builder.rule.value = "0 8 * * *"
    shown = builder.preview.value
    assert shown.startswith("next runs: ")
    runs = shown.removeprefix("next runs: ").split(", ")
    assert len(runs) == 5
    assert all(" 08:00:00 CE" in r for r in runs)  # 08:00 in Paris (CET or CEST)
    builder.tz.value = "Asia/Tokyo"
    assert all(" 08:00:00 JST" in r for r in builder.preview.value.split(", "))
    builder.repeat.value = "every"
    builder.rule.value = "6h"
    builder.count.value = 3
    assert len(builder.preview.value.split(", ")) == 3
    builder.rule.value = "6 parsecs"
    assert ERROR_CLASS in builder.preview.value


def _builder_with_one_row(client: Client) -> ScheduleBuilder:
    builder = ScheduleBuilder(client, tz="UTC")
    builder.task.value = "add"
    builder.args.value = "[1, 2]"
    builder.run_at.value = _later(30, "UTC")
    builder.add_button.click()
    return builder


def test_builder_shows_an_unexpected_error_with_its_traceback(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = stack.client()
    builder = _builder_with_one_row(client)

    def broken(*args: object, **kwargs: object) -> None:
        # A fake failure: no real part fails this way on purpose, and a bug in the client
        # or pandas would look like this to the widget.
        raise RuntimeError("something no form check foresees")

    monkeypatch.setattr(client, "schedule_frame", broken)
    builder.schedule_button.click()

    assert "something no form check foresees" in builder.feedback.message.value
    streams = [o for o in builder.feedback.out.outputs if o.get("name") == "stderr"]
    assert streams
    assert "Traceback" in streams[-1]["text"]
    builder.close()
    client.close()


def test_builder_on_a_closed_client_says_so(stack: LocalStack) -> None:
    client = stack.client()
    builder = _builder_with_one_row(client)
    client.close()

    builder.schedule_button.click()

    assert "this Client is closed" in builder.feedback.message.value
    builder.close()


# -- builder: a server-side schedule ------------------------------------------------------------


@pytest.fixture
def schedule_ids(client: Client) -> Iterator[list[str]]:
    """Schedule ids a test may create, deleted at its end: no schedule outlives the test."""
    made: list[str] = []
    yield made
    for ident in made:
        with contextlib.suppress(NotFound):  # a test that refused to create it
            client.delete_schedule(ident)


def _rule_form(builder: ScheduleBuilder, tag: str, schedule_ids: list[str]) -> str:
    """The builder filled with a cron rule and a schedule id (returned, and to be deleted)."""
    builder.task.value = "add"
    builder.args.value = "[1, 2]"
    builder.repeat.value = "cron"
    builder.rule.value = "0 8 * * mon-fri"
    builder.labels.value = f"test={tag}"
    ident = f"builder-{tag}"
    schedule_ids.append(ident)
    builder.schedule_id.value = ident
    return ident


def test_builder_creates_a_schedule_from_a_cron_rule(
    builder: ScheduleBuilder, client: Client, schedule_ids: list[str]
) -> None:
    tag = _tag()
    ident = _rule_form(builder, tag, schedule_ids)
    assert builder.overlap.value == "skip"
    builder.overlap.value = "buffer_one"
    assert not builder.create_button.disabled

    builder.create_button.click()

    message = builder.feedback.message.value
    assert ERROR_CLASS not in message
    assert f"schedule {ident} created" in message
    assert len(builder.frame) == 0  # a schedule, not draft rows
    info = client.get_schedule(ident)
    rule = info.definition.recurrence
    assert rule.cron == ("0 8 * * mon-fri",)
    assert rule.every is None
    assert rule.tz == "Europe/Paris"
    assert rule.dst == "cron"  # the builder's "raise" has no meaning for a rule: cron's own
    assert rule.start is not None
    wall = rule.start.astimezone(ZoneInfo("Europe/Paris")).replace(tzinfo=None)
    assert abs(wall - builder.run_at.value) < timedelta(seconds=1)
    action = info.definition.action
    assert (action.task, action.args, action.kwargs) == ("add", [1, 2], {})
    assert action.labels == {"test": tag, "source": "notebook"}
    assert info.definition.labels == {"test": tag}
    assert info.definition.overlap is Overlap.BUFFER_ONE
    paris = [t.astimezone(ZoneInfo("Europe/Paris")) for t in info.next_run_times]
    assert paris
    assert all((t.hour, t.minute) == (8, 0) and t.weekday() < 5 for t in paris)

    builder.create_button.click()  # the same again: said to be there already, nothing new
    assert f"schedule {ident} already exists, the same" in builder.feedback.message.value
    assert ERROR_CLASS not in builder.feedback.message.value

    builder.args.value = "[2, 3]"  # other content under the id: AlreadyExists, field named
    builder.create_button.click()
    message = unescape(builder.feedback.message.value)
    assert ERROR_CLASS in message
    assert f"schedule {ident} exists with other content" in message
    assert "change the form's schedule id (schedule_id)" in message
    assert client.get_schedule(ident).definition.action.args == [1, 2]


def test_builder_creates_an_every_schedule_from_its_first_run(
    builder: ScheduleBuilder, client: Client, schedule_ids: list[str]
) -> None:
    tag = _tag()
    ident = _rule_form(builder, tag, schedule_ids)
    builder.repeat.value = "every"
    builder.rule.value = "1D"  # calendar days keep wall-clock time: a schedule cannot
    builder.create_button.click()
    message = unescape(builder.feedback.message.value)
    assert "rule: '1D' keeps wall-clock time" in message
    assert "use cron" in message
    with pytest.raises(NotFound):
        client.get_schedule(ident)

    builder.rule.value = "15min"
    builder.count.value = 4
    builder.create_button.click()
    assert f"schedule {ident} created" in builder.feedback.message.value
    info = client.get_schedule(ident)
    assert info.definition.recurrence.every == timedelta(minutes=15)
    assert info.definition.recurrence.cron == ()
    assert info.definition.max_runs == 4
    start = info.definition.recurrence.start
    assert start is not None
    assert info.next_run_times[0] == start  # the first run is the form's run time
    assert info.next_run_times[1] - start == timedelta(minutes=15)


def test_builder_refuses_a_schedule_without_an_id_before_sending(
    builder: ScheduleBuilder, client: Client, schedule_ids: list[str]
) -> None:
    tag = _tag()
    _rule_form(builder, tag, schedule_ids)
    builder.schedule_id.value = "  "
    builder.create_button.click()
    assert "schedule id: required to create a schedule" in builder.feedback.message.value
    builder.schedule_id.value = "no spaces allowed"
    builder.create_button.click()
    assert "is not a schedule id" in unescape(builder.feedback.message.value)

    builder.schedule_id.value = f"builder-{tag}"
    builder.args.value = "[1]"  # the form has an error: the button is off, the method refuses
    assert builder.create_button.disabled
    with pytest.raises(InvalidArgument, match="do not fit add"):
        builder.create_schedule()
    assert list(client.schedules(labels={"test": tag})) == []


def test_builder_cannot_make_a_schedule_of_a_one_off_run(
    builder: ScheduleBuilder, client: Client, schedule_ids: list[str]
) -> None:
    tag = _tag()
    _rule_form(builder, tag, schedule_ids)
    assert not builder.create_button.disabled
    builder.repeat.value = ""  # once
    assert builder.create_button.disabled
    assert "choose every or cron" in builder.schedule_hint.value
    builder.create_button.click()  # clicked anyway (from code): refused with a message
    assert "repeat: a schedule needs a rule" in builder.feedback.message.value
    assert list(client.schedules(labels={"test": tag})) == []


def test_builder_names_the_form_field_of_a_server_error(
    builder: ScheduleBuilder, client: Client, schedule_ids: list[str]
) -> None:
    tag = _tag()
    _rule_form(builder, tag, schedule_ids)
    # 65 labels: the form takes them, the server's bound (64 on a schedule) does not.
    builder.labels.value = ", ".join([f"test={tag}", *(f"l{n}=x" for n in range(64))])
    builder.create_button.click()
    message = unescape(builder.feedback.message.value)
    assert ERROR_CLASS in message
    assert "more than 64 labels" in message
    assert "change the form's labels" in message
    assert list(client.schedules(labels={"test": tag})) == []


# -- inspector ----------------------------------------------------------------------------------


def test_inspector_filters_cancels_and_shows_details(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    tag = _tag()
    first = client.schedule("water_plants", "rose", run_at=timedelta(hours=1), labels={"test": tag})
    second = client.schedule("add", 1, 2, run_at=timedelta(hours=2), labels={"test": tag})
    inspector = ScheduleInspector(client, tz="Asia/Tokyo", live=False)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"

    assert inspector.wait_counted()  # the count runs in a thread, after the page shows
    assert list(inspector.frame["id"]) == [first.id, second.id]
    shown = inspector.grid.df
    assert list(shown["id"]) == [first.id, second.id]
    assert all(t.endswith(" JST") for t in shown["run_at"])  # times with their zone
    assert "2 of 2 shown" in inspector.summary.value
    assert "2 SCHEDULED" in inspector.summary.value

    inspector.task.value = "add"
    assert list(inspector.frame["id"]) == [second.id]
    inspector.task.value = ""

    inspector.select([first.id, second.id])  # as a click and a shift-click in the grid do
    assert inspector.selected == [first.id, second.id]
    assert "rose" in inspector.detail.value
    assert "water_plants" in inspector.detail.value
    assert second.id in inspector.detail.value  # every selected task, not only the first
    inspector.select([first.id])

    inspector.cancel_button.click()

    assert client.get(first.id).state == "CANCELLED"
    assert client.get(second.id).state == "SCHEDULED"
    assert f"cancelled 1: {first.id}" in inspector.feedback.message.value
    assert inspector.selected == [first.id]  # the redrawn page keeps the selection
    assert "CANCELLED" in inspector.detail.value  # the detail view follows the change
    inspector.states.value = ("CANCELLED",)
    assert list(inspector.frame["id"]) == [first.id]


def test_inspector_pages_reach_every_task_and_say_how_many_match(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    from schedkit.model import TaskSpec

    tag = _tag()
    start = datetime.now(ZoneInfo("UTC")) + timedelta(days=1)
    specs = [
        TaskSpec("add", start + timedelta(seconds=i), [i, 1], labels={"test": tag})
        for i in range(504)
    ]
    ids = [r.id for r in client.schedule_many(specs)]
    inspector = ScheduleInspector(client, live=False, limit=200)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"  # a label filter: server pages may come short

    assert inspector.wait_counted()  # the count runs in a thread, after the page shows
    assert inspector.total == 504
    assert "200 of 504 shown" in inspector.summary.value
    assert "page 1 of 3" in inspector.summary.value
    assert inspector.previous_button.disabled
    seen = list(inspector.frame["id"])
    inspector.next_button.click()
    assert "rows 201 to 400" in inspector.summary.value
    seen += list(inspector.frame["id"])
    inspector.last_button.click()
    assert "104 of 504 shown" in inspector.summary.value
    assert inspector.next_button.disabled
    seen += list(inspector.frame["id"])
    assert seen == ids  # every task once, by run time
    assert len(inspector.grid.df) == 104  # the grid holds one page, never all
    inspector.first_button.click()
    assert list(inspector.frame["id"]) == ids[:200]


def test_inspector_says_why_a_cancel_is_refused(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    tag = _tag()
    done = client.schedule("add", 1, 1, run_at=timedelta(seconds=0.2), labels={"test": tag})
    client.wait_for(done.id, ["SUCCEEDED"])
    inspector = ScheduleInspector(client, live=False)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"
    inspector.select([done.id])
    inspector.cancel_button.click()
    assert "refused 1" in inspector.feedback.message.value
    assert done.id in inspector.feedback.message.value
    assert client.get(done.id).state == "SUCCEEDED"

    inspector.select([])
    inspector.cancel_button.click()
    assert "select the tasks to cancel first" in inspector.feedback.message.value


def test_inspector_moves_the_selected_tasks_and_names_those_refused(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    tag = _tag()
    done = client.schedule("add", 1, 1, run_at=timedelta(seconds=0.2), labels={"test": tag})
    parked = [
        client.schedule("add", i, 1, run_at=timedelta(hours=1), labels={"test": tag})
        for i in range(2)
    ]
    client.wait_for(done.id, ["SUCCEEDED"])
    inspector = ScheduleInspector(client, tz="Europe/Paris", live=False)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"
    everything = [done.id, *(t.id for t in parked)]
    inspector.select(everything)
    assert "in Europe/Paris" in inspector.move_zone.value

    target = _later(3 * 60)  # a wall-clock time in Paris, the zone the grid shows
    inspector.move_to.value = target
    inspector.move_button.click()

    message = unescape(inspector.feedback.message.value)
    assert "moved 2 to" in message
    assert "refused 1" in message
    assert f"{done.id}: " in message  # the refused task is named, with why
    assert "SUCCEEDED" in message
    for task in parked:
        wall = client.get(task.id).spec.run_at.astimezone(ZoneInfo("Europe/Paris"))
        assert wall.replace(tzinfo=None) == target
    assert client.get(done.id).state == "SUCCEEDED"
    # The page was read again: the moved tasks show their new time, still selected.
    assert sorted(inspector.selected) == sorted(everything)
    shown = inspector.grid.df.set_index("id")["run_at"]
    expected = fmt_time(pd.Timestamp(target).tz_localize("Europe/Paris"))
    assert [shown[t.id] for t in parked] == [expected, expected]

    # Without a zone a wall-clock time means nothing: refused, nothing moved.
    inspector.tz.value = ""
    assert "no time zone" in inspector.move_zone.value
    inspector.move_to.value = _later(5 * 60)
    inspector.move_button.click()
    assert "move to" in inspector.feedback.message.value
    assert "has no time zone: pick one" in inspector.feedback.message.value
    wall = client.get(parked[0].id).spec.run_at.astimezone(ZoneInfo("Europe/Paris"))
    assert wall.replace(tzinfo=None) == target

    # A time the clocks skip in the zone is refused too (the kit's DST policy: raise).
    inspector.tz.value = "Europe/Paris"
    inspector.move_to.value = datetime(2099, 3, 29, 2, 30)
    inspector.move_button.click()
    assert "does not exist in Europe/Paris" in inspector.feedback.message.value
    wall = client.get(parked[0].id).spec.run_at.astimezone(ZoneInfo("Europe/Paris"))
    assert wall.replace(tzinfo=None) == target

    inspector.select([])
    inspector.move_button.click()
    assert "select the tasks to move first" in inspector.feedback.message.value


def test_inspector_detail_shows_a_failure_with_its_traceback(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    tag = _tag()
    failed = client.schedule(
        "fail", "pump jammed", run_at=timedelta(seconds=0.2), labels={"test": tag}
    )
    client.wait_for(failed.id, ["FAILED"])
    inspector = ScheduleInspector(client, live=False)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"
    assert "RuntimeError: pump jammed" in list(inspector.grid.df["result or error"])
    inspector.select([failed.id])
    assert "FAILED" in inspector.detail.value
    assert "Traceback" in inspector.detail.value
    assert "raise RuntimeError(message)" in inspector.detail.value


def test_inspector_shows_a_bad_filter_and_clears_it_once_valid(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    inspector = ScheduleInspector(client, live=False)
    inspector_of.append(inspector)
    inspector.label.value = "b"  # typed on the way to b=1
    assert "labels filter" in inspector.feedback.message.value
    assert "is not name=value" in inspector.feedback.message.value
    inspector.label.value = "b=1"
    assert inspector.feedback.message.value == ""
    inspector.tz.value = "Tokio"
    assert "did you mean Asia/Tokyo?" in unescape(inspector.feedback.message.value)
    inspector.tz.value = "Asia/Tokyo"
    assert inspector.feedback.message.value == ""


def test_inspector_publishes_its_frame_only_once_the_grid_shows_it(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    # The live thread redraws while a notebook reads ``frame``: a reader must never find a
    # frame the grid does not show yet.
    tag = _tag()
    client.schedule("add", 1, 1, run_at=timedelta(hours=1), labels={"test": tag})
    inspector = ScheduleInspector(client, live=False)
    inspector_of.append(inspector)
    before = inspector.frame
    frames_while_drawing: list[pd.DataFrame] = []
    inspector.grid.observe(lambda _: frames_while_drawing.append(inspector.frame), names="_dt_args")
    inspector.label.value = f"test={tag}"
    assert frames_while_drawing, "the grid was not redrawn"
    assert all(frame is before for frame in frames_while_drawing)
    assert list(inspector.frame["state"]) == ["SCHEDULED"]
    assert tag in inspector.grid.df["labels"].iloc[0]


def test_inspector_follows_changes_live_keeping_the_selection_and_stops(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    tag = _tag()
    later = client.schedule("add", 1, 1, run_at=timedelta(hours=1), labels={"test": tag})
    inspector = ScheduleInspector(client, live=True, period=0.5, min_interval=0.1)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"
    assert inspector.running
    inspector.select([later.id])

    task = client.schedule("add", 2, 2, run_at=timedelta(seconds=0.3), labels={"test": tag})
    client.wait_for(task.id, ["SUCCEEDED"])

    def state_of_task() -> list[str]:
        frame = inspector.frame
        return list(frame[frame["id"] == task.id]["state"]) if len(frame) else []

    seen = inspector.refresh_count
    # The thread redraws on its own after the change; wait for a redraw that shows it.
    for _ in range(20):
        if state_of_task() == ["SUCCEEDED"]:
            break
        assert inspector.wait_refreshed(seen, timeout=5.0)
        seen = inspector.refresh_count
    assert state_of_task() == ["SUCCEEDED"]
    assert list(inspector.grid.df["state"]) == ["SUCCEEDED", "SCHEDULED"]
    # The new task came first on the page; the selection followed its task, not its row.
    assert inspector.selected == [later.id]
    assert inspector.grid.selected_rows == [1]

    inspector.live.value = False
    inspector.stop(timeout=5.0)
    assert not inspector.running


def test_inspector_redraws_a_changed_page_as_the_same_view_with_its_selection_in_one_message(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    # The browser keeps the reader's scroll offset and clicked sort across redraws of one view
    # (the same page of the same filters) and resets them for another: the view's number
    # travels in the grid's drawCallback. The new selection travels with the new rows.
    tag = _tag()
    tasks = [
        client.schedule("add", n, 1, run_at=timedelta(hours=n + 1), labels={"test": tag})
        for n in range(4)
    ]
    inspector = ScheduleInspector(client, live=False, limit=3)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"
    view = inspector.view
    assert f"kept.view !== {view})" in inspector.grid._dt_args["drawCallback"]
    assert inspector.grid._dt_args["keys_to_be_evaluated"] == [["drawCallback"]]
    inspector.select([tasks[1].id])
    assert inspector.grid.selected_rows == [1]

    sent: list[set[str]] = []
    send_state = inspector.grid.send_state
    inspector.grid.send_state = lambda key=None: (sent.append(set(key or ())), send_state(key))
    earlier = client.schedule("add", 9, 9, run_at=timedelta(minutes=30), labels={"test": tag})
    client.cancel(tasks[0].id)
    inspector.refresh()  # what a live update does
    assert list(inspector.grid.df["id"]) == [earlier.id, tasks[0].id, tasks[1].id]
    assert list(inspector.grid.df["state"]) == ["SCHEDULED", "CANCELLED", "SCHEDULED"]
    assert inspector.view == view  # the same page: the browser keeps scroll and sort
    assert f"kept.view !== {view})" in inspector.grid._dt_args["drawCallback"]
    # Selected by task id: row 2 now, sent with the rows, not after them.
    assert inspector.selected == [tasks[1].id]
    assert inspector.grid.selected_rows == [2]
    assert {"_dt_args", "selected_rows"} in sent
    assert not any(keys == {"_dt_args"} or keys == {"selected_rows"} for keys in sent)

    inspector.go_to(1)  # another page: another view, at the top in run-time order
    assert inspector.view == view + 1
    assert f"kept.view !== {view + 1})" in inspector.grid._dt_args["drawCallback"]
    assert list(inspector.grid.df["id"]) == [tasks[2].id, tasks[3].id]
    inspector.go_to(0)
    assert inspector.view == view + 2
    inspector.states.value = ("SCHEDULED",)  # other filters, other rows: another view
    assert inspector.view == view + 3
    inspector.refresh()
    inspector.tz.value = "Asia/Tokyo"  # the same rows, other times: the same view
    assert "JST" in inspector.grid.df["run_at"].iloc[0]
    assert inspector.view == view + 3
    # Other filters, the same rows: not sent again, so the browser keeps its view; the next
    # update of these rows is still that view.
    inspector.states.value = ("SCHEDULED", "QUEUED")
    assert inspector.view == view + 3
    client.cancel(tasks[1].id)
    inspector.refresh()
    assert list(inspector.grid.df["id"]) == [earlier.id, tasks[2].id, tasks[3].id]
    assert inspector.view == view + 3  # a live update of the view the browser shows


def test_inspector_close_stops_its_thread(client: Client) -> None:
    inspector = ScheduleInspector(client, live=True, period=0.5)
    assert inspector.running
    inspector.close()
    assert not inspector.running


# -- timeline -----------------------------------------------------------------------------------


def test_timeline_draws_planned_and_actual_runs(client: Client) -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    tag = _tag()
    ran = client.schedule("add", 1, 1, run_at=timedelta(seconds=0.2), labels={"test": tag})
    failed = client.schedule("fail", run_at=timedelta(seconds=0.2), labels={"test": tag})
    client.schedule("water_plants", "fern", run_at=timedelta(minutes=1), labels={"test": tag})
    client.wait_for(ran.id, ["SUCCEEDED"])
    client.wait_for(failed.id, ["FAILED"])
    frame = client.tasks_frame(labels={"test": tag}, tz="Europe/Paris")

    figure = timeline(frame, title="three tasks")

    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["add", "fail", "water_plants"]
    assert ax.get_title() == "three tasks"
    assert "Europe/Paris" in ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["scheduled", "succeeded", "failed", "planned"]
    bars = [
        c for c in ax.collections if isinstance(c, LineCollection) and c.get_linewidth()[0] == 6
    ]
    assert sum(len(c.get_segments()) for c in bars) == 2  # one bar per run that started
    ARTIFACTS.mkdir(exist_ok=True)
    figure.savefig(ARTIFACTS / "timeline.png")
    if os.environ.get("SCHEDKIT_UPDATE_DOCS_IMAGES") == "1":
        figure.savefig(Path(__file__).resolve().parent.parent / "docs" / "img" / "timeline.png")


def test_timeline_names_a_missing_column() -> None:
    from schedkit.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="run_at"):
        timeline(pd.DataFrame({"task": ["add"]}))


def _runs(count: int, start: str = "2026-06-01 08:00", every: str = "1s") -> pd.DataFrame:
    """A tasks_frame-like frame of ``count`` runs, no server needed (only drawing is tested)."""
    run_at = pd.date_range(start, periods=count, freq=every, tz="Europe/Paris")
    states = ["SUCCEEDED", "FAILED", "SCHEDULED", "CANCELLED"]
    return pd.DataFrame(
        {
            "task": [f"task_{i % 3}" for i in range(count)],
            "state": [states[i % 4] for i in range(count)],
            "run_at": run_at,
            "labels": [{"team": "ops" if i % 2 else "garden"} for i in range(count)],
        }
    )


def test_timeline_lanes_by_task_state_or_label() -> None:
    frame = _runs(12)
    by_state = timeline(frame, lanes="state").axes[0]
    labels = [t.get_text() for t in by_state.get_yticklabels()]
    assert labels == ["CANCELLED", "FAILED", "SCHEDULED", "SUCCEEDED"]
    by_team = timeline(frame, lanes="label:team").axes[0]
    assert [t.get_text() for t in by_team.get_yticklabels()] == ["garden", "ops"]
    from schedkit.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="lanes"):
        timeline(frame, lanes="colour")


def test_timeline_draws_runs_per_bucket_stacked_by_state_when_there_are_many() -> None:
    frame = _runs(5000)
    ax = timeline(frame).axes[0]
    assert ax.get_title() == "5,000 run(s) per time bucket"
    assert ax.get_ylabel().startswith("runs per ")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["scheduled", "succeeded", "failed", "cancelled"]
    # The top of the stack, bucket by bucket, adds up to every run.
    top = max(ax.patches, key=lambda p: p.get_path().vertices[:, 1].max())
    assert top.get_path().vertices[:, 1].max() <= 5000
    assert timeline(frame, density=False).axes[0].get_ylabel() == ""


def test_timeline_window_follows_the_filter_not_an_outlier() -> None:
    import matplotlib.dates as mdates

    frame = _runs(50, every="2min")  # 08:00 to 09:38 in Paris
    outlier = _runs(1, start="2027-06-01 08:00")
    both = pd.concat([frame, outlier], ignore_index=True)
    ax = timeline(both).axes[0]
    low, high = (mdates.num2date(x) for x in ax.get_xlim())
    assert high - low < timedelta(hours=4)  # a year away does not squeeze two hours
    assert "(1 outside the window not shown)" in ax.get_title()

    start = datetime(2026, 6, 1, 8, 30, tzinfo=ZoneInfo("Europe/Paris"))
    ax = timeline(both, window=(start, start + timedelta(minutes=30))).axes[0]
    assert ax.get_title().startswith("16 run(s)")  # 08:30 to 09:00, both ends
    assert "35 outside the window" in ax.get_title()


def test_timeline_is_as_wide_as_a_notebook_cell() -> None:
    figure = timeline(_runs(10))
    width, height = figure.get_size_inches() * figure.dpi
    assert width >= 1000
    assert height < width / 3


def test_inspector_pages_end_exactly_on_a_page_boundary_and_draw_their_timeline(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    import matplotlib.dates as mdates

    from schedkit.model import TaskSpec

    tag = _tag()
    start = datetime.now(ZoneInfo("UTC")).replace(microsecond=0) + timedelta(days=2)
    specs = [
        TaskSpec("add", start + timedelta(minutes=i), [i, 1], labels={"test": tag})
        for i in range(40)
    ]
    ids = [r.id for r in client.schedule_many(specs)]
    inspector = ScheduleInspector(client, live=False, limit=20)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"
    assert inspector.wait_counted()  # the count runs in a thread, after the page shows
    assert "20 of 40 shown" in inspector.summary.value
    assert "page 1 of 2" in inspector.summary.value
    inspector.go_to(7)  # past the end: the last page
    assert inspector.page_number == 1
    assert list(inspector.frame["id"]) == ids[20:]
    assert inspector.next_button.disabled

    # The timeline of the page, its window the from/to filter.
    inspector.after.value = (start + timedelta(minutes=25)).replace(tzinfo=None)
    inspector.before.value = (start + timedelta(minutes=35)).replace(tzinfo=None)
    assert list(inspector.frame["id"]) == ids[25:35]  # "to" is exclusive
    ax = inspector.timeline().axes[0]
    low, high = (mdates.num2date(x) for x in ax.get_xlim())
    assert low <= start + timedelta(minutes=25)
    assert high >= start + timedelta(minutes=35)
    assert high - low < timedelta(minutes=12)


def test_builder_follows_its_dst_policy_in_the_form_and_when_scheduling(client: Client) -> None:
    gap = datetime(2099, 3, 29, 2, 30)  # clocks jump from 02:00 to 03:00 in Paris that night
    strict = ScheduleBuilder(client, tz="Europe/Paris")
    try:
        strict.task.value = "add"
        strict.args.value = "[1, 2]"
        strict.run_at.value = gap
        assert "does not exist in Europe/Paris" in strict.when.value
        strict.add_button.click()
        assert "does not exist in Europe/Paris" in strict.feedback.message.value
        assert len(strict.frame) == 0
    finally:
        strict.close()
    shifted = ScheduleBuilder(client, tz="Europe/Paris", dst="shift")
    try:
        shifted.task.value = "add"
        shifted.args.value = "[1, 2]"
        shifted.run_at.value = gap
        assert "2099-03-29 03:30:00 CEST" in shifted.when.value
        shifted.add_button.click()
        result = shifted.schedule()
        assert list(result["outcome"]) == ["created"]
        stored = client.get(result["id"].iloc[0])
        assert stored.spec.run_at == datetime(2099, 3, 29, 1, 30, tzinfo=ZoneInfo("UTC"))
    finally:
        shifted.close()
    with pytest.raises(InvalidArgument, match="dst"):
        ScheduleBuilder(client, dst="sometimes")  # type: ignore[arg-type]


def test_schedules_view_lists_pauses_resumes_and_triggers(client: Client) -> None:
    from schedkit.notebook.schedules_view import SchedulesView

    tag = _tag()
    client.create_schedule(f"view-{tag}", "add", args=[1, 2], cron="0 8 * * *", labels={"v": tag})
    view = SchedulesView(client, labels=json.dumps({"v": tag}))
    assert list(view.frame["id"]) == [f"view-{tag}"]
    view.note.value = "for the test"
    view.pause_button.click()
    assert "paused: for the test" in unescape(view.table.value)
    view.resume_button.click()
    assert "active" in view.table.value
    view.trigger_button.click()
    assert "run k" in unescape(view.feedback.message.value)
    view.choice.options = []
    view.pause_button.click()
    assert "pick a schedule first" in unescape(view.feedback.message.value)
    client.delete_schedule(f"view-{tag}")


def test_inspector_has_a_schedules_tab_showing_runs_with_pause_resume_and_trigger(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    from schedkit.notebook.schedules_view import SchedulesView

    tag = _tag()
    schedule_id = f"tab-{tag}"
    client.create_schedule(
        schedule_id, "add", args=[1, 2], cron="0 8 * * *", tz="Europe/Paris", labels={"v": tag}
    )
    try:
        inspector = ScheduleInspector(client, live=False)
        inspector_of.append(inspector)
        assert inspector.tabs.titles == ("Tasks", "Schedules")
        view = inspector.schedules
        assert isinstance(view, SchedulesView)  # the one view, not a copy of it
        assert inspector.tabs.children[1] is view
        view.labels.value = f"v={tag}"
        inspector.tabs.selected_index = 1  # opening the tab reads the schedules again
        assert list(view.frame["id"]) == [schedule_id]
        assert view.choice.value == schedule_id
        # Its next run in the table, at 08:00 in its zone (said); the chosen schedule's next
        # runs below it, at 08:00 too.
        assert " 08:00:00 CE" in view.frame["next run"].iloc[0]
        assert " 08:00:00 CE" in unescape(view.table.value)
        upcoming = view.runs_frame[view.runs_frame["run"] == "next"]
        assert len(upcoming) >= 1, view.feedback.message.value
        assert all(" 08:00:00 CE" in t for t in upcoming["nominal time"])

        view.note.value = "for the test"
        view.pause_button.click()
        assert "paused: for the test" in unescape(view.table.value)
        assert client.get_schedule(schedule_id).paused
        view.resume_button.click()
        assert not client.get_schedule(schedule_id).paused
        view.trigger_button.click()
        made = client.get_schedule(schedule_id).recent_runs[0].task_id
        assert made in view.feedback.message.value
        # The run just made shows among the recent runs, with its task's state.
        recent = view.runs_frame[view.runs_frame["run"] == "recent"]
        assert made in list(recent["task id"])
        state = recent[recent["task id"] == made]["state"].iloc[0]
        assert state in {"SCHEDULED", "QUEUED", "STARTED", "SUCCEEDED"}
        assert made in view.runs.value
    finally:
        client.delete_schedule(schedule_id)
