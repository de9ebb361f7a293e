"""schedkit.notebook driven from Python as a user would: set values, click, and check the
real stack (tasks created and cancelled) and what the widget shows (results and errors)."""

from __future__ import annotations

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
from schedkit.notebook import ScheduleBuilder, ScheduleInspector, timeline
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


def _builder_with_one_row(client: Client) -> ScheduleBuilder:
    builder = ScheduleBuilder(client)
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

    assert list(inspector.frame["id"]) == [first.id, second.id]
    assert first.id in inspector.table.value
    assert second.id in inspector.table.value
    assert "JST" in inspector.table.value
    assert "2 task(s): 2 SCHEDULED" in inspector.summary.value

    inspector.task.value = "add"
    assert list(inspector.frame["id"]) == [second.id]
    inspector.task.value = ""

    inspector.selection.value = (first.id,)
    assert "rose" in inspector.detail.value
    assert "water_plants" in inspector.detail.value

    inspector.cancel_button.click()

    assert client.get(first.id).state == "CANCELLED"
    assert client.get(second.id).state == "SCHEDULED"
    assert f"cancelled 1: {first.id}" in inspector.feedback.message.value
    assert "CANCELLED" in inspector.detail.value  # the detail view follows the change
    inspector.states.value = ("CANCELLED",)
    assert list(inspector.frame["id"]) == [first.id]


def test_inspector_says_why_a_cancel_is_refused(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    tag = _tag()
    done = client.schedule("add", 1, 1, run_at=timedelta(seconds=0.2), labels={"test": tag})
    client.wait_for(done.id, ["SUCCEEDED"])
    inspector = ScheduleInspector(client, live=False)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"
    inspector.selection.value = (done.id,)
    inspector.cancel_button.click()
    assert "refused 1" in inspector.feedback.message.value
    assert done.id in inspector.feedback.message.value
    assert client.get(done.id).state == "SUCCEEDED"

    inspector.selection.value = ()
    inspector.cancel_button.click()
    assert "select the tasks to cancel first" in inspector.feedback.message.value


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
    assert "RuntimeError: pump jammed" in inspector.table.value
    inspector.selection.value = (failed.id,)
    assert "FAILED" in inspector.detail.value
    assert "Traceback" in inspector.detail.value
    assert "raise RuntimeError(message)" in inspector.detail.value


def test_inspector_shows_a_bad_filter_in_the_widget(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    inspector = ScheduleInspector(client, live=False)
    inspector_of.append(inspector)
    inspector.label.value = "no equals sign"
    assert "labels filter" in inspector.feedback.message.value
    assert "is not name=value" in inspector.feedback.message.value


def test_inspector_publishes_its_frame_only_once_the_table_shows_it(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    # The live thread redraws while a notebook reads ``frame``: a reader must never find a
    # frame the table does not show yet.
    tag = _tag()
    client.schedule("add", 1, 1, run_at=timedelta(hours=1), labels={"test": tag})
    inspector = ScheduleInspector(client, live=False)
    inspector_of.append(inspector)
    before = inspector.frame
    frames_while_drawing: list[pd.DataFrame] = []
    inspector.table.observe(lambda _: frames_while_drawing.append(inspector.frame), names="value")
    inspector.label.value = f"test={tag}"
    assert frames_while_drawing, "the table was not redrawn"
    assert all(frame is before for frame in frames_while_drawing)
    assert list(inspector.frame["state"]) == ["SCHEDULED"]
    assert tag in inspector.table.value


def test_inspector_follows_changes_live_and_stops(
    client: Client, inspector_of: list[ScheduleInspector]
) -> None:
    tag = _tag()
    inspector = ScheduleInspector(client, live=True, period=0.5, min_interval=0.1)
    inspector_of.append(inspector)
    inspector.label.value = f"test={tag}"
    assert inspector.running

    task = client.schedule("add", 2, 2, run_at=timedelta(seconds=0.3), labels={"test": tag})
    client.wait_for(task.id, ["SUCCEEDED"])
    seen = inspector.refresh_count
    # The thread redraws on its own after the change; wait for a redraw that shows it.
    for _ in range(20):
        if list(inspector.frame.get("state", [])) == ["SUCCEEDED"]:
            break
        assert inspector.wait_refreshed(seen, timeout=5.0)
        seen = inspector.refresh_count
    assert list(inspector.frame["state"]) == ["SUCCEEDED"]
    assert "SUCCEEDED" in inspector.table.value

    inspector.live.value = False
    inspector.stop(timeout=5.0)
    assert not inspector.running


def test_inspector_close_stops_its_thread(client: Client) -> None:
    inspector = ScheduleInspector(client, live=True, period=0.5)
    assert inspector.running
    inspector.close()
    assert not inspector.running


# -- timeline -----------------------------------------------------------------------------------


def test_timeline_draws_planned_and_actual_runs(client: Client) -> None:
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
    assert len(ax.collections) == 2  # one bar per run that started
    ARTIFACTS.mkdir(exist_ok=True)
    figure.savefig(ARTIFACTS / "timeline.png")
    if os.environ.get("SCHEDKIT_UPDATE_DOCS_IMAGES") == "1":
        figure.savefig(Path(__file__).resolve().parent.parent / "docs" / "img" / "timeline.png")


def test_timeline_names_a_missing_column() -> None:
    from schedkit.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="run_at"):
        timeline(pd.DataFrame({"task": ["add"]}))


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
