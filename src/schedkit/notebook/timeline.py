"""``timeline(frame)``: planned and actual runs on one time axis, coloured by state.

Two views of the same frame. With few runs (up to ``max_marks``), each run is drawn: its
planned time (a hollow circle), its start (a square), a bar to its finish and a dotted line
from plan to start (the lateness), one lane per task, state or label value. With more, one
mark per run would be a smear, so the figure becomes a density view: runs per time bucket,
stacked by state. Either way every state is drawn with one call (a collection), so 100,000
runs draw in well under a second (``scripts/bench/timeline.py`` measures it).

The window is the one asked for (the inspector passes its from/to filter); without one it
covers the bulk of the runs, and a run far from the others (a cancelled one a year away) is
counted in the title instead of squeezing the rest into a dot.
"""

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
#: Above this many runs in the window, the density view is drawn instead of one mark per run.
MAX_MARKS = 2000
#: Lanes beyond this many are folded into one "other" lane: a figure stays readable.
MAX_LANES = 30
#: Width in inches: at matplotlib's 100 dpi, about the width of a JupyterLab notebook cell;
#: the notebook scales the image down to fit a narrower one.
WIDTH = 11.0
_BUCKETS = 120


def timeline(
    frame: pd.DataFrame,
    *,
    tz: str | tzinfo | None = None,
    ax: Axes | None = None,
    title: str = "",
    now: datetime | None = None,
    lanes: str = "task",
    window: tuple[datetime | None, datetime | None] | None = None,
    density: bool | None = None,
    max_marks: int = MAX_MARKS,
    width: float = WIDTH,
) -> Figure:
    """Draw the runs of ``frame`` in zone ``tz`` (default: the zone of ``frame['run_at']``)
    and return the Figure; ``ax`` draws into existing axes instead of a new figure.

    ``lanes``: ``"task"``, ``"state"`` or ``"label:<name>"`` (one lane per value of that
    label). ``window``: (from, to), either end None for "from the runs"; without it the
    window covers the bulk of the runs and leaves far outliers out (counted in the title).
    ``density``: force (True) or forbid (False) the density view; by default it is drawn
    when more than ``max_marks`` runs fall in the window.

    ``frame`` is :meth:`schedkit.Client.tasks_frame` output, or any frame with ``task`` and
    ``run_at`` (``state``, ``labels``, ``started_at`` and ``finished_at`` are used when
    present).
    """
    try:
        import matplotlib.pyplot as plt
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
    planned = _numbers(frame, "run_at")
    low, high, outside = _window(planned, window)
    inside = ~np.isnan(planned) & (planned >= low) & (planned <= high)
    shown = frame[inside]
    states = _states(shown)
    dense = len(shown) > max_marks if density is None else density
    names = _lane_names(shown, lanes) if not dense else np.array([], dtype=object)
    order = _lane_order(names)

    if ax is None:
        height = 3.2 if dense else 1.3 + 0.32 * max(len(order), 1)
        figure, ax = plt.subplots(figsize=(width, height), layout="constrained")
        # Not kept by pyplot: the caller's figure shows once, where it is returned.
        plt.close(figure)
    else:
        figure = ax.get_figure()  # type: ignore[assignment]
    moment = _number(pd.Timestamp(now or pd.Timestamp.now(tz="UTC")))
    if dense:
        _draw_density(ax, planned[inside], states, low, high)
    else:
        _draw_runs(ax, shown, planned[inside], states, names, order, moment)
    _axis(ax, place, low, high)
    heading = title or f"{len(shown):,} run(s)" + (" per time bucket" if dense else "")
    if outside:
        heading += f" ({outside:,} outside the window not shown)"
    ax.set_title(heading, fontsize=10)
    return figure


# -- the two views -------------------------------------------------------------------------


def _draw_runs(
    ax: Axes,
    frame: pd.DataFrame,
    planned: npt.NDArray[np.float64],
    states: npt.NDArray[Any],
    names: npt.NDArray[Any],
    order: list[str],
    moment: float,
) -> None:
    """One mark per run: every state drawn with one call per kind of mark."""
    from matplotlib.lines import Line2D

    position = {name: n for n, name in enumerate(order)}
    lane = np.array([position[n] for n in names], dtype=np.float64)
    started = _numbers(frame, "started_at")
    finished = _numbers(frame, "finished_at")
    ran = ~np.isnan(started)
    finished = np.where(np.isnan(finished), np.maximum(moment, started), finished)
    for state in _present(states):
        colour = STATE_COLOURS.get(state, "#444444")
        mine = states == state
        ax.scatter(
            planned[mine], lane[mine], s=36, facecolors="white", edgecolors=colour,
            linewidths=1.5, zorder=3,
        )  # fmt: skip
        done = mine & ran
        if not done.any():
            continue
        # The lateness (plan to start, dotted) and the run (start to finish, a thick bar;
        # a run of milliseconds still gets a sliver through the square at its start).
        ax.hlines(lane[done], planned[done], started[done], colors=colour, lw=0.8, ls=":")
        ax.hlines(lane[done], started[done], finished[done], colors=colour, lw=6)
        ax.scatter(started[done], lane[done], s=20, marker="s", color=colour, zorder=3)
    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(max(len(order), 1) - 0.4, -0.6)  # first lane on top
    handles: list[Any] = [
        Line2D([], [], marker="s", ls="", color=STATE_COLOURS.get(s, "#444444"), label=s.lower())
        for s in _present(states)
    ]
    handles.append(Line2D([], [], marker="o", ls="", mfc="white", mec="#444", label="planned"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)


def _draw_density(
    ax: Axes, planned: npt.NDArray[np.float64], states: npt.NDArray[Any], low: float, high: float
) -> None:
    """Runs per time bucket, stacked by state (planned run times)."""
    edges = np.linspace(low, high if high > low else low + 1 / 24, _BUCKETS + 1)
    bottom = np.zeros(_BUCKETS)
    for state in _present(states):
        counts, _ = np.histogram(planned[states == state], bins=edges)
        ax.stairs(
            bottom + counts, edges, baseline=bottom, fill=True,
            color=STATE_COLOURS.get(state, "#444444"), label=state.lower(),
        )  # fmt: skip
        bottom = bottom + counts
    ax.set_ylabel(f"runs per {_bucket_text((edges[1] - edges[0]) * 86400)}")
    ax.set_ylim(0, max(float(bottom.max()), 1) * 1.05)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)


def _axis(ax: Axes, place: tzinfo, low: float, high: float) -> None:
    import matplotlib.dates as mdates

    pad = max((high - low) * 0.02, 1 / 86400)
    ax.set_xlim(low - pad, high + pad)
    ax.xaxis.set_major_locator(locator := mdates.AutoDateLocator(tz=place))
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=place))
    ax.set_xlabel(f"time ({place})")
    ax.grid(axis="x", alpha=0.3)


# -- what is drawn -------------------------------------------------------------------------


def _window(
    planned: npt.NDArray[np.float64], window: tuple[datetime | None, datetime | None] | None
) -> tuple[float, float, int]:
    """The window (as date numbers) and how many runs fall outside it.

    Without a window: the bulk of the runs, from a robust spread (the middle 90%) widened
    on each side by that spread. A run farther out than that is an outlier.
    """
    known = planned[~np.isnan(planned)]
    if not len(known):
        today = _number(pd.Timestamp.now(tz="UTC"))
        return today, today + 1 / 24, 0
    given_low, given_high = window or (None, None)
    if given_low is None or given_high is None:
        first, last = float(known.min()), float(known.max())
        q05, q95 = (float(v) for v in np.quantile(known, [0.05, 0.95]))
        spread = max(q95 - q05, 1 / 24)  # at least an hour, so a tight burst is not cut
        bulk_low, bulk_high = max(first, q05 - spread), min(last, q95 + spread)
    low = _number(pd.Timestamp(given_low)) if given_low is not None else bulk_low
    high = _number(pd.Timestamp(given_high)) if given_high is not None else bulk_high
    outside = int(((known < low) | (known > high)).sum())
    return low, high, outside


def _states(frame: pd.DataFrame) -> npt.NDArray[Any]:
    if "state" not in frame.columns:
        return np.full(len(frame), "SCHEDULED", dtype=object)
    return frame["state"].astype(str).to_numpy(dtype=object)


def _present(states: npt.NDArray[Any]) -> list[str]:
    """The states present, in the order of :data:`STATE_COLOURS` (unknown ones last)."""
    found = set(states.tolist())
    return [s for s in STATE_COLOURS if s in found] + sorted(found - set(STATE_COLOURS))


def _lane_names(frame: pd.DataFrame, lanes: str) -> npt.NDArray[Any]:
    """The lane of each run: its task, its state, or one of its labels."""
    if lanes in ("task", "state"):
        if lanes == "state":
            return _states(frame)
        return frame["task"].astype(str).to_numpy(dtype=object)
    name = lanes.removeprefix("label:")
    if not lanes.startswith("label:") or not name:
        raise InvalidArgument.for_field("lanes", "task, state or label:<name> (label:team)")
    if "labels" not in frame.columns:
        raise InvalidArgument.for_field("lanes", "lanes by label need a labels column")
    values = [
        str(labels.get(name, "(none)")) if isinstance(labels, dict) else "(none)"
        for labels in frame["labels"]
    ]
    return np.array(values, dtype=object)


def _lane_order(names: npt.NDArray[Any]) -> list[str]:
    """Lanes sorted by name; past :data:`MAX_LANES`, the smallest fold into "other"."""
    if not len(names):
        return []
    counts = pd.Series(names).value_counts()
    if len(counts) <= MAX_LANES:
        return sorted(counts.index)
    kept = set(counts.index[: MAX_LANES - 1])
    names[~np.isin(names, list(kept))] = "other"
    return [*sorted(kept), "other"]


def _numbers(frame: pd.DataFrame, column: str) -> npt.NDArray[np.float64]:
    """A time column as matplotlib date numbers (days since 1970), NaN where missing."""
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    values = pd.to_datetime(frame[column], utc=True)
    micros = values.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.float64)
    micros[values.isna().to_numpy()] = np.nan
    return micros / 86_400e6


def _number(moment: pd.Timestamp) -> float:
    stamp = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return float(stamp.value / 86_400e9)


def _bucket_text(seconds: float) -> str:
    for size, unit in ((86400, "day"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _zone_of(values: pd.Series) -> tzinfo:
    found = getattr(values.dt, "tz", None) if hasattr(values, "dt") else None
    return zone(found if found is not None else "UTC")
