"""What the browser tests share: headless Chromium pages, the API + dashboard as a subprocess, screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.services import free_port, stop_group, wait_until_serving

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
DOCS_IMG = ROOT / "docs" / "img"
SERVER_MS = 60_000  # anything that waits on the server (a loaded 2-core machine)

BROWSER_TEST = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def start_process(args: list[str], log: Path) -> subprocess.Popen:
    # own process group: the Celery worker's pool child is stopped with its parent
    return subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def start_api(port: int, log: Path) -> subprocess.Popen:
    """The real app (API + dashboard) under uvicorn, as `distill api` serves it."""
    return start_process([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
                          "--port", str(port), "--log-level", "warning"], log)  # fmt: skip


@contextmanager
def serve_dashboard(tmp_path: Path, name: str, ready_path: str = "/ui/") -> Iterator[str]:
    """The base URL of a running API + dashboard (no worker), once `ready_path` answers (with auth on, /ui/
    wants a login: wait on /api/health); its log is kept as test-artifacts/ui/NAME-api.log."""
    port, log = free_port(), tmp_path / f"{name}-api.log"
    server = start_api(port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}{ready_path}", server, log)
        yield url
    finally:
        stop_group(server, timeout=20)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / log.name)


@contextmanager
def open_page(width: int = 1400, height: int = 1000, timeout_ms: int = SERVER_MS):
    """A headless Chromium page; Playwright's actions wait `timeout_ms` at most (never its default 5 s)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(timeout_ms)
        try:
            yield page
        finally:
            browser.close()


def shot(page, name: str, docs: bool = True) -> None:
    """A full-page screenshot to test-artifacts/ui/; with DISTILL_DOCS_SCREENSHOTS=1 also docs/img/dashboard-NAME.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    if docs and os.environ.get("DISTILL_DOCS_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / f"{name}.png", DOCS_IMG / f"dashboard-{name}.png")
