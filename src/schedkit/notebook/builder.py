"""The schedule builder: a form that fills a draft timetable and schedules it.

The draft is a timetable DataFrame (the columns of :mod:`schedkit.timetable.schema`), so a row
added with the form, a row of a DataFrame passed in, and a row of a CSV file are checked and
scheduled by the same code: each new row goes through the timetable checks before it is
added, and "Schedule" hands the whole draft to :meth:`schedkit.Client.schedule_frame`.

A form with an every or cron rule can instead become a server-side schedule ("Create
schedule", :meth:`ScheduleBuilder.create_schedule`): the server keeps the rule and makes its
runs for ever; :mod:`schedkit.notebook.server_schedule` says how the form maps onto it.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timedelta, tzinfo
from typing import Any

import ipywidgets as widgets
import pandas as pd

from schedkit.client.client import Client
from schedkit.client.schedules import ScheduleInfo
from schedkit.errors import InvalidArgument, SchedkitError
from schedkit.model import TaskType
from schedkit.notebook._common import (
    Feedback,
    error_html,
    fmt_time,
    html_table,
    json_value,
    ok_html,
    parse_labels,
    signature_from_text,
    zone_names,
)
from schedkit.notebook.server_schedule import (
    OVERLAPS,
    created_text,
    schedule_id,
    schedule_options,
    server_error_text,
)
from schedkit.timetable.check import check_timetable
from schedkit.timetable.options import TimetableOptions
from schedkit.timetable.outcomes import OUTCOME_COLUMNS
from schedkit.timeutil import DstPolicy, localize, zone

#: Columns of a row added with the form.
DRAFT_COLUMNS = (
    "task",
    "run_at",
    "tz",
    "args",
    "kwargs",
    "every",
    "cron",
    "until",
    "count",
    "labels",
)
# The result table: which row and task, then the outcome columns the scheduler writes too.
RESULT_COLUMNS = ("row", "task", "run_at", *OUTCOME_COLUMNS)
REPEATS = (("once", ""), ("every (pandas offset: 15min, 1h, 1D)", "every"), ("cron", "cron"))
#: How many next runs of a recurring rule the form previews, and how far ahead it looks.
PREVIEW_RUNS = 5
PREVIEW_HORIZON = timedelta(days=400)
_WIDE = widgets.Layout(width="420px")


class ScheduleBuilder(widgets.VBox):
    """A form for building a schedule row by row; ``frame`` is the draft, ``results`` the
    outcome of the last "Schedule" (one row per run, with ``id``, ``outcome`` and ``error``).

    ``tz`` is the zone the form starts with, and the zone of naive times in ``frame`` rows
    without a ``tz`` cell. Without it the form asks for a zone, and such rows are refused:
    a naive time is never read as UTC unless someone chose UTC. ``dst`` is the policy for a
    local time in a daylight saving gap or overlap (raise, shift, earliest, latest), in the
    form, the preview and the scheduling alike.
    """

    def __init__(
        self,
        client: Client,
        *,
        frame: pd.DataFrame | None = None,
        tz: str = "",
        dst: DstPolicy = "raise",
        source: str = "notebook",
    ) -> None:
        self.client = client
        self.source = source
        self.dst: DstPolicy = TimetableOptions(dst=dst).dst  # a bad policy fails here
        self.default_tz = tz or None
        # Argument errors are shown once the user has typed: a fresh form is not wrong yet.
        self._typed = False
        self.feedback = Feedback()
        self.types: dict[str, TaskType] = {t.name: t for t in client.task_types()}
        self._draft = pd.DataFrame(columns=list(DRAFT_COLUMNS))
        if frame is not None:
            self._draft = frame.reset_index(drop=True).copy()
        self.results = pd.DataFrame(columns=list(RESULT_COLUMNS))
        self._build_task_controls()
        self._build_time_controls(tz)
        self._build_draft_controls()
        self._build_schedule_controls()
        self._observe_controls()
        self._check_arguments()
        self._show_when()
        self._show_preview()
        self._show_draft()
        super().__init__(self._layout())
        # Stable CSS hooks for styling and for browser tests.
        self.add_class("schedkit-builder")
        for control, name in (
            (self.task, "task"),
            (self.args, "args"),
            (self.kwargs, "kwargs"),
            (self.labels, "labels"),
            (self.tz, "tz"),
            (self.run_at, "run-at"),
            (self.when, "when"),
            (self.preview, "preview"),
            (self.add_button, "add"),
            (self.schedule_button, "schedule"),
            (self.schedule_id, "schedule-id"),
            (self.overlap, "overlap"),
            (self.create_button, "create-schedule"),
        ):
            control.add_class(f"schedkit-{name}")

    def _build_task_controls(self) -> None:
        """What runs: the task, its arguments and labels."""
        self.task = widgets.Dropdown(options=sorted(self.types), description="task")
        self.task_help = widgets.HTML()
        self.args = widgets.Text(
            value="[]", description="args", placeholder='JSON list: ["rose"]', layout=_WIDE
        )
        self.kwargs = widgets.Text(
            value="{}", description="kwargs", placeholder='JSON object: {"litres": 2}', layout=_WIDE
        )
        self.arguments_check = widgets.HTML()
        self.labels = widgets.Text(description="labels", placeholder="team=ops, env=dev")

    def _build_time_controls(self, tz: str) -> None:
        """When it runs: the first run (five minutes from now, in ``tz``) and how it repeats."""
        start = (datetime.now(zone(tz)) + timedelta(minutes=5)).replace(
            second=0, microsecond=0, tzinfo=None
        )
        self.run_at = widgets.NaiveDatetimePicker(value=start, description="run at")
        # No ensure_option: the box shows what was typed, and _zone() says if it is unknown,
        # so the draft never keeps a zone other than the one on screen.
        self.tz = widgets.Combobox(
            value=tz,
            options=zone_names(),
            description="time zone",
            placeholder="Europe/Paris, or UTC",
        )
        self.when = widgets.HTML()
        self.preview = widgets.HTML()
        self.repeat = widgets.Dropdown(options=REPEATS, value="", description="repeat")
        self.rule = widgets.Text(description="rule", placeholder="15min  or  0 8 * * mon-fri")
        self.until = widgets.NaiveDatetimePicker(value=None, description="until")
        self.count = widgets.BoundedIntText(
            value=0, min=0, max=1_000_000, description="count", tooltip="0: no limit"
        )

    def _build_draft_controls(self) -> None:
        """The draft and what acts on it: add, remove, schedule, and the results."""
        self.add_button = widgets.Button(description="Add", button_style="primary", icon="plus")
        self.draft_table = widgets.HTML()
        self.remove_select = widgets.SelectMultiple(description="rows", rows=4)
        self.remove_button = widgets.Button(description="Remove", icon="trash")
        self.schedule_button = widgets.Button(
            description="Schedule", button_style="success", icon="paper-plane"
        )
        self.results_table = widgets.HTML()

    def _build_schedule_controls(self) -> None:
        """The other way for a rule: a server-side schedule under an id, with its overlap
        policy; enabled only while the form has a rule and its arguments fit."""
        self.schedule_id = widgets.Text(
            description="schedule id", placeholder="water-fern (required)"
        )
        self.overlap = widgets.Dropdown(options=OVERLAPS, value="skip", description="overlap")
        self.create_button = widgets.Button(
            description="Create schedule",
            icon="calendar",
            tooltip="keep the rule on the server instead of expanding it into runs",
        )
        self.schedule_hint = widgets.HTML()

    def _observe_controls(self) -> None:
        """Check the arguments and the run time as they are edited; act on the buttons."""
        guard = self.feedback.guard
        self.task.observe(guard(lambda _: self._check_arguments()), names="value")
        for control in (self.args, self.kwargs):
            control.observe(guard(lambda _: self._check_arguments(typed=True)), names="value")
        for control in (self.run_at, self.tz):
            control.observe(guard(lambda _: self._show_when()), names="value")
        for control in (self.run_at, self.tz, self.repeat, self.rule, self.until, self.count):
            control.observe(guard(lambda _: self._show_preview()), names="value")
        self.add_button.on_click(guard(lambda _: self.add()))
        self.remove_button.on_click(guard(lambda _: self.remove(self.remove_select.value)))
        self.schedule_button.on_click(guard(lambda _: self.schedule()))
        for control in (self.repeat, self.rule):
            control.observe(guard(lambda _: self._show_schedule_option()), names="value")
        self.create_button.on_click(guard(lambda _: self.create_schedule()))

    def _layout(self) -> list[widgets.Widget]:
        """The form, then the draft, then the last results, top to bottom."""
        return [
            widgets.HTML("<b>New task</b>"),
            self.task,
            self.task_help,
            self.args,
            self.kwargs,
            self.arguments_check,
            widgets.HBox([self.run_at, self.tz]),
            self.when,
            widgets.HBox([self.repeat, self.rule]),
            widgets.HBox([self.until, self.count]),
            self.preview,
            self.labels,
            self.add_button,
            widgets.HTML("<b>Or keep the rule on the server</b>"),
            widgets.HBox([self.schedule_id, self.overlap]),
            self.schedule_hint,
            self.create_button,
            widgets.HTML("<b>Draft</b>"),
            self.draft_table,
            widgets.HBox([self.remove_select, self.remove_button]),
            self.schedule_button,
            self.feedback.message,
            self.results_table,
            self.feedback.out,
        ]

    # -- the draft ------------------------------------------------------------------------

    @property
    def frame(self) -> pd.DataFrame:
        """The draft timetable (a copy): one row per task or recurring rule."""
        return self._draft.copy()

    def row(self) -> dict[str, Any]:
        """The form as one timetable row; InvalidArgument naming the field if it is wrong."""
        self._arguments()
        self._zone()
        labels = parse_labels(self.labels.value)
        if self.run_at.value is None and self.repeat.value != "cron":
            raise InvalidArgument.for_field("run at", "required: pick when the task runs")
        if self.repeat.value and not self.rule.value.strip():
            raise InvalidArgument.for_field(
                "rule", f"required when repeating by {self.repeat.value}"
            )
        return {
            "task": self.task.value or "",
            "run_at": self.run_at.value.isoformat() if self.run_at.value else "",
            "tz": self.tz.value.strip(),
            "args": self.args.value.strip() or "[]",
            "kwargs": self.kwargs.value.strip() or "{}",
            "every": self.rule.value.strip() if self.repeat.value == "every" else "",
            "cron": self.rule.value.strip() if self.repeat.value == "cron" else "",
            "until": self.until.value.isoformat() if self.until.value and self.repeat.value else "",
            "count": str(self.count.value) if self.count.value and self.repeat.value else "",
            "labels": json.dumps(labels, ensure_ascii=False) if labels else "",
        }

    def add(self) -> None:
        """Check the form's row as a timetable row and append it to the draft."""
        row = self.row()
        options = TimetableOptions(past="error", dst=self.dst)  # the row carries its zone
        checked = check_timetable(pd.DataFrame([row]), options)
        if checked.errors:
            raise InvalidArgument(
                "; ".join(f"{e.column}: {e.message}" for e in checked.errors),
                violations=tuple(e.violation() for e in checked.errors),
            )
        self._draft = pd.concat([self._draft, pd.DataFrame([row])], ignore_index=True)
        self._show_draft()
        runs = len(checked.runs)
        self.feedback.ok(f"added row {len(self._draft)}" + (f" ({runs} runs)" if runs > 1 else ""))

    def remove(self, rows: tuple[int, ...] | list[int]) -> None:
        """Drop draft rows by number (counted from 1, as shown)."""
        if not rows:
            raise InvalidArgument.for_field("rows", "select the draft rows to remove")
        self._draft = self._draft.drop(index=[r - 1 for r in rows]).reset_index(drop=True)
        self._show_draft()
        self.feedback.ok(f"removed {len(rows)} row(s)")

    def schedule(self) -> pd.DataFrame:
        """Send the draft through the client; show and return the outcome of every run."""
        if not len(self._draft):
            raise InvalidArgument.for_field("draft", "empty: add a row first")
        # past="run": a row whose time passed while the form was open runs now, not never.
        result = self.client.schedule_frame(
            self._draft, tz=self.default_tz, dst=self.dst, source=self.source, past="run"
        )
        self.results = result
        shown = result.reindex(columns=list(RESULT_COLUMNS))
        shown["run_at"] = shown["run_at"].map(fmt_time)
        self.results_table.value = html_table(shown, "nothing was scheduled")
        counts = result["outcome"].value_counts()
        summary = ", ".join(f"{int(n)} {name}" for name, n in counts.items())
        bad = int(counts.get("rejected", 0) + counts.get("invalid", 0))
        if bad:
            self.feedback.message.value = error_html(
                f"{summary}: see the error column of the rows below"
            )
        else:
            self.feedback.ok(summary)
        return result

    def create_schedule(self) -> ScheduleInfo | None:
        """Create a server-side schedule from the form's task, arguments and rule (instead of
        expanding the rule into runs); the outcome, or the server's error naming the form
        field, is shown in the feedback line. Nothing is sent while the form has an error."""
        if not self.repeat.value:
            raise InvalidArgument.for_field(
                "repeat",
                "a schedule needs a rule: choose every or cron (a one-off run is scheduled "
                "with Add and Schedule)",
            )
        ident = schedule_id(self.schedule_id.value)
        row = self.row()
        args, kwargs = self._arguments()
        place = self._zone()
        options = schedule_options(
            row,
            args=args,
            kwargs=kwargs,
            place=place,
            dst=self.dst,
            overlap=self.overlap.value,
            source=self.source,
        )
        try:
            info = self.client.create_schedule(ident, row["task"], **options)
        except SchedkitError as exc:  # AlreadyExists, InvalidArgument... as the server says
            self.feedback.message.value = error_html(server_error_text(exc))
            return None
        self.feedback.ok(created_text(info, place))
        return info

    # -- showing ----------------------------------------------------------------------------

    def _arguments(self) -> tuple[list[Any], dict[str, Any]]:
        args = json_value(self.args.value, list, "args", 'a JSON list such as ["rose", 2]')
        kwargs = json_value(
            self.kwargs.value, dict, "kwargs", 'a JSON object such as {"litres": 2}'
        )
        task = self.types.get(self.task.value or "")
        signature = signature_from_text(task.signature) if task else None
        if task and signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise InvalidArgument.for_field(
                    "args", f"do not fit {task.name}{task.signature}: {exc}"
                ) from exc
        return args, kwargs

    def _zone(self) -> tzinfo:
        """The zone typed in the form; InvalidArgument (with close matches) if none or unknown."""
        name = self.tz.value.strip()
        if not name:
            raise InvalidArgument.for_field(
                "time zone",
                "required: the run time has no zone; pick one (UTC if UTC is meant)",
            )
        return zone(name, field="time zone")

    def _check_arguments(self, typed: bool = False) -> None:
        self._typed = self._typed or typed
        task = self.types.get(self.task.value or "")
        self.task_help.value = (
            f"<code>{task.name}{html.escape(task.signature)}</code> {html.escape(task.doc)}"
            if task
            else "<i>the server allows no tasks</i>"
        )
        try:
            self._arguments()
        except InvalidArgument as exc:
            self.arguments_check.value = (
                error_html(exc.message)
                if self._typed
                else "<i>fill in the arguments the task takes</i>"
            )
            self.add_button.disabled = True
        else:
            self.arguments_check.value = ok_html("arguments fit the task")
            self.add_button.disabled = False
        self._show_schedule_option()

    def _show_when(self) -> None:
        if self.run_at.value is None:
            self.when.value = "<i>no run time picked</i>"
            return
        if not self.tz.value.strip():
            self.when.value = "<i>pick the time zone of the run time (UTC if UTC is meant)</i>"
            return
        try:
            place = self._zone()
        except InvalidArgument as exc:  # an unknown zone: said, with close matches
            self.when.value = error_html(exc.violations[0].description)
            return
        try:
            moment = pd.Timestamp(localize(self.run_at.value, place, dst=self.dst)).tz_convert(
                place
            )
        except InvalidArgument as exc:  # a DST gap or overlap, and dst="raise"
            self.when.value = error_html(exc.violations[0].description)
            return
        self.when.value = f"runs at {fmt_time(moment)} = {fmt_time(moment.tz_convert('UTC'))}"

    def _show_preview(self) -> None:
        """The next runs of an every/cron rule, in the form's zone, as the timetable expands
        them (the same code that schedules them)."""
        rule = self.rule.value.strip()
        if not self.repeat.value or not rule or not self.tz.value.strip():
            self.preview.value = ""
            return
        try:
            place = self._zone()
        except InvalidArgument:
            self.preview.value = ""  # _show_when already says why
            return
        limit = self.count.value if 0 < self.count.value < PREVIEW_RUNS else PREVIEW_RUNS
        row = {
            "task": "preview",
            "run_at": self.run_at.value.isoformat() if self.run_at.value else "",
            "tz": self.tz.value.strip(),
            self.repeat.value: rule,
            "until": self.until.value.isoformat() if self.until.value else "",
        }
        options = TimetableOptions(past="skip", horizon=PREVIEW_HORIZON, dst=self.dst)
        checked = check_timetable(pd.DataFrame([row]), options)
        if checked.errors:
            self.preview.value = error_html(
                "; ".join(f"{e.column}: {e.message}" for e in checked.errors)
            )
            return
        runs = checked.runs["run_at"].head(limit).dt.tz_convert(place)
        if not len(runs):
            self.preview.value = "<i>no run in the next 400 days</i>"
            return
        shown = ", ".join(html.escape(fmt_time(t)) for t in runs)
        self.preview.value = f"next runs: {shown}"

    def _show_schedule_option(self) -> None:
        """The "Create schedule" button is on for a rule whose arguments fit; else, why not."""
        has_rule = bool(self.repeat.value and self.rule.value.strip())
        self.create_button.disabled = not has_rule or self.add_button.disabled
        if not has_rule:
            self.schedule_hint.value = (
                "<i>choose every or cron and a rule to keep it on the server as a schedule</i>"
            )
        else:
            self.schedule_hint.value = (
                "<i>the server keeps the rule and makes its runs for ever "
                "(pause, resume, trigger, backfill: see docs/schedules.md)</i>"
            )

    def _show_draft(self) -> None:
        shown = self._draft.copy()
        shown.index = pd.RangeIndex(1, len(shown) + 1)
        self.draft_table.value = html_table(shown.reset_index(names="row"), "the draft is empty")
        tasks = shown["task"].astype(str) if "task" in shown else pd.Series("", shown.index)
        self.remove_select.options = [(f"{n}: {task}", n) for n, task in tasks.items()]
