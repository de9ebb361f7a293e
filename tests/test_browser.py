"""The dashboard notebook in a real browser: Voila on localhost, Debian's chromium via Playwright.

A person's path through it: the inspector lists the scheduled tasks, one is selected and
cancelled with the button (and is CANCELLED in the store), and the builder's form schedules
a new task. Screenshots go to test-artifacts/; with SCHEDKIT_UPDATE_DOCS_IMAGES=1 they also
replace the pictures under docs/img/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from browser_kit import ROOT, browser_page, save, wait_http
from conftest import ARTIFACTS, FAST
from schedkit.runtime.embedded import free_port
from schedkit.testing import LocalStack, local_stack


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of this test's own, so the dashboard shows only the tasks made here."""
    with local_stack(data_dir=tmp_path_factory.mktemp("browser"), **FAST) as running:
        yield running


@pytest.fixture(scope="module")
def voila(own_stack: LocalStack) -> Iterator[str]:
    """notebooks/dashboard.ipynb served by Voila on a free localhost port; its URL."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "SCHEDKIT_SERVER": own_stack.address,
        "SCHEDKIT_NOTEBOOK_TZ": "Europe/Paris",
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "voila",
        str(ROOT / "notebooks" / "dashboard.ipynb"),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--show_tracebacks=True",
    ]
    with (ARTIFACTS / "voila.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_http(url, process, timeout=60.0, name="voila")
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    yield from browser_page("voila")


@pytest.mark.timeout(300)
def test_dashboard_lists_cancels_and_schedules_in_a_browser(
    own_stack: LocalStack, voila: str, page: Page
) -> None:
    with own_stack.client() as client:
        garden = {"team": "garden"}
        keep = client.schedule("water_plants", "rose", run_at=timedelta(hours=1), labels=garden)
        doomed = client.schedule("add", 1, 2, run_at=timedelta(hours=2))
        ran = client.schedule("add", 2, 3, run_at=timedelta(seconds=0.2), labels=garden)
        failed = client.schedule("fail", "pump jammed", run_at=timedelta(seconds=0.2))
        client.wait_for(ran.id, ["SUCCEEDED"])
        client.wait_for(failed.id, ["FAILED"])

        page.goto(voila, timeout=90_000)
        inspector = page.locator(".schedkit-inspector")
        tasks = page.locator(".schedkit-grid")
        # Voila runs the notebook, then the widget manager renders the widgets' state.
        expect(tasks).to_contain_text(doomed.id, timeout=90_000)
        expect(tasks).to_contain_text(keep.id)
        expect(tasks).to_contain_text("SCHEDULED")
        expect(tasks).to_contain_text("team=garden")
        expect(tasks).to_contain_text("pump jammed")  # a failure's error, in place
        paris = keep.spec.run_at.astimezone(ZoneInfo("Europe/Paris"))
        expect(tasks).to_contain_text(f"{paris:%Y-%m-%d %H:%M:%S %Z}")  # in the chosen zone
        expect(inspector.locator(".schedkit-summary")).to_contain_text("4 of 4 shown")

        # Live: a task made after the page loaded shows up with no click (the kernel's thread).
        late = client.schedule("nap", 0.1, run_at=timedelta(hours=3))
        expect(tasks).to_contain_text(late.id, timeout=20_000)

        # Select in the grid itself: a click on the row.
        tasks.locator("tbody tr", has_text=doomed.id).click()
        detail = inspector.locator(".schedkit-detail")
        expect(detail).to_contain_text("[1, 2]")
        page.locator(".schedkit-cancel").click()

        assert client.wait_for(doomed.id, ["CANCELLED"], timeout=20).state == "CANCELLED"
        assert client.get(keep.id).state == "SCHEDULED"
        expect(inspector).to_contain_text(f"cancelled 1: {doomed.id}", timeout=20_000)
        expect(tasks.locator("tbody tr", has_text=doomed.id)).to_contain_text("CANCELLED")
        expect(detail).to_contain_text("CANCELLED")
        save(page, ".schedkit-inspector", "inspector.png")

        builder = page.locator(".schedkit-builder")
        builder.locator(".schedkit-task select").select_option(label="water_plants")
        expect(builder.locator(".schedkit-tz input")).to_have_value("Europe/Paris")
        builder.locator(".schedkit-args input").fill('["fern"]')
        builder.locator(".schedkit-labels input").fill("demo=browser")
        builder.locator(".schedkit-labels input").press("Enter")
        expect(builder).to_contain_text("arguments fit the task")
        builder.locator(".schedkit-add").click()
        expect(builder).to_contain_text("added row 1", timeout=20_000)
        builder.locator(".schedkit-schedule").click()
        expect(builder).to_contain_text("1 created", timeout=20_000)
        save(page, ".schedkit-builder", "builder.png")
        save(page, None, "dashboard.png")

        made = client.tasks_frame(labels={"demo": "browser"})
        assert list(made["task"]) == ["water_plants"]
        assert made["args"].iloc[0] == ["fern"]
