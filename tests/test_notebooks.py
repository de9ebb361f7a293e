"""The notebooks under notebooks/ run top to bottom in a real kernel with no error.

Their own cells assert what they show (tasks created, run, cancelled), so a notebook that
runs without error also did what its text says. Executed copies go to test-artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ARTIFACTS
from schedkit.testing import LocalStack

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str) -> nbformat.NotebookNode:
    """Run notebooks/<name> in a fresh python3 kernel; save the executed copy."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    ).execute()
    ARTIFACTS.mkdir(exist_ok=True)
    nbformat.write(notebook, ARTIFACTS / f"executed-{name}")
    return notebook


@pytest.fixture(autouse=True)
def _quiet_jupyter(monkeypatch: pytest.MonkeyPatch) -> None:
    # Jupyter's own deprecation notice about its config paths; the suite runs warnings-as-errors.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")


def test_quickstart_starts_its_own_stack_and_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEDKIT_SERVER", raising=False)
    notebook = execute("quickstart.ipynb")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    texts = "".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "watered rose with 2 l" in texts  # the task ran and its result came back
    assert "CANCELLED" in texts  # the second task was cancelled from the inspector


def test_pandas_notebook_against_a_running_server(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDKIT_SERVER", stack.address)
    notebook = execute("pandas.ipynb")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the timeline of the runs, and the density view of 10,000
    shown = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "has no time zone" in shown  # the naive times refused, whole, in result.problems
    assert "2099-03-29 03:30:00+02:00" in shown  # 02:30 in the DST gap, shifted on request


def test_schedules_notebook_creates_pauses_triggers_and_backfills(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDKIT_SERVER", stack.address)
    notebook = execute("schedules.ipynb")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    texts = "".join(str(o.get("text", "")) for o in outputs)
    assert "True looking at the numbers" in texts  # paused with its note
    assert "created, already there: (5, 0) (0, 5)" in texts  # backfilled once
