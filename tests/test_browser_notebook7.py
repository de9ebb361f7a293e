"""The inspector in Jupyter Notebook 7 (the ``notebook`` package), in a real browser: Debian's
chromium via Playwright.

Notebook 7 is one of the front ends the grid was chosen for (with JupyterLab, VS Code and
Voila): its widget manager must render itables' anywidget and the core widgets around it.
A notebook of 450 tasks: the grid shows its first page of 200 rows, "Next" and "Last" reach
the others, and a row clicked in the grid reaches the kernel (its details show below).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Page, expect

from browser_kit import browser_page, cell_output, jupyter, run_all_cells, save, write_notebook
from conftest import FAST
from schedkit.model import TaskSpec
from schedkit.testing import LocalStack, local_stack

TASKS = 450
CELLS = [
    "import os\n"
    "from schedkit import Client\n"
    "from schedkit.notebook import ScheduleInspector\n"
    'client = Client.connect(os.environ["SCHEDKIT_SERVER"])',
    'inspector = ScheduleInspector(client, tz="Europe/Paris", live=False)\ninspector',
]


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of this test's own, so the inspector shows only the tasks made here."""
    with local_stack(data_dir=tmp_path_factory.mktemp("notebook7-stack"), **FAST) as running:
        yield running


@pytest.fixture(scope="module")
def notebook7(own_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Jupyter Notebook 7 on a free localhost port over the test's notebook; its URL."""
    root = tmp_path_factory.mktemp("notebook7")
    write_notebook(root, "tasks.ipynb", CELLS)
    env = {"SCHEDKIT_SERVER": own_stack.address}
    with jupyter("notebook", root, tmp_path_factory, env) as url:
        yield f"{url}notebooks/tasks.ipynb"


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    yield from browser_page("notebook7")


@pytest.mark.timeout(300)
def test_notebook7_renders_the_grid_and_pages_through_it(
    own_stack: LocalStack, notebook7: str, page: Page
) -> None:
    with own_stack.client() as client:
        start = datetime.now(UTC) + timedelta(days=1)
        specs = [TaskSpec("add", start + timedelta(minutes=i), [i, 1]) for i in range(TASKS)]
        ids = [r.id for r in client.schedule_many(specs)]

        page.goto(notebook7, timeout=120_000)
        # Notebook 7's page, not JupyterLab's: its own shell around the notebook.
        expect(page.locator("#main-panel .jp-NotebookPanel")).to_be_visible(timeout=90_000)
        expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(len(CELLS))
        run_all_cells(page, page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]'))

        inspector = cell_output(page, 1).locator(".schedkit-inspector")
        summary = inspector.locator(".schedkit-summary")
        expect(summary).to_contain_text("200 of 450 shown", timeout=120_000)
        expect(summary).to_contain_text("page 1 of 3")
        grid = inspector.locator(".schedkit-grid")
        rows = grid.locator(".dt-scroll-body tbody tr")
        expect(rows).to_have_count(200)
        expect(rows.first).to_contain_text(ids[0])
        expect(grid.locator(".dt-scroll-head th", has_text="run_at")).to_be_visible()
        save(page, inspector, "notebook7-inspector.png")

        inspector.locator(".schedkit-next").click()
        expect(summary).to_contain_text("rows 201 to 400", timeout=30_000)
        expect(rows.first).to_contain_text(ids[200])
        inspector.locator(".schedkit-last").click()
        expect(summary).to_contain_text("rows 401 to 450", timeout=30_000)
        expect(summary).to_contain_text("page 3 of 3")
        expect(rows).to_have_count(TASKS - 400)
        expect(rows.last).to_contain_text(ids[-1])

        # A row clicked in the grid is selected in the kernel: its details show below.
        rows.nth(3).click()
        expect(inspector.locator(".schedkit-detail")).to_contain_text(ids[403], timeout=20_000)
        expect(inspector.locator(".schedkit-detail")).to_contain_text("[403, 1]")
