"""``timeline(frame)``: planned and actual runs of tasks on one time axis, coloured by state."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from schedkit.errors import ConfigError, InvalidArgument
from schedkit.timeutil import zone

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: One colour per state (colour-blind friendly, after the Okabe-Ito palette).
STATE_COLOURS = {
    "SCHEDULED": "#999999",
    "QUEUED": "#56B4E9",
    "STARTED": "#E69F00",
    "RETRYING": "#F0E442",
    "SUCCEEDED": "#009E73",
    "FAILED": "#D55E00",
    "CANCELLED": "#000000",
    "EXPIRED": "#CC79A7",
}


def timeline(
    frame: pd.DataFrame,
    *,
    tz: str | tzinfo | None = None,
    ax: Axes | None = None,
    title: str = "",
    now: datetime | None = None,
) -> Figure:
    """Draw each task's planned run time (a hollow circle) and its actual run (a square at
    the start, a bar to the finish, a dotted line from plan to start: the lateness), one lane
    per task name, in zone ``tz`` (default: the zone of ``frame['run_at']``); return the
    Figure. ``ax`` draws into existing axes instead of a new figure.

    ``frame`` is :meth:`schedkit.Client.tasks_frame` output, or any frame with ``task`` and
    ``run_at`` (``state``, ``started_at`` and ``finished_at`` are used when present).
    """
    try:
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError as exc:
        raise ConfigError(
            "schedkit.notebook.timeline needs matplotlib: pip install 'schedkit[notebook]'"
        ) from exc
    for column in ("task", "run_at"):
        if column not in frame.columns:
            raise InvalidArgument.for_field(
                column, f"the frame needs a {column} column (Client.tasks_frame has one)"
            )
    place = zone(tz) if tz is not None else _zone_of(frame["run_at"])
    states = [str(s) for s in frame["state"]] if "state" in frame.columns else []
    states = states or ["SCHEDULED"] * len(frame)
    # matplotlib date numbers (days, float; NaN for a missing time) keep the drawing simple.
    planned = _numbers(frame, "run_at")
    started = _numbers(frame, "started_at")
    finished = _numbers(frame, "finished_at")
    moment = float(mdates.date2num(pd.Timestamp(now or pd.Timestamp.now(tz="UTC")).to_pydatetime()))
    lanes = {name: n for n, name in enumerate(sorted(frame["task"].astype(str).unique()))}

    if ax is None:
        figure, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * max(len(lanes), 1)))
        # Not kept by pyplot: the caller's figure shows once, where it is returned.
        plt.close(figure)
    else:
        figure = ax.get_figure()  # type: ignore[assignment]
    for row, task in enumerate(frame["task"].astype(str)):
        lane = lanes[task]
        colour = STATE_COLOURS.get(states[row], "#444444")
        plan, start, end = planned[row], started[row], finished[row]
        ax.plot([plan], [lane], "o", mfc="white", mec=colour, mew=1.5, ms=7, zorder=3)
        if np.isnan(start):
            continue
        if np.isnan(end):
            end = max(moment, start)
        ax.plot([plan, start], [lane, lane], color=colour, lw=0.8, ls=":", zorder=2)
        # A run of a few milliseconds still gets a visible sliver.
        ax.broken_barh([(start, max(end - start, 1e-6))], (lane - 0.2, 0.4), facecolors=colour)
        ax.plot([start], [lane], "s", color=colour, ms=5, zorder=3)  # visible at any zoom
    ax.set_yticks(list(lanes.values()), list(lanes))
    ax.set_ylim(max(len(lanes), 1) - 0.3, -0.7)  # first lane on top
    ax.xaxis.set_major_locator(locator := mdates.AutoDateLocator(tz=place))
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=place))
    ax.set_xlabel(f"time ({place})")
    ax.grid(axis="x", alpha=0.3)
    present = [s for s in STATE_COLOURS if s in set(states)]
    handles: list[Any] = [
        Line2D([], [], marker="s", ls="", color=STATE_COLOURS[s], label=s.lower()) for s in present
    ]
    handles.append(Line2D([], [], marker="o", ls="", mfc="white", mec="#444", label="planned"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title(title or f"{len(frame)} task(s)")
    figure.tight_layout()
    return figure


def _numbers(frame: pd.DataFrame, column: str) -> npt.NDArray[np.float64]:
    """A time column as matplotlib date numbers, NaN where missing or absent."""
    import matplotlib.dates as mdates

    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    naive = pd.to_datetime(frame[column], utc=True).dt.tz_localize(None).to_numpy()
    return np.asarray(mdates.date2num(naive), dtype=np.float64)


def _zone_of(values: pd.Series) -> tzinfo:
    found = getattr(values.dt, "tz", None) if hasattr(values, "dt") else None
    return zone(found if found is not None else "UTC")
