"""The schedule inspector: a live, filtered table of tasks; select to see details or cancel.

It stays live without blocking the kernel: a background thread holds a WatchTasks call open
and re-reads the table when a task changes (at most every ``min_interval`` seconds), and at
least every ``period`` seconds when nothing changes. "Live" off, :meth:`stop` or
:meth:`close` end the thread; it notices within ``period`` seconds.
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
from typing import Any

import ipywidgets as widgets
import pandas as pd

from schedkit.client.client import Client
from schedkit.errors import SchedkitError
from schedkit.model import TaskState
from schedkit.notebook._common import (
    TABLE_STYLE,
    Feedback,
    describe,
    error_html,
    fmt_duration,
    fmt_time,
    html_table,
    instant,
    parse_labels,
    short_json,
    zone_names,
)
from schedkit.timetable.frames import tasks_frame

TABLE_COLUMNS = ("state", "task", "run_at", "labels", "id", "lateness", "result or error")


class ScheduleInspector(widgets.VBox):
    """Tasks of a schedkit server, filtered and refreshed live; ``frame`` is what is shown."""

    def __init__(
        self,
        client: Client,
        *,
        tz: str = "UTC",
        states: tuple[str, ...] = (),
        limit: int = 200,
        live: bool = True,
        period: float = 2.0,
        min_interval: float = 0.5,
    ) -> None:
        self.client = client
        self.period = period
        self.min_interval = min_interval
        self.feedback = Feedback()
        self.frame = pd.DataFrame()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.refreshed = threading.Condition()
        self.refresh_count = 0

        self._build_filter_controls([t.name for t in client.task_types()], tz, states, limit)
        self._build_table_controls()
        self._observe_controls()
        super().__init__(self._layout())
        # Stable CSS hooks for styling and for browser tests.
        self.add_class("schedkit-inspector")
        self.selection.add_class("schedkit-selection")
        self.cancel_button.add_class("schedkit-cancel")
        self.table.add_class("schedkit-tasks")
        self.refresh()
        self.live.value = live

    def _build_filter_controls(
        self, names: list[str], tz: str, states: tuple[str, ...], limit: int
    ) -> None:
        """Which tasks are shown: state, task name, labels, run-time range and how many."""
        self.states = widgets.SelectMultiple(
            options=[s.value for s in TaskState], value=states, description="state", rows=8
        )
        self.task = widgets.Dropdown(
            options=[("any", ""), *((n, n) for n in names)], description="task"
        )
        self.label = widgets.Text(description="labels", placeholder="team=ops")
        self.after = widgets.NaiveDatetimePicker(description="from")
        self.before = widgets.NaiveDatetimePicker(description="to")
        self.tz = widgets.Combobox(
            value=tz, options=zone_names(), ensure_option=True, description="time zone"
        )
        self.limit = widgets.BoundedIntText(value=limit, min=1, max=100_000, description="at most")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.live = widgets.ToggleButton(value=False, description="Live", icon="play")

    def _build_table_controls(self) -> None:
        """The table, the selection in it, its details and the cancel button."""
        self.summary = widgets.HTML()
        self.table = widgets.HTML()
        self.selection = widgets.SelectMultiple(
            description="select", rows=6, layout=widgets.Layout(width="620px")
        )
        self.cancel_button = widgets.Button(
            description="Cancel selected", button_style="danger", icon="ban"
        )
        self.detail = widgets.HTML()

    def _observe_controls(self) -> None:
        """Refresh when a filter changes; act on the buttons, the selection and "Live"."""
        guard = self.feedback.guard
        filters = (self.states, self.task, self.label, self.after, self.before, self.tz, self.limit)
        for control in filters:
            control.observe(guard(lambda _: self.refresh()), names="value")
        self.refresh_button.on_click(guard(lambda _: self.refresh()))
        self.cancel_button.on_click(guard(lambda _: self.cancel_selected()))
        self.selection.observe(guard(lambda _: self.show_detail()), names="value")
        self.live.observe(guard(self._toggle_live), names="value")

    def _layout(self) -> list[widgets.Widget]:
        """Filters across the top, then the table, then the selection beside its details."""
        return [
            widgets.HBox(
                [
                    self.states,
                    widgets.VBox([self.task, self.label, self.after, self.before]),
                    widgets.VBox([self.tz, self.limit, self.refresh_button, self.live]),
                ]
            ),
            self.summary,
            self.table,
            widgets.HBox(
                [
                    widgets.VBox([self.selection, self.cancel_button, self.feedback.message]),
                    self.detail,
                ]
            ),
            self.feedback.out,
        ]

    # -- reading ----------------------------------------------------------------------------

    def filters(self) -> dict[str, Any]:
        """The filter controls as keyword arguments of :meth:`schedkit.Client.tasks_frame`."""
        return {
            "states": list(self.states.value),
            "task": self.task.value or "",
            "labels": parse_labels(self.label.value, field="labels filter"),
            "run_after": instant(self.after.value, self.tz.value, "from"),
            "run_before": instant(self.before.value, self.tz.value, "to"),
            "tz": self.tz.value,
            "limit": self.limit.value,
        }

    def refresh(self) -> pd.DataFrame:
        """Read the tasks again and redraw the table; return them."""
        with self._lock:
            frame = self.client.tasks_frame(**self.filters())
            self._draw(frame)
            # Published only once drawn: whoever reads ``frame`` finds the table showing it.
            self.frame = frame
            self.show_detail()  # the selected task may have changed state
        with self.refreshed:
            self.refresh_count += 1
            self.refreshed.notify_all()
        return frame

    def wait_refreshed(self, after: int, timeout: float = 10.0) -> bool:
        """Block until the table was redrawn more than ``after`` times (for tests and scripts)."""
        with self.refreshed:
            return self.refreshed.wait_for(lambda: self.refresh_count > after, timeout=timeout)

    def _draw(self, frame: pd.DataFrame) -> None:
        shown = pd.DataFrame(
            {
                "state": frame["state"],
                "task": frame["task"],
                "run_at": frame["run_at"].map(fmt_time),
                "labels": [
                    ", ".join(f"{k}={v}" for k, v in labels.items()) for labels in frame["labels"]
                ],
                "id": frame["id"],
                "lateness": frame["lateness"].map(fmt_duration),
                "result or error": [
                    error or result
                    for result, error in zip(frame["result"], frame["error"], strict=True)
                ],
            },
            columns=list(TABLE_COLUMNS),
        )
        self.table.value = html_table(shown, "no task matches the filters")
        counts = frame["state"].value_counts()
        self.summary.value = (
            f"{len(frame)} task(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())
            if len(frame)
            else ""
        )
        options = [
            (f"{i}  {t}  {fmt_time(r, with_zone=False)}", i)
            for i, t, r in zip(frame["id"], frame["task"], frame["run_at"], strict=True)
        ]
        if options != list(self.selection.options):
            # Only when the tasks differ, so a refresh does not undo what the user selected.
            chosen = [v for v in self.selection.value if v in set(frame["id"])]
            self.selection.options = options
            self.selection.value = tuple(chosen)

    def show_detail(self) -> None:
        """Show the first selected task in full: arguments, times, result, error, traceback."""
        if not self.selection.value:
            self.detail.value = ""
            return
        task_id = self.selection.value[0]
        found = self.frame[self.frame["id"] == task_id] if len(self.frame) else self.frame
        if not len(found):  # filtered out since it was selected: ask the server
            found = tasks_frame([self.client.get(task_id)], tz=self.tz.value)
        task = found.iloc[0]
        fields = {
            "id": task["id"],
            "task": task["task"],
            "state": task["state"],
            "args": short_json([task["args"]])[0],
            "kwargs": short_json([task["kwargs"]])[0],
            "labels": short_json([task["labels"]])[0],
            "key": task["key"],
            "run at": fmt_time(task["run_at"]),
            "created": fmt_time(task["created_at"]),
            "queued": fmt_time(task["queued_at"]),
            "started": fmt_time(task["started_at"]),
            "finished": fmt_time(task["finished_at"]),
            "lateness": fmt_duration(task["lateness"]),
            "attempts": str(task["attempts"]),
            "result": task["result"],
            "error": task["error"],
        }
        body = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in fields.items()
        )
        trace = (
            f"<pre style='font-size:11px'>{html.escape(task['traceback'])}</pre>"
            if task["traceback"]
            else ""
        )
        self.detail.value = f"{TABLE_STYLE}<table class='schedkit-table'>{body}</table>{trace}"

    # -- acting -----------------------------------------------------------------------------

    def cancel_selected(self) -> list[str]:
        """Cancel every selected task; return the ids cancelled, show those refused and why."""
        ids = list(self.selection.value)
        if not ids:
            self.feedback.message.value = error_html("select the tasks to cancel first")
            return []
        done: list[str] = []
        refused: list[str] = []
        for task_id in ids:
            try:
                self.client.cancel(task_id)
                done.append(task_id)
            except SchedkitError as exc:
                refused.append(f"{task_id}: {describe(exc)}")
        self.refresh()
        if refused:
            self.feedback.message.value = error_html(
                f"cancelled {len(done)}, refused {len(refused)}:\n" + "\n".join(refused)
            )
        else:
            self.feedback.ok(f"cancelled {len(done)}: {', '.join(done)}")
        return done

    # -- staying live -----------------------------------------------------------------------

    def start(self) -> None:
        """Refresh in a background thread until :meth:`stop`."""
        self.live.value = True

    def stop(self, timeout: float | None = None) -> None:
        """End the live refresh and wait for its thread (up to ``timeout``, default period+5 s)."""
        self.live.value = False
        self._join(timeout)

    @property
    def running(self) -> bool:
        """True while the live-refresh thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the live refresh, then close the widgets."""
        self.stop()
        super().close()

    def _toggle_live(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self.live.icon = "pause"
            if not self.running:
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._follow, name="schedkit-inspector", daemon=True
                )
                self._thread.start()
        else:
            self.live.icon = "play"
            self._stopping.set()

    def _join(self, timeout: float | None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(self.period + 5.0 if timeout is None else timeout)

    def _follow(self) -> None:
        # Daemon thread: a kernel shut down with the inspector live does not hang on it.
        while not self._stopping.is_set():
            try:
                self._follow_once()
            except Exception as exc:  # shown in the widget; retried after a pause
                self.feedback.error(exc)
                self._stopping.wait(self.period)

    def _follow_once(self) -> None:
        filters = self.filters()
        changes = self.client.watch(
            task=filters["task"], labels=filters["labels"], timeout=self.period
        )
        with contextlib.closing(changes):
            self.refresh()  # after the watch started, so no change falls in between
            last, dirty = time.monotonic(), False
            for _ in changes:
                if self._stopping.is_set():
                    return
                dirty = True
                if time.monotonic() - last >= self.min_interval:
                    self.refresh()
                    last, dirty = time.monotonic(), False
        if dirty and not self._stopping.is_set():
            self.refresh()
