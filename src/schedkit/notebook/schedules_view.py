"""A notebook view of server-side schedules: a table with each schedule's state, next and
recent runs; pick one to pause (with a note), resume or trigger it.

    from schedkit.notebook.schedules_view import SchedulesView
    SchedulesView(client)

Composed of core widgets; every call's error shows in the view, never as a traceback.
"""

from __future__ import annotations

import ipywidgets as widgets
import pandas as pd

from schedkit.client.client import Client
from schedkit.client.schedules import ScheduleInfo
from schedkit.errors import InvalidArgument
from schedkit.notebook._common import Feedback, fmt_time, html_table, parse_labels

MAX_SCHEDULES = 500


def schedules_frame(schedules: list[ScheduleInfo]) -> pd.DataFrame:
    """One row per schedule: id, state, spec, next runs, the latest run's task."""
    rows = []
    for s in schedules:
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
                "next runs": ", ".join(fmt_time(t, False) for t in s.next_run_times[:3]),
                "latest run": s.recent_runs[0].task_id if s.recent_runs else "",
                "runs": s.run_count,
            }
        )
    return pd.DataFrame(
        rows, columns=["id", "state", "task", "when", "next runs", "latest run", "runs"]
    )


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
        self.feedback = Feedback()
        guard = self.feedback.guard
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
                self.feedback.out,
            ]
        )
        self.frame = schedules_frame([])
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
        self.choice.options = [s.id for s in found]
        if current in self.choice.options:
            self.choice.value = current
        elif self.choice.options:
            self.choice.value = self.choice.options[0]

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
