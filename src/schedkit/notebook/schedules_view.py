"""A notebook view of server-side schedules: a table with each schedule's state, rule and next
run; pick one to see all its next runs and its recent runs with their tasks' states,
and to pause (with a note), resume or trigger it.

    from schedkit.notebook.schedules_view import SchedulesView
    SchedulesView(client)

Composed of core widgets; every call's error shows in the view, never as a traceback.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import pandas as pd

from schedkit.client.client import Client
from schedkit.client.schedules import ScheduleInfo
from schedkit.errors import InvalidArgument, SchedkitError
from schedkit.notebook._common import Feedback, describe, fmt_time, html_table, parse_labels
from schedkit.timeutil import zone

MAX_SCHEDULES = 500
RUN_COLUMNS = ["run", "nominal time", "task id", "state", "result or error"]


def schedules_frame(schedules: list[ScheduleInfo]) -> pd.DataFrame:
    """One row per schedule: id, state, task, rule, its next run (in its zone, which is said)
    and how many runs it made. One next run and no recent runs keep the table as wide as a
    notebook cell: the picked schedule's runs below list them all, with their tasks' states."""
    rows = []
    for s in schedules:
        place = zone(s.definition.recurrence.tz or "UTC")
        rec = s.definition.recurrence
        when = " | ".join(rec.cron) or ""
        if rec.every is not None:
            when = (when + " + " if when else "") + f"every {rec.every}"
        rows.append(
            {
                "id": s.id,
                "state": f"paused: {s.note}" if s.paused else "active",
                "task": s.definition.action.task,
                "when": f"{when} ({rec.tz})",
                "next run": next(
                    (fmt_time(pd.Timestamp(t).tz_convert(place)) for t in s.next_run_times), ""
                ),
                "runs": s.run_count,
            }
        )
    return pd.DataFrame(rows, columns=["id", "state", "task", "when", "next run", "runs"])


def runs_frame(client: Client, schedule: ScheduleInfo) -> pd.DataFrame:
    """One row per next run (nominal time) and per recent run (with its task's state, read
    from the server: at most the ten the server keeps), in the schedule's zone."""
    place = zone(schedule.definition.recurrence.tz or "UTC")
    rows = [
        {
            "run": "next",
            "nominal time": fmt_time(pd.Timestamp(t).tz_convert(place)),
            "task id": "",
            "state": "",
            "result or error": "",
        }
        for t in schedule.next_run_times
    ]
    for run in schedule.recent_runs:
        try:
            task = client.get(run.task_id)
            state, outcome = str(task.state), task.error or task.result
        except SchedkitError as exc:  # purged since, say: the run is still listed
            state, outcome = "", describe(exc)
        rows.append(
            {
                "run": "recent",
                "nominal time": fmt_time(pd.Timestamp(run.nominal).tz_convert(place)),
                "task id": run.task_id,
                "state": state,
                "result or error": outcome,
            }
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS, dtype=object)


class SchedulesView(widgets.VBox):
    """Schedules (filtered by labels) with pause, resume and trigger."""

    def __init__(self, client: Client, *, labels: str = "") -> None:
        self.client = client
        self.labels = widgets.Text(
            value=labels, description="labels", placeholder='{"team": "ops"}'
        )
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.table = widgets.HTML()
        self.choice = widgets.Dropdown(description="schedule", options=[])
        self.note = widgets.Text(description="note", placeholder="why")
        self.pause_button = widgets.Button(description="Pause", icon="pause")
        self.resume_button = widgets.Button(description="Resume", icon="play")
        self.trigger_button = widgets.Button(description="Run now", icon="bolt")
        self.runs = widgets.HTML()
        self.feedback = Feedback()
        guard = self.feedback.guard
        # Picking a schedule shows its runs; refresh() shows them once, after the listing.
        self._listing = False
        self.choice.observe(
            guard(lambda _: None if self._listing else self.show_runs()), names="value"
        )
        self.refresh_button.on_click(guard(lambda _: self.refresh()))
        self.pause_button.on_click(guard(lambda _: self._act("pause")))
        self.resume_button.on_click(guard(lambda _: self._act("resume")))
        self.trigger_button.on_click(guard(lambda _: self._act("trigger")))
        controls = widgets.HBox([self.pause_button, self.resume_button, self.trigger_button])
        super().__init__(
            [
                widgets.HBox([self.labels, self.refresh_button]),
                self.table,
                widgets.HBox([self.choice, self.note]),
                controls,
                self.feedback.message,
                self.runs,
                self.feedback.out,
            ]
        )
        self.add_class("schedkit-schedules")
        self.runs.add_class("schedkit-schedule-runs")
        self.frame = schedules_frame([])
        self.runs_frame = pd.DataFrame(columns=RUN_COLUMNS)
        guard(lambda: self.refresh())()

    def refresh(self) -> None:
        """Read the schedules again (at most MAX_SCHEDULES)."""
        wanted = parse_labels(self.labels.value)
        found = []
        for schedule in self.client.schedules(labels=wanted):
            found.append(schedule)
            if len(found) >= MAX_SCHEDULES:
                break
        frame = schedules_frame(found)
        self.frame = frame
        self.table.value = html_table(frame, "no schedules")
        current = self.choice.value
        self._listing = True
        try:
            self.choice.options = [s.id for s in found]
            if current in self.choice.options:
                self.choice.value = current
            elif self.choice.options:
                self.choice.value = self.choice.options[0]
        finally:
            self._listing = False
        self.show_runs()  # the chosen schedule's runs changed, or it did

    def show_runs(self) -> None:
        """Show the chosen schedule's next runs and recent runs (read from the server now)."""
        schedule_id = self.choice.value
        if not schedule_id:
            self.runs_frame = pd.DataFrame(columns=RUN_COLUMNS)
            self.runs.value = ""
            return
        frame = runs_frame(self.client, self.client.get_schedule(schedule_id))
        self.runs_frame = frame
        self.runs.value = f"<b>{html.escape(schedule_id)}</b>" + html_table(
            frame, "no next or recent runs"
        )

    def _act(self, action: str) -> None:
        schedule_id = self.choice.value
        if not schedule_id:
            raise InvalidArgument.for_field("schedule", "pick a schedule first")
        if action == "pause":
            self.client.pause(schedule_id, self.note.value)
            self.feedback.ok(f"paused {schedule_id}")
        elif action == "resume":
            self.client.resume(schedule_id, self.note.value)
            self.feedback.ok(f"resumed {schedule_id}")
        else:
            task = self.client.trigger(schedule_id)
            self.feedback.ok(f"{schedule_id}: run {task.id} made")
        self.refresh()
