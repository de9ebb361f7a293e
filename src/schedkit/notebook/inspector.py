"""The schedule inspector: tasks in a data grid, one server-side page at a time, live.

The grid is itables' ``ITable`` widget (DataTables): sort by any column, select rows in the
grid itself (click, shift-click for a range), a header that stays while the rows scroll.
It holds one page of ``page size`` tasks; :class:`~schedkit.notebook.pages.Pager` reaches
every other page with ListTasks' page tokens and counts the matches, so "200 of 504 shown"
is exact and 100,000 matching tasks never reach the browser at once. Sorting orders the
page shown; pages follow run time.

It stays live without blocking the kernel: a background thread holds a WatchTasks call open
and re-reads the page when a task changes (at most every ``min_interval`` seconds), and at
least every ``period`` seconds when nothing changes. A page that did not change is not sent
again; one that did is, as ITable's front end re-creates its table for new data, but the
grid keeps what the reader did to it: the selection (sent again by task id, so it follows
its tasks), the scroll offset and a sort clicked in a header (kept in the browser by
:data:`KEEP_VIEW`, as long as the page shown is the same page of the same filters).
"Live" off, :meth:`stop` or :meth:`close` end the thread; it notices within ``period``
seconds.

A second tab, "Schedules", is :class:`~schedkit.notebook.schedules_view.SchedulesView`:
server-side schedules with their next and recent runs, paused, resumed or triggered there.
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import ipywidgets as widgets
import pandas as pd

from schedkit.client.client import Client
from schedkit.errors import ConfigError, InvalidArgument, SchedkitError
from schedkit.model import TaskState
from schedkit.notebook._common import (
    TABLE_STYLE,
    Feedback,
    describe,
    error_html,
    fmt_duration,
    fmt_time,
    instant,
    parse_labels,
    short_json,
    zone_names,
)
from schedkit.notebook.pages import MAX_PAGE_SIZE, Pager
from schedkit.notebook.schedules_view import SchedulesView
from schedkit.timetable.frames import tasks_frame
from schedkit.timeutil import to_instant, zone

TABLE_COLUMNS = ("state", "task", "run_at", "labels", "id", "lateness", "result or error")
#: Live refreshes recount the matches while there are at most this many (a count walks them
#: all); beyond, the count is redone on a filter change, Refresh or Cancel.
LIVE_RECOUNT = 5000
#: Selected tasks shown in full below the grid.
DETAILS_SHOWN = 5
#: The label width of filters named in a word or two.
SHORT = {"description_width": "50px"}
#: The grid's options, given again on every update: itables fills what an update leaves out
#: with its defaults, which would make only the small arrow of a header sort.
GRID_OPTIONS: dict[str, Any] = {
    "select": {"style": "multi+shift"},
    # One page of tasks, scrolled inside the grid under a header that stays.
    "paging": False,
    "scrollY": "420px",
    "scrollCollapse": True,
    "scrollX": True,
    "showIndex": False,
    "classes": "display compact nowrap cell-border",
    "layout": {"topStart": "search", "topEnd": None, "bottomStart": None, "bottomEnd": None},
    "order": [],
    # A click anywhere on a header sorts by it (not only on its small arrow).
    "text_in_header_can_be_selected": False,
    "maxBytes": 0,
    "allow_html": False,
}


#: DataTables' ``drawCallback`` (``VIEW`` replaced by the view's number). ITable's front end
#: destroys its DataTable and builds another whenever the data change, and neither the scroll
#: offset nor a clicked sort is reported to Python; but the ``<table>`` element outlives each
#: DataTable, so they are kept on it: the scroll offset as it changes, the order as it is
#: clicked. The first draw of a new DataTable of the same view (a live update of the page
#: shown) sorts as the reader had it and scrolls back; a new view (another page, other
#: filters) starts at the top, in run-time order. (initComplete would be the natural hook,
#: but ITable's front end drops it unless a header option is set; stateSave, which would
#: keep the order, makes ITable's update fail: it re-selects rows while the table is null.)
KEEP_VIEW = """function () {
  var api = this.api(), table = api.table().node();
  var body = api.table().container().querySelector(".dt-scroll-body");
  if (!body || body.schedkitKeeps) { return; }
  body.schedkitKeeps = true;
  var kept = table.schedkitKept;
  if (!kept || kept.view !== VIEW) {
    kept = table.schedkitKept = {view: VIEW, top: 0, order: []};
  }
  var top = kept.top;
  if (kept.order.length) { api.order(kept.order).draw(false); }
  body.scrollTop = top;
  // Once more after layout: a column adjustment may scroll the new table back to the top.
  window.requestAnimationFrame(function () { body.scrollTop = top; });
  if (window.ResizeObserver) {
    // A table drawn while hidden (another tab shown) cannot be scrolled yet: it is when
    // shown (kept.top is what the reader last saw).
    var hidden = !body.clientHeight;
    new ResizeObserver(function () {
      if (hidden && body.clientHeight) { body.scrollTop = kept.top; }
      hidden = !body.clientHeight;
    }).observe(body);
  }
  // From now on this DataTable's sorts are the reader's (its first one was the page's own).
  api.settings()[0].schedkitKeeps = true;
  body.addEventListener("scroll", function () {
    // Only while this DataTable shows the rows: a destroyed one scrolls to 0 as it empties.
    if (body.contains(table) && body.clientHeight) { kept.top = body.scrollTop; }
  });
  if (!table.schedkitOrders) {
    // Once per <table>: its handlers outlive each DataTable (destroy detaches it).
    table.schedkitOrders = true;
    api.on("order", function (event, settings) {
      if (settings.schedkitKeeps) { table.schedkitKept.order = settings.api.order(); }
    });
  }
}"""


def grid_options(view: int) -> dict[str, Any]:
    """:data:`GRID_OPTIONS`, with :data:`KEEP_VIEW` for view number ``view``."""
    from itables import JavascriptFunction

    return {
        **GRID_OPTIONS,
        "drawCallback": JavascriptFunction(KEEP_VIEW.replace("VIEW", str(view))),
    }


def _grid(frame: pd.DataFrame) -> Any:
    """The ITable widget over ``frame``: sortable, multi-row selection, inner scroll."""
    try:
        from itables.widget import ITable
    except ImportError as exc:
        raise ConfigError(
            "the inspector's grid needs itables: pip install 'schedkit[notebook]'"
        ) from exc
    return ITable(frame, **grid_options(0))


class ScheduleInspector(widgets.VBox):
    """Tasks of a schedkit server, filtered, paged and refreshed live; ``frame`` is the page
    shown, ``selected`` the ids selected in the grid."""

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
        self.frame = tasks_frame([], tz=zone(tz))
        self.pager = Pager(client, page_size=limit)
        self.page_number = 0
        self._filters: dict[str, Any] | None = None
        # Which page of which filters the grid shows, numbered: the browser keeps the
        # reader's scroll and sort across redraws of one view, and resets them for another.
        # The number changes only when other rows are drawn for another page or filters.
        self.view = 0
        self._view_of: tuple[str, int, int] | None = None
        # The match count runs in a thread of its own (a walk over 100,000 tasks takes
        # seconds): the page shows first. A newer count, or close(), abandons an older one.
        self._count_generation = 0
        self._count_thread: threading.Thread | None = None
        self.counted = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.refreshed = threading.Condition()
        self.refresh_count = 0

        self._build_filter_controls([t.name for t in client.task_types()], tz, states, limit)
        self._build_table_controls()
        self._observe_controls()
        # Schedules in a tab of their own: the same view as SchedulesView alone, read again
        # each time the tab is opened so it is current.
        self.schedules = SchedulesView(client)
        self.tasks_view = widgets.VBox(self._layout())
        self.tabs = widgets.Tab(
            children=[self.tasks_view, self.schedules], titles=("Tasks", "Schedules")
        )
        self.tabs.observe(
            self.schedules.feedback.guard(
                lambda change: self.schedules.refresh() if change["new"] == 1 else None
            ),
            names="selected_index",
        )
        super().__init__([self.tabs])
        # Stable CSS hooks for styling and for browser tests.
        self.add_class("schedkit-inspector")
        for control, name in (
            (self.grid, "grid"),
            (self.cancel_button, "cancel"),
            (self.move_to, "move-to"),
            (self.move_button, "move"),
            (self.summary, "summary"),
            (self.first_button, "first"),
            (self.previous_button, "previous"),
            (self.next_button, "next"),
            (self.last_button, "last"),
            (self.detail, "detail"),
            (self.label, "label-filter"),
            (self.live, "live"),
            (self.tabs, "tabs"),
        ):
            control.add_class(f"schedkit-{name}")
        self.refresh()
        self.live.value = live

    def _build_filter_controls(
        self, names: list[str], tz: str, states: tuple[str, ...], limit: int
    ) -> None:
        """Which tasks are shown: state, task name, labels, run-time range and page size."""
        # Narrower than ipywidgets' default (300px), short labels narrower than theirs: the
        # three filter columns fit a JupyterLab cell (about 830px) side by side.
        self.states = widgets.SelectMultiple(
            options=[s.value for s in TaskState],
            value=states,
            description="state",
            style=SHORT,
            rows=8,
            layout=widgets.Layout(width="220px"),
        )
        self.task = widgets.Dropdown(
            options=[("any", ""), *((n, n) for n in names)],
            description="task",
            style=SHORT,
            layout=widgets.Layout(width="270px"),
        )
        self.label = widgets.Text(
            description="labels",
            placeholder="team=ops",
            style=SHORT,
            layout=widgets.Layout(width="270px"),
        )
        self.after = widgets.NaiveDatetimePicker(
            description="from", style=SHORT, layout=widgets.Layout(width="270px")
        )
        self.before = widgets.NaiveDatetimePicker(
            description="to", style=SHORT, layout=widgets.Layout(width="270px")
        )
        # No ensure_option: what is typed is what is used, or said to be unknown.
        self.tz = widgets.Combobox(
            value=tz,
            options=zone_names(),
            description="time zone",
            layout=widgets.Layout(width="270px"),
        )
        self.limit = widgets.BoundedIntText(
            value=limit,
            min=1,
            max=MAX_PAGE_SIZE,
            description="page size",
            layout=widgets.Layout(width="270px"),
        )
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.live = widgets.ToggleButton(value=False, description="Live", icon="play")

    def _build_table_controls(self) -> None:
        """The grid, its pages, the cancel button and the selected tasks' details."""
        self.summary = widgets.HTML()
        self.grid = _grid(self._shown(self.frame))
        small = widgets.Layout(width="90px")
        self.first_button = widgets.Button(description="First", layout=small)
        self.previous_button = widgets.Button(description="Previous", layout=small)
        self.next_button = widgets.Button(description="Next", layout=small)
        self.last_button = widgets.Button(description="Last", layout=small)
        self.cancel_button = widgets.Button(
            description="Cancel selected", button_style="danger", icon="ban"
        )
        # A wall-clock time read in the inspector's zone, the one its times are shown in.
        self.move_to = widgets.NaiveDatetimePicker(description="move to")
        self.move_zone = widgets.HTML()
        self.move_button = widgets.Button(description="Move selected", icon="clock-o")
        self.detail = widgets.HTML()

    def _observe_controls(self) -> None:
        """Refresh when a filter changes; act on the buttons, the selection and "Live"."""
        guard = self.feedback.guard
        filters = (self.states, self.task, self.label, self.after, self.before, self.tz, self.limit)
        for control in filters:
            control.observe(guard(lambda _: self.refresh()), names="value")
        self.refresh_button.on_click(guard(lambda _: self.refresh(recount=True)))
        self.first_button.on_click(guard(lambda _: self.go_to(0)))
        self.previous_button.on_click(guard(lambda _: self.go_to(self.page_number - 1)))
        self.next_button.on_click(guard(lambda _: self.go_to(self.page_number + 1)))
        self.last_button.on_click(guard(lambda _: self.last_page()))
        self.cancel_button.on_click(guard(lambda _: self.cancel_selected()))
        self.move_button.on_click(guard(lambda _: self.move_selected()))
        self.tz.observe(lambda _: self._show_move_zone(), names="value")
        self._show_move_zone()
        self.grid.observe(guard(lambda _: self.show_detail()), names="selected_rows")
        self.live.observe(guard(self._toggle_live), names="value")

    def _layout(self) -> list[widgets.Widget]:
        """Filters across the top, then the page bar, the grid, and the selection's details."""
        return [
            widgets.HBox(
                [
                    self.states,
                    widgets.VBox([self.task, self.label, self.after, self.before]),
                    widgets.VBox([self.tz, self.limit, self.refresh_button, self.live]),
                ],
                # Narrower still (a side panel open): the columns wrap instead of overlapping.
                layout=widgets.Layout(flex_flow="row wrap"),
            ),
            widgets.HBox(
                [
                    self.first_button,
                    self.previous_button,
                    self.next_button,
                    self.last_button,
                    self.summary,
                ]
            ),
            self.grid,
            widgets.HBox([self.cancel_button, self.move_to, self.move_zone, self.move_button]),
            self.feedback.message,
            self.detail,
            self.feedback.out,
        ]

    # -- reading ----------------------------------------------------------------------------

    def filters(self) -> dict[str, Any]:
        """The filter controls as keyword arguments of :meth:`schedkit.Client.tasks_page`."""
        place = zone(self.tz.value.strip(), field="time zone")
        return {
            "states": list(self.states.value),
            "task": self.task.value or "",
            "labels": parse_labels(self.label.value, field="labels filter"),
            "run_after": instant(self.after.value, place, "from"),
            "run_before": instant(self.before.value, place, "to"),
        }

    @property
    def total(self) -> int | None:
        """How many tasks match the filters (None until counted)."""
        return self.pager.total

    @property
    def selected(self) -> list[str]:
        """The ids of the tasks selected in the grid, in the order shown on the page."""
        with self._lock:  # the grid's rows and ``frame`` change together, under the lock
            frame = self.frame
            rows = sorted(r for r in self.grid.selected_rows if 0 <= r < len(frame))
            return [str(frame["id"].iat[r]) for r in rows]

    def select(self, ids: list[str] | tuple[str, ...]) -> None:
        """Select these tasks in the grid (those on the page shown)."""
        wanted = set(ids)
        with self._lock:
            self.grid.selected_rows = [i for i, v in enumerate(self.frame["id"]) if v in wanted]

    def refresh(self, recount: bool | None = None) -> pd.DataFrame:
        """Read the page shown again (after a filter change: the first page) and redraw;
        return it. ``recount``: count the matches again (default: when the filters changed,
        or while there are at most :data:`LIVE_RECOUNT`)."""
        with self._lock:
            filters = self.filters()
            changed = filters != self._filters or self.limit.value != self.pager.page_size
            if changed:
                self.pager.reset(filters, page_size=self.limit.value)
                self._filters, self.page_number = filters, 0
            self._read_page(self.page_number)
            counting = self._count_thread is not None and self._count_thread.is_alive()
            small = (self.pager.total or 0) <= LIVE_RECOUNT
            if recount or changed or (recount is None and not counting and small):
                self._start_count(filters)
        self.feedback.clear_error()  # the filters are valid again: an old error is stale
        return self.frame

    def wait_counted(self, timeout: float | None = 30.0) -> bool:
        """Block until the latest count of the matches is shown (for tests and scripts)."""
        return self.counted.wait(timeout)

    def _start_count(self, filters: dict[str, Any]) -> None:
        self._count_generation += 1
        generation, size = self._count_generation, self.pager.page_size
        self.counted.clear()

        def stale() -> bool:
            return generation != self._count_generation

        def run() -> None:
            counter = Pager(self.client, page_size=size, filters=filters)
            try:
                if counter.count(stop=stale) is None:
                    return
            except Exception as exc:  # shown in the widget, as a refresh's error would be
                if not stale():
                    self.feedback.error(exc)
                return
            with self._lock:
                if stale():
                    return
                self.pager.adopt(counter)
                self._summarise(self.frame)
            self.counted.set()

        self._count_thread = threading.Thread(target=run, name="schedkit-count", daemon=True)
        self._count_thread.start()

    def go_to(self, number: int) -> pd.DataFrame:
        """Show grid page ``number`` (from 0; clamped to the pages there are)."""
        with self._lock:
            self._read_page(max(number, 0))
        return self.frame

    def last_page(self) -> pd.DataFrame:
        """Show the last page (counting first if the end is not known yet)."""
        if self.pager.pages is None:
            self.wait_counted(timeout=None if self.running else 120.0)
        with self._lock:
            if self.pager.pages is None:  # the count failed or was abandoned: count here
                self.pager.count()
            return self.go_to((self.pager.pages or 1) - 1)

    def wait_refreshed(self, after: int, timeout: float = 10.0) -> bool:
        """Block until the grid was redrawn more than ``after`` times (for tests and scripts)."""
        with self.refreshed:
            return self.refreshed.wait_for(lambda: self.refresh_count > after, timeout=timeout)

    def _read_page(self, number: int) -> None:
        records, self.page_number = self.pager.page(number)
        frame = tasks_frame(records, tz=zone(self.tz.value.strip()))
        keep = self.selected
        self._draw(frame, keep, (repr(self._filters), self.pager.page_size, self.page_number))
        # Published only once drawn: whoever reads ``frame`` finds the grid showing it.
        self.frame = frame
        self.show_detail()  # the selected tasks may have changed state
        with self.refreshed:
            self.refresh_count += 1
            self.refreshed.notify_all()

    @staticmethod
    def _shown(frame: pd.DataFrame) -> pd.DataFrame:
        """The grid's columns: text, times with their zone, so every column sorts as read."""
        return pd.DataFrame(
            {
                "state": frame["state"],
                "task": frame["task"],
                "run_at": [fmt_time(t) for t in frame["run_at"]],
                "labels": [
                    ", ".join(f"{k}={v}" for k, v in labels.items()) for labels in frame["labels"]
                ],
                "id": frame["id"],
                "lateness": [fmt_duration(t) for t in frame["lateness"]],
                "result or error": [
                    error or result
                    for result, error in zip(frame["result"], frame["error"], strict=True)
                ],
            },
            columns=list(TABLE_COLUMNS),
            dtype=object,  # text only, also when empty: every column sorts as it reads
        ).reset_index(drop=True)

    def _draw(self, frame: pd.DataFrame, keep: list[str], view_of: tuple[str, int, int]) -> None:
        shown = self._shown(frame)
        previous = self.grid.df
        if previous is None or not shown.equals(previous):
            if view_of != self._view_of:
                self.view += 1
            # A page that changed is sent again (the grid is redrawn); its selection is kept
            # by task id, so a task that moved keeps being selected. One message: the new
            # table is built with the new selection, not the old rows' for a moment.
            wanted = set(keep)
            rows = [i for i, v in enumerate(frame["id"]) if v in wanted]
            with self.grid.hold_sync():
                self.grid.update(shown, selected_rows=rows, **grid_options(self.view))
        # Rows not sent again (the same rows under other filters, say) stay the view the
        # browser shows, its scroll and sort kept.
        self._view_of = view_of
        self._summarise(frame)

    def _summarise(self, frame: pd.DataFrame) -> None:
        pager, size = self.pager, self.pager.page_size
        first = self.page_number * size + 1
        total = pager.total
        of = f"of {total:,} " if total is not None else ""
        counting = "" if total is not None else " (counting the matches…)"
        pages = f"page {self.page_number + 1:,} of {pager.pages:,}" if pager.pages else ""
        counts = frame["state"].value_counts()
        states = ", ".join(f"{n} {s}" for s, n in counts.items())
        if len(frame):
            rows = f"rows {first:,} to {first + len(frame) - 1:,}"
            self.summary.value = (
                f"<b>{len(frame):,} {of}shown</b>{counting} ({rows}"
                f"{'; ' + pages if pages else ''}): {html.escape(states)}"
            )
        else:
            self.summary.value = "<i>no task matches the filters</i>"
        last = pager.pages is not None and self.page_number >= pager.pages - 1
        self.first_button.disabled = self.previous_button.disabled = self.page_number == 0
        self.next_button.disabled = self.last_button.disabled = last

    def show_detail(self) -> None:
        """Show the selected tasks in full: arguments, times, result, error, traceback."""
        ids = self.selected
        if not ids:
            self.detail.value = ""
            return
        blocks = [self._detail_of(task_id) for task_id in ids[:DETAILS_SHOWN]]
        more = len(ids) - DETAILS_SHOWN
        if more > 0:
            blocks.append(f"<i>and {more} more selected</i>")
        self.detail.value = TABLE_STYLE + "".join(blocks)

    def _detail_of(self, task_id: str) -> str:
        found = self.frame[self.frame["id"] == task_id] if len(self.frame) else self.frame
        if not len(found):  # gone from the page since it was selected: ask the server
            found = tasks_frame([self.client.get(task_id)], tz=zone(self.tz.value.strip()))
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
        return (
            f"<div style='display:inline-block;vertical-align:top;margin:0 12px 8px 0'>"
            f"<table class='schedkit-table'>{body}</table>{trace}</div>"
        )

    def _show_move_zone(self) -> None:
        """Say which zone the "move to" time is read in (the one the grid shows)."""
        name = self.tz.value.strip()
        self.move_zone.value = (
            f"<i>in {html.escape(name)}</i>" if name else error_html("no time zone: pick one")
        )

    def timeline(self, **options: Any) -> Any:
        """The page shown as a :func:`~schedkit.notebook.timeline.timeline` Figure, its window
        the from/to filter when set (so an outlier does not set it), in the chosen zone."""
        from schedkit.notebook.timeline import timeline

        filters = self._filters or self.filters()
        options.setdefault("window", (filters["run_after"], filters["run_before"]))
        options.setdefault("tz", zone(self.tz.value.strip()))
        return timeline(self.frame, **options)

    # -- acting -----------------------------------------------------------------------------

    def cancel_selected(self) -> list[str]:
        """Cancel every selected task; return the ids cancelled, show those refused and why."""
        return self._act_on_selected("cancel", self.client.cancel)

    def move_selected(self, to: datetime | None = None) -> list[str]:
        """Move every selected task to run at ``to`` (default: the "move to" input, a
        wall-clock time in the inspector's zone); return the ids moved, show those refused
        (already handed off, say) and why. The others are moved all the same."""
        if not self.selected:
            self.feedback.message.value = error_html("select the tasks to move first")
            return []
        value = self.move_to.value if to is None else to
        if value is None:
            raise InvalidArgument.for_field("move to", "pick the time to move the tasks to")
        name = self.tz.value.strip()
        if not name and value.tzinfo is None:
            # A wall-clock time without a zone is refused, as everywhere in the kit: it is
            # not read as UTC.
            raise InvalidArgument.for_field(
                "move to", f"{value.isoformat()} has no time zone: pick one (UTC, if meant)"
            )
        when = to_instant(value, tz=name or None, field="move to")
        shown = fmt_time(pd.Timestamp(when).tz_convert(zone(name)))
        return self._act_on_selected(
            "move", lambda task_id: self.client.update_task(task_id, run_at=when), f"to {shown}"
        )

    def _act_on_selected(
        self, verb: str, action: Callable[[str], object], how: str = ""
    ) -> list[str]:
        """``action`` on each selected task, one refusal not stopping the others; the page is
        read again (keeping the selection) and the outcome shown, naming each refused task."""
        ids = self.selected
        if not ids:
            self.feedback.message.value = error_html(f"select the tasks to {verb} first")
            return []
        done: list[str] = []
        refused: list[str] = []
        for task_id in ids:
            try:
                action(task_id)
                done.append(task_id)
            except SchedkitError as exc:
                refused.append(f"{task_id}: {describe(exc)}")
        self.refresh(recount=True)
        past = {"cancel": "cancelled", "move": "moved"}.get(verb, verb + "d")
        said = f"{past} {len(done)}{' ' + how if how else ''}"
        if refused:
            self.feedback.message.value = error_html(
                f"{said}, refused {len(refused)}:\n" + "\n".join(refused)
            )
        else:
            self.feedback.ok(f"{said}: {', '.join(done)}")
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
        """Stop the live refresh and any count, then close the widgets."""
        self._count_generation += 1
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
