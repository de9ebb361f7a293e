"""What the browser tests share: Debian's chromium driven by Playwright, waiting for a local
server, and screenshots (test-artifacts/, and docs/img/ with SCHEDKIT_UPDATE_DOCS_IMAGES=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, sync_playwright

from conftest import ARTIFACTS

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
