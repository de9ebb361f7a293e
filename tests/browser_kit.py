"""What the browser tests share: Debian's chromium driven by Playwright, a Jupyter front end
(JupyterLab or Notebook 7) on a free localhost port, and screenshots (test-artifacts/, and
docs/img/ with SCHEDKIT_UPDATE_DOCS_IMAGES=1)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from conftest import ARTIFACTS
from schedkit.runtime.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
DOCS_IMAGES = ROOT / "docs" / "img"


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float, name: str) -> None:
    """Wait until ``url`` answers over HTTP (any status), failing if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}; see test-artifacts/{name}.log")
        try:
            with urllib.request.urlopen(url + "static/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer: the server is up
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)  # polling a server that is starting, bounded by the deadline
    pytest.fail(f"{name} did not answer at {url} within {timeout:g}s")


def browser_page(name: str) -> Iterator[Page]:
    """One page of a headless chromium, 1280 pixels wide; what it last showed is saved as
    test-artifacts/last-<name>.png, to see where a failed test stopped."""
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: run scripts/bootstrap (it installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 2000})
        page = context.new_page()
        yield page
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"last-{name}.png"), full_page=True)
        context.close()
        browser.close()


def save(page: Page, target: str | Locator | None, name: str) -> None:
    """A screenshot of ``target`` (a selector or a locator; None: the whole page)."""
    path = ARTIFACTS / name
    ARTIFACTS.mkdir(exist_ok=True)
    if target is None:
        page.screenshot(path=str(path), full_page=True)
        return
    element = page.locator(target) if isinstance(target, str) else target
    element.screenshot(path=str(path))
    if os.environ.get("SCHEDKIT_UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGES / name)


def write_notebook(folder: Path, name: str, cells: list[str]) -> None:
    """A notebook of ``cells`` (code, not run yet) at ``folder/name``, on the python3 kernel."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(notebook, folder / name)


@contextlib.contextmanager
def jupyter(
    app: str, root: Path, scratch: pytest.TempPathFactory, env: dict[str, str]
) -> Iterator[str]:
    """``python -m <app>`` (``jupyterlab`` or ``notebook``, Notebook 7) serving ``root`` on a
    free localhost port, no token; its base URL. Settings, workspaces and runtime files stay in
    the test's folders; ``env`` is added to the environment (the kernel's, too)."""
    settings = scratch.mktemp(f"{app}-settings")
    # Every cell rendered, not only those in view (JupyterLab 4 windows long notebooks).
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    app_class = "LabApp" if app == "jupyterlab" else "JupyterNotebookApp"
    command = [
        sys.executable,
        "-m",
        app,
        "--no-browser",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={root}",
        f"--{app_class}.user_settings_dir={settings}",
        f"--{app_class}.workspaces_dir={scratch.mktemp(f'{app}-workspaces')}",
        # No look-ups of extensions on a package index from a test.
        f"--{app_class}.extension_manager=readonly",
        "--ServerApp.allow_root=True",  # CI runs as root
    ]
    full_env = {
        **os.environ,
        **env,
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_RUNTIME_DIR": str(scratch.mktemp(f"{app}-runtime")),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / f"{app}.log").open("wb") as log:
        process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_http(url, process, timeout=90.0, name=app)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_all_cells(page: Page, idle: Locator) -> None:
    """Run > Run All Cells (the same menu in JupyterLab and Notebook 7), once ``idle`` (where
    the front end says the kernel is idle) shows; again if the first click came before the
    menu item was enabled (the notebook and its kernel start separately)."""
    expect(idle.first).to_be_attached(timeout=90_000)
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
    pytest.fail("the notebook's cells never ran")


def cell_output(page: Page, number: int) -> Locator:
    """The output area of code cell ``number`` (from 0)."""
    return page.locator(".jp-Notebook .jp-CodeCell").nth(number).locator(".jp-OutputArea")
