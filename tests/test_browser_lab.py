"""The notebook kit in JupyterLab, in a real browser: Debian's chromium via Playwright.

A person's path through a notebook of 1,000 tasks: the inspector says "200 of 1,000 shown",
its grid sorts by a column when the header is clicked, three rows selected in the grid are
cancelled with the button (and are CANCELLED in the store). With "Live" on, the reader
sorts, scrolls and selects; a task of the page changes state and the grid, drawn anew, keeps
the sort, the scroll offset and the selection. "Last" pages to the last of the 1,000, at the
top in run-time order. A naive time without a zone is refused both by ``schedule_frame``
(its result's problems, shown in the notebook) and by the builder's form. The Schedules tab
lists two schedules, shows one's next and recent runs, and pauses it. Screenshots go to
test-artifacts/; with SCHEDKIT_UPDATE_DOCS_IMAGES=1 they also replace the pictures under
docs/img/ that the README shows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from playwright.sync_api import Page, expect

from browser_kit import browser_page, cell_output, jupyter, run_all_cells, save, write_notebook
from conftest import FAST
from schedkit.model import TaskSpec
from schedkit.testing import LocalStack, local_stack

TASKS = 1000
GRID_BODY = ".schedkit-inspector .schedkit-grid .dt-scroll-body"
#: The indexes (in the order shown) of the grid's rows wholly in view in its scrolled body.
VISIBLE_ROWS = """body => {
  const box = body.getBoundingClientRect();
  return [...body.querySelectorAll("tbody tr")]
    .map((row, n) => [n, row.getBoundingClientRect()])
    .filter(([, r]) => r.top >= box.top && r.bottom <= box.bottom)
    .map(([n]) => n);
}"""
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
    notebook's URL."""
    root = tmp_path_factory.mktemp("lab")
    write_notebook(root, "tasks.ipynb", CELLS)
    env = {"SCHEDKIT_SERVER": own_stack.address}
    with jupyter("jupyterlab", root, tmp_path_factory, env) as url:
        yield f"{url}lab/tree/tasks.ipynb"


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    yield from browser_page("jupyterlab")


@pytest.mark.timeout(420)
def test_jupyterlab_sorts_selects_cancels_keeps_the_view_live_pages_and_refuses_naive_times(
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
        # Two server-side schedules for the Schedules tab, one of them run once already.
        garden = {"lab": "schedules"}
        client.create_schedule(
            "water-fern",
            "water_plants",
            args=["fern"],
            cron="0 8 * * mon-fri",
            tz="Europe/Paris",
            labels=garden,
        )
        client.create_schedule(
            "add-hourly", "add", args=[1, 2], every=timedelta(hours=1), labels=garden
        )
        ran = client.trigger("water-fern")
        client.wait_for(ran.id, ["SUCCEEDED"], timeout=30)

        page.goto(lab, timeout=120_000)
        expect(page.locator(".jp-Notebook .jp-CodeCell")).to_have_count(len(CELLS), timeout=90_000)
        run_all_cells(page, page.locator(".jp-StatusBar-TextItem", has_text="Idle"))

        inspector = cell_output(page, 1).locator(".schedkit-inspector")
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

        # Live: the reader sorts, scrolls down and selects two more rows; a task of the page
        # changes state, so the grid is drawn anew (a new DataTable), yet it keeps the sort,
        # the scroll offset and the selection.
        inspector.locator(".schedkit-live").click()
        header.click()
        header.click()
        expect(header).to_have_class(re.compile("dt-ordering-desc"))
        body = grid.locator(".dt-scroll-body")
        top = body.evaluate("b => { b.scrollTop = 1200; return b.scrollTop; }")
        assert top > 600, top
        in_view = body.evaluate(VISIBLE_ROWS)
        for n in in_view[2:5:2]:
            rows.nth(n).click()
        expect(grid.locator("tbody tr.selected")).to_have_count(5)
        selected = sorted(grid.locator("tbody tr.selected td:nth-child(5)").all_inner_texts())
        for task_id in selected:
            expect(detail).to_contain_text(task_id)
        shown = rows.nth(in_view[0]).locator("td").nth(4).inner_text()
        assert body.evaluate("b => b.scrollTop") == top  # the clicks did not scroll
        body.evaluate("b => { b.dataset.before = 'update'; }")
        changed = next(i for i in ids[5:20] if i not in selected)
        client.cancel(changed)
        expect(grid.locator("tbody tr", has_text=changed)).to_contain_text(
            "CANCELLED", timeout=30_000
        )
        expect(grid.locator(".dt-scroll-body[data-before]")).to_have_count(0)  # drawn anew
        page.wait_for_function(
            f"top => document.querySelector('{GRID_BODY}').scrollTop === top", arg=top
        )
        expect(header).to_have_class(re.compile("dt-ordering-desc"))
        expect(rows.nth(in_view[0]).locator("td").nth(4)).to_have_text(shown)
        after = sorted(grid.locator("tbody tr.selected td:nth-child(5)").all_inner_texts())
        assert after == selected
        for task_id in selected:  # what the kernel has selected, too
            expect(detail).to_contain_text(task_id)

        # The Tasks tab hidden (a hidden table cannot be scrolled) and shown again, with and
        # without an update while it was hidden: the offset comes back.
        tabs = inspector.locator(".lm-TabBar-tab")
        tabs.filter(has_text="Schedules").click()
        expect(grid).to_be_hidden()
        tabs.filter(has_text="Tasks").click()
        page.wait_for_function(
            f"top => document.querySelector('{GRID_BODY}').scrollTop === top", arg=top
        )
        tabs.filter(has_text="Schedules").click()
        expect(grid).to_be_hidden()
        also = next(i for i in ids[5:20] if i not in selected and i != changed)
        client.cancel(also)
        expect(grid.locator("tbody tr", has_text=also)).to_contain_text("CANCELLED", timeout=30_000)
        tabs.filter(has_text="Tasks").click()
        page.wait_for_function(
            f"top => document.querySelector('{GRID_BODY}').scrollTop === top", arg=top
        )
        expect(rows.nth(in_view[0]).locator("td").nth(4)).to_have_text(shown)

        # Page to the last of the 1,000.
        inspector.locator(".schedkit-last").click()
        expect(summary).to_contain_text("rows 801 to 1,000", timeout=30_000)
        expect(summary).to_contain_text("page 5 of 5")
        expect(grid).to_contain_text(ids[-1])
        expect(rows).to_have_count(200)
        # Another page is another view: at the top, in the page's own order.
        expect(header).not_to_have_class(re.compile("dt-ordering"))
        page.wait_for_function(f"() => document.querySelector('{GRID_BODY}').scrollTop === 0")

        # schedule_frame: the naive row is a problem, with its hint; the other was created.
        problems = cell_output(page, 2)
        expect(problems).to_contain_text("has no time zone", timeout=30_000)
        expect(problems).to_contain_text("invalid")
        expect(problems).to_contain_text("2099-03-01 09:00")  # as written, not NaT
        made = client.tasks_frame(labels={"lab": "frame"})
        assert list(made["args"]) == [[3, 4]]
        save(page, problems, "lab-schedule-frame.png")

        # The builder: no zone picked, so its naive run time is refused.
        builder = cell_output(page, 3).locator(".schedkit-builder")
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

        # The inspector's Schedules tab: both schedules, the first one's next and recent runs
        # (the run triggered above, with its task's state); paused there with a note.
        inspector.locator(".lm-TabBar-tab", has_text="Schedules").click()
        schedules = inspector.locator(".schedkit-schedules")
        expect(schedules).to_contain_text("water-fern", timeout=30_000)
        expect(schedules).to_contain_text("add-hourly")
        schedules.locator("select").select_option("water-fern")
        runs = schedules.locator(".schedkit-schedule-runs")
        expect(runs).to_contain_text(ran.id, timeout=30_000)
        expect(runs.locator("tr", has_text=ran.id)).to_contain_text("SUCCEEDED")
        expect(runs).to_contain_text("08:00:00 CE")  # next runs, in the schedule's zone
        schedules.locator("input[placeholder=why]").fill("fern repotted")
        schedules.locator("button", has_text="Pause").click()
        expect(schedules).to_contain_text("paused: fern repotted", timeout=30_000)
        assert client.get_schedule("water-fern").paused
        save(page, inspector, "lab-schedules.png")  # with its tabs
