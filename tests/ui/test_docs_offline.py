"""/docs and /redoc render in Chromium with every request to another host refused (no internet)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.services import free_port, stop_group, wait_until_serving
from tests.ui.browser import BROWSER_TEST, CHROMIUM, ROOT

pytestmark = BROWSER_TEST


def test_docs_and_redoc_render_without_internet(service_env, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    port, log = free_port(), tmp_path / "api.log"
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_api", "--factory", "--port", str(port)],
                              cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    refused: list[str] = []

    def offline(route) -> None:  # this server only: anything else is what a machine without internet gets
        if route.request.url.startswith(base):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    try:
        wait_until_serving(f"{base}/docs", server, log)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.route("**/*", offline)
            page.goto(f"{base}/docs")
            sync_api.expect(page.locator(".swagger-ui .info .title")).to_contain_text("distill", timeout=60_000)
            sync_api.expect(page.locator(".opblock-summary-path", has_text="/api/health")).to_be_visible()
            page.goto(f"{base}/redoc")
            sync_api.expect(page.locator("h1", has_text="distill")).to_be_visible(timeout=60_000)
            browser.close()
        assert refused == []
    finally:
        stop_group(server, timeout=20)
