"""Timeline: ``schedkit.notebook.timeline`` over 100,000 runs, drawn to a PNG, against what a
user would draw instead in the same run (one matplotlib scatter per state of every run).

    .venv/bin/python scripts/bench/timeline.py [--runs 100000] [--repeat 3]

Prints the median seconds of each and their ratio; the target is under 2 s for schedkit.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from common import load, machine

from schedkit.notebook import timeline
from schedkit.notebook.timeline import STATE_COLOURS

STATES = ["SUCCEEDED", "FAILED", "SCHEDULED", "CANCELLED", "QUEUED"]


def frame_of(runs: int) -> pd.DataFrame:
    """``runs`` runs over a day, as Client.tasks_frame returns them (the columns drawn)."""
    rng = np.random.default_rng(7)
    run_at = pd.Timestamp("2026-06-01", tz="Europe/Paris") + pd.to_timedelta(
        np.sort(rng.uniform(0, 86400, runs)), unit="s"
    )
    started = run_at + pd.to_timedelta(rng.uniform(0, 0.05, runs), unit="s")
    return pd.DataFrame(
        {
            "task": [f"task_{i % 12}" for i in range(runs)],
            "state": [STATES[i % len(STATES)] for i in range(runs)],
            "run_at": run_at,
            "started_at": started,
            "finished_at": started + pd.Timedelta(seconds=1),
        }
    )


def schedkit_timeline(frame: pd.DataFrame) -> float:
    began = time.perf_counter()
    figure = timeline(frame)
    figure.savefig(io.BytesIO(), format="png")
    return time.perf_counter() - began


def plain_scatter(frame: pd.DataFrame) -> float:
    """What a user would do: every run as a point, one scatter call per state."""
    began = time.perf_counter()
    figure, ax = plt.subplots(figsize=(11, 4))
    for state, rows in frame.groupby("state"):
        ax.scatter(rows["run_at"], rows["task"], s=4, color=STATE_COLOURS[str(state)])
    figure.savefig(io.BytesIO(), format="png")
    plt.close(figure)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    print(f"load before: {load()}")
    frame = frame_of(args.runs)
    schedkit_timeline(frame.head(100))  # imports and font caches, not measured
    ours = statistics.median(schedkit_timeline(frame) for _ in range(args.repeat))
    theirs = statistics.median(plain_scatter(frame) for _ in range(args.repeat))
    print(f"{args.runs:,} runs, median of {args.repeat}, draw + PNG:")
    print(f"  schedkit timeline()           {ours:7.3f} s   (target < 2 s)")
    print(f"  one scatter per state          {theirs:7.3f} s")
    print(f"  ratio (scatter / timeline)     {theirs / ours:7.2f}x")
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
