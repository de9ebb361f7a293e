"""The notebook kit in JupyterLab, in a real browser: Debian's chromium via Playwright.

A person's path through a notebook of 1,000 tasks: the inspector says "200 of 1,000 shown",
its grid sorts by a column when the header is clicked, three rows selected in the grid are
cancelled with the button (and are CANCELLED in the store), "Last" pages to the last of the
1,000. A naive time without a zone is refused both by ``schedule_frame`` (its result's
problems, shown in the notebook) and by the builder's form. Screenshots go to
test-artifacts/; with SCHEDKIT_UPDATE_DOCS_IMAGES=1 they also replace the pictures under
docs/img/ that the README shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import nbformat
import pytest
from playwright.sync_api import Locator, Page, expect

from browser_kit import browser_page, save, wait_http
from conftest import ARTIFACTS, FAST
from schedkit.model import TaskSpec
from schedkit.runtime.embedded import free_port
from schedkit.testing import LocalStack, local_stack

TASKS = 1000
#: The notebook the test opens, cell by cell (what a user would type).
CELLS = [
    "import os\n"
    "import pandas as pd\n"
    "from schedkit import Client\n"
    "from schedkit.notebook import ScheduleBuilder, ScheduleInspector\n"
    'client = Client.connect(os.environ["SCHEDKIT_SERVER"])',
    'inspector = ScheduleInspector(client, tz="Europe/Paris", limit=200, live=False)\n'
    'inspector.label.value = "lab=inspector"\n'
    "inspector",
    "# A naive time meant for Paris, no zone given: refused, not read as UTC.\n"
    "frame = pd.DataFrame({\n"
    '    "task": ["add", "add"],\n'
    '    "run_at": ["2099-03-01 09:00", "2099-03-01T09:00:00+01:00"],\n'
    '    "args": ["[1, 2]", "[3, 4]"],\n'
    '    "labels": \'{"lab": "frame"}\',\n'
    "})\n"
    "result = client.schedule_frame(frame)\n"
    "result.problems",
    "ScheduleBuilder(client)",
]


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of this test's own, so the inspector shows only the tasks made here."""
    with local_stack(data_dir=tmp_path_factory.mktemp("lab-stack"), **FAST) as running:
        yield running


@pytest.fixture(scope="module")
def lab(own_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """JupyterLab on a free localhost port over a folder holding the test's notebook; the
    notebook's URL. Settings, workspaces and runtime files stay in the test's folders."""
    root = tmp_path_factory.mktemp("lab")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(notebook, root / "tasks.ipynb")
    settings = tmp_path_factory.mktemp("lab-settings")
    # Every cell rendered, not only those in view (JupyterLab 4 windows long notebooks).
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    env = {
        **os.environ,
        "SCHEDKIT_SERVER": own_stack.address,
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_RUNTIME_DIR": str(tmp_path_factory.mktemp("lab-runtime")),
    }
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={tmp_path_factory.mktemp('lab-workspaces')}",
        # No look-ups of extensions on a package index from a test.
        "--LabApp.extension_manager=readonly",
        "--ServerApp.allow_root=True",  # CI runs as root
    ]
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "jupyterlab.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_http(url, process, timeout=90.0, name="jupyterlab")
            yield f"{url}lab/tree/tasks.ipynb"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    yield from browser_page("jupyterlab")


def _run_all_cells(page: Page) -> None:
    """Run > Run All Cells, once the kernel is idle; again if the first click came before
    the menu item was enabled (the notebook and its kernel start separately)."""
    expect(page.locator(".jp-StatusBar-TextItem", has_text="Idle").first).to_be_visible(
        timeout=90_000
    )
    first_prompt = page.locator(".jp-Notebook .jp-CodeCell").first.locator(".jp-InputPrompt")
    for _ in range(5):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel").filter(
            has_text="Run All Cells"
        ).first.click()
        try:
            expect(first_prompt).not_to_have_text("[ ]:", timeout=15_000)
            return
        except AssertionError:
            page.keyboard.press("Escape")  # a menu left open
    pytest.fail("JupyterLab never ran the notebook's cells")


def _cell_output(page: Page, number: int) -> Locator:
    """The output area of code cell ``number`` (from 0)."""
    return page.locator(".jp-Notebook .jp-CodeCell").nth(number).locator(".jp-OutputArea")


@pytest.mark.timeout(420)
def test_jupyterlab_sorts_selects_cancels_pages_and_refuses_naive_times(
    own_stack: LocalStack, lab: str, page: Page
) -> None:
    with own_stack.client() as client:
        start = datetime.now(UTC) + timedelta(days=1)
        specs = [
            TaskSpec(
                "add" if i % 2 else "water_plants",
                start + timedelta(minutes=i),
                [i, 1] if i % 2 else [f"plant-{i}"],
                labels={"lab": "inspector"},
            )
            for i in range(TASKS)
        ]
        ids = [r.id for r in client.schedule_many(specs)]

        page.goto(lab, timeout=120_000)
        expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(len(CELLS), timeout=90_000)
        _run_all_cells(page)

        inspector = _cell_output(page, 1).locator(".schedkit-inspector")
        summary = inspector.locator(".schedkit-summary")
        expect(summary).to_contain_text("200 of 1,000 shown", timeout=120_000)
        expect(summary).to_contain_text("page 1 of 5")
        grid = inspector.locator(".schedkit-grid")
        rows = grid.locator(".dt-scroll-body tbody tr")
        expect(rows).to_have_count(200)
        first_task = rows.first.locator("td").nth(1)
        expect(first_task).to_have_text("water_plants")  # by run time: task 0 first

        # Sort by the task column: ascending, then descending, in the grid.
        header = grid.locator(".dt-scroll-head th", has_text="task")
        header.click()
        expect(first_task).to_have_text("add")
        header.click()
        expect(first_task).to_have_text("water_plants")
        header.click()  # and back to the page's own order (run time)
        save(page, inspector, "lab-inspector.png")

        # Three rows selected in the grid, cancelled with the button.
        chosen = [rows.nth(n).locator("td").nth(4).inner_text() for n in (1, 2, 4)]
        for n in (1, 2, 4):
            rows.nth(n).click()
        expect(grid.locator("tbody tr.selected")).to_have_count(3)
        detail = inspector.locator(".schedkit-detail")
        for task_id in chosen:
            expect(detail).to_contain_text(task_id)
        inspector.locator(".schedkit-cancel").click()
        expect(inspector).to_contain_text("cancelled 3:", timeout=30_000)
        for task_id in chosen:
            assert client.get(task_id).state == "CANCELLED"
        assert sum(client.get(i).state == "CANCELLED" for i in ids[:10]) == 3
        expect(grid.locator("tbody tr", has_text="CANCELLED")).to_have_count(3)
        save(page, inspector, "lab-cancelled.png")

        # Page to the last of the 1,000.
        inspector.locator(".schedkit-last").click()
        expect(summary).to_contain_text("rows 801 to 1,000", timeout=30_000)
        expect(summary).to_contain_text("page 5 of 5")
        expect(grid).to_contain_text(ids[-1])
        expect(rows).to_have_count(200)

        # schedule_frame: the naive row is a problem, with its hint; the other was created.
        problems = _cell_output(page, 2)
        expect(problems).to_contain_text("has no time zone", timeout=30_000)
        expect(problems).to_contain_text("invalid")
        expect(problems).to_contain_text("2099-03-01 09:00")  # as written, not NaT
        made = client.tasks_frame(labels={"lab": "frame"})
        assert list(made["args"]) == [[3, 4]]
        save(page, problems, "lab-schedule-frame.png")

        # The builder: no zone picked, so its naive run time is refused.
        builder = _cell_output(page, 3).locator(".schedkit-builder")
        expect(builder.locator(".schedkit-when")).to_contain_text("pick the time zone")
        builder.locator(".schedkit-task select").select_option(label="add")
        builder.locator(".schedkit-args input").fill("[1, 2]")
        builder.locator(".schedkit-args input").press("Enter")
        expect(builder).to_contain_text("arguments fit the task")
        builder.locator(".schedkit-add").click()
        expect(builder).to_contain_text("time zone: required: the run time has no zone")
        builder.locator(".schedkit-tz input").fill("Paris")
        builder.locator(".schedkit-tz input").press("Enter")
        expect(builder.locator(".schedkit-when")).to_contain_text("did you mean Europe/Paris?")
        save(page, builder, "lab-builder.png")
