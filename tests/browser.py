"""Helpers for tests that drive a real headless Chromium (Debian's ``chromium`` through
Playwright; ``playwright install`` is never run, it would download a browser of its own).

    from browser import launch_chromium, serve_app

    with serve_app(app) as url, launch_chromium() as browser:
        page = browser.new_page()
        page.goto(url)

Without chromium or playwright the test is skipped, except in CI (``CI`` set), where it fails:
.ci/run installs both, so a missing one there is a broken CI, not a reason to skip.
``CHROMIUM`` overrides the browser's path (default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

#: Chromium flags for a sandbox-less container with no GPU and no network of its own.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_path() -> str | None:
    """The Chromium executable to drive, if there is one."""
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    return path if os.path.isfile(path) else shutil.which("chromium")


def require_browser() -> str:
    """The Chromium path; skip the test without one (fail in CI)."""
    reasons = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reasons.append("playwright is not installed (pip install -e '.[test]')")
    path = chromium_path()
    if path is None:
        reasons.append("chromium is not installed (apt-get install chromium)")
    if reasons:
        missing("; ".join(reasons))
    return str(path)


def missing(what: str) -> None:
    """Skip the test for a missing tool, except in CI (``CI`` set), where it fails: .ci/run
    installs everything the browser and JavaScript tests need."""
    if os.environ.get("CI"):
        pytest.fail(f"this test must run in CI, but {what}")
    pytest.skip(what)


@contextlib.contextmanager
def launch_chromium(**options: Any) -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed afterwards."""
    path = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_FLAGS, **options
        )
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def serve_app(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve an ASGI ``app`` with uvicorn on a free port of ``host`` in a thread; yields its
    base URL (``http://127.0.0.1:PORT/``) and stops the server afterwards."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
