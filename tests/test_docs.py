"""The docs say what the commands do: every flag of the scheduler has a row in its table."""

from __future__ import annotations

import re
from pathlib import Path

from schedkit.scheduler.cli import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_scheduler_flag_table_lists_every_flag() -> None:
    text = (DOCS / "scheduler.md").read_text()
    table = text.split("## Flags", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = {flag for row in rows for flag in re.findall(r"`(--?[\w-]+)", row.split("|")[1])}
    flags = {
        flag
        for action in build_parser()._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }
    assert flags - documented == set(), "flags missing from docs/scheduler.md"
    assert documented - flags == set(), "docs/scheduler.md lists flags the CLI does not have"
