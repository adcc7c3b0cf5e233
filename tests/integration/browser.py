"""What the browser tests share: Debian's chromium driven by Playwright, the page with its guards
(nothing fetched from outside the box, no script errors), the CLI as a subprocess, screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import ROOT

CHROMIUM = Path(os.environ.get("MARROW_CHROMIUM", "/usr/bin/chromium"))
# As the environment's probe found: without these, chromium keeps calling out to a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("MARROW_REQUIRE_BROWSER"):  # .ci/run sets it: CI must not skip these
        pytest.fail(f"{reason} (.ci/run installs chromium and playwright)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright; the dev extra has it)")
    if not CHROMIUM.is_file():
        _unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium, or set MARROW_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def page(browser, tmp_path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    outside: list[str] = []
    opened.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:")) else outside.append(r.url))
    errors: list[str] = []
    opened.on("pageerror", lambda e: errors.append(str(e)))
    yield opened
    context.close()
    assert not outside, f"the page fetched from outside the box: {outside}"
    assert not errors, f"script errors on the page: {errors}"


def _screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    if os.environ.get("MARROW_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["MARROW_SCREENSHOTS"]) / name)
    print(f"screenshot: {path}")
    return path
