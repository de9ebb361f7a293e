"""The README's tour, run as written against a real stack: every command and code block."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import FAST
from schedkit.settings import Settings
from schedkit.testing import LocalStack, local_stack

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# buf from the buf-bin package of the dev extra, beside this interpreter in .venv/bin.
BUF = Path(sys.executable).parent / "buf"
DEFAULT_ADDRESS = "127.0.0.1:50051"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


TOUR = README.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]


def blocks(language: str) -> list[str]:
    """The tour's code blocks in ``language``, in order."""
    return [body for lang, body in BLOCK.findall(TOUR) if lang == language]


def tour_commands() -> list[str]:
    """The tour's shell blocks: each talks to the server."""
    return blocks("sh")


def run_shell(block: str, stack: LocalStack, cwd: Path) -> str:
    script = (
        block.replace(DEFAULT_ADDRESS, stack.address)
        .replace(".venv/bin/buf", str(BUF))
        .replace(".venv/bin/python", sys.executable)
        .replace("examples/", f"{ROOT}/examples/")
    )
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def tour_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of the tour's own: the README assumes a fresh one (its example keys are fixed)."""
    with local_stack(data_dir=tmp_path_factory.mktemp("tour"), **FAST) as running:
        yield running


def test_the_readme_has_a_tour_to_run() -> None:
    assert len(tour_commands()) >= 4
    assert len(blocks("python")) >= 3
    first_screen = README.split("\n## ")[0]
    assert "scripts/up" in first_screen
    assert "scripts/test" in first_screen


@pytest.mark.skipif(not BUF.exists(), reason="buf comes with the dev extra (scripts/bootstrap)")
def test_buf_curl_tour_runs_as_written(tour_stack: LocalStack, tmp_path: Path) -> None:
    listed, scheduled, cancelled, timetable = tour_commands()
    types = json.loads(run_shell(listed, tour_stack, tmp_path))
    assert "water_plants" in {t["name"] for t in types["taskTypes"]}
    first = json.loads(run_shell(scheduled, tour_stack, tmp_path))
    second = json.loads(run_shell(scheduled, tour_stack, tmp_path))
    assert first["task"]["id"] == second["task"]["id"]
    assert second["outcome"] == "SCHEDULE_OUTCOME_EXISTING"
    gone = json.loads(run_shell(cancelled, tour_stack, tmp_path))
    assert gone["task"]["state"] == "TASK_STATE_CANCELLED"
    assert gone["task"]["spec"]["labels"] == {"team": "garden"}
    summary = run_shell(timetable, tour_stack, tmp_path)
    assert "rejected" in summary


def test_python_tour_runs_as_written(tour_stack: LocalStack) -> None:
    source = "\n".join(blocks("python")).replace(DEFAULT_ADDRESS, tour_stack.address)
    namespace: dict[str, object] = {"__name__": "readme"}
    try:
        exec(compile(source, "README.md", "exec"), namespace)
    finally:
        client = namespace.get("client")
        if client is not None:
            client.close()  # type: ignore[attr-defined]


def test_configuration_table_lists_every_setting() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `SCHEDKIT_(\w+)`", table, re.M))
    assert documented == {f.name.upper() for f in fields(Settings)}
