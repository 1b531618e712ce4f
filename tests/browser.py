"""Headless Chromium for the page tests: Debian's /usr/bin/chromium driven by Playwright.

Never `playwright install` (it downloads a browser build); CI installs Debian's chromium
(.ci/run). Outside CI a missing browser or Playwright skips the test; in CI (CI=true) it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def missing(what: str) -> None:
    """Skip (or fail in CI, where .ci/run installs everything) for a missing tool."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing in CI (.ci/run installs it)")
    pytest.skip(f"{what} is missing")


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright's Browser)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the Python package playwright (pip install -e '.[test]')")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing("chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
