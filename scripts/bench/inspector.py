"""Inspector: ``ScheduleInspector`` over 100,000 matching tasks, against what a user would do
instead in the same run (read every match with ``Client.tasks_frame`` and show it as a table,
which is what the inspector did before it paged).

    .venv/bin/python scripts/bench/inspector.py [--tasks 100000]

Prints seconds to the first page, to the exact count (counted in a thread), to the last
page, the bytes the browser receives for one page against the whole table, and their ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta

from common import load, machine

from schedkit.model import TaskSpec
from schedkit.notebook import ScheduleInspector
from schedkit.notebook._common import html_table
from schedkit.testing import local_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    print(machine())
    print(f"load before: {load()}")
    with local_stack(worker=False) as stack, stack.client() as client:
        start = datetime.now(UTC) + timedelta(days=1)
        labels = {"bench": "inspector"}
        specs = (
            TaskSpec("add", start + timedelta(seconds=i), [i, 1], labels=labels)
            for i in range(args.tasks)
        )
        for result in client.schedule_many(specs):
            assert result.error is None, result.error

        inspector = ScheduleInspector(client, live=False)
        assert inspector.wait_counted(timeout=300)
        began = time.perf_counter()
        inspector.label.value = "bench=inspector"  # a label filter: the slower listing
        first = time.perf_counter() - began
        assert inspector.wait_counted(timeout=300)
        counted = time.perf_counter() - began
        assert inspector.total == args.tasks, inspector.total
        began = time.perf_counter()
        inspector.last_page()
        last = time.perf_counter() - began
        page_bytes = len(json.dumps(inspector.grid._dt_args))
        inspector.close()

        began = time.perf_counter()
        everything = client.tasks_frame(labels=labels)
        table = html_table(everything, "")
        whole = time.perf_counter() - began
    print(f"{args.tasks:,} matching tasks:")
    print(f"  inspector: first page shown           {first:7.2f} s")
    print(f"  inspector: the count shown            {counted:7.2f} s")
    print(f"  inspector: then the last page         {last:7.2f} s")
    print(f"  tasks_frame of all, as one table      {whole:7.2f} s")
    print(f"  ratio (all / first page)              {whole / first:7.2f}x")
    print(
        f"  browser receives: one page {page_bytes / 1e3:,.0f} kB, whole table "
        f"{len(table) / 1e6:,.1f} MB ({len(table) / page_bytes:,.0f}x)"
    )
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
