"""What a new user meets first: API docs that work offline, an icon, errors that name their fix, a
cancelled queued run leaving the broker, and a terminal without a line per poll."""

from __future__ import annotations

import logging
import re

from app.cli import quiet_access_log
from tests.helpers.factories import post_experiment
from tests.helpers.specs import tiny_spec


def test_docs_and_redoc_load_every_asset_from_this_server(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert not re.search(r"https?://", html.text.replace(" xmlns", "")), html.text  # no CDN, no Google Fonts
        assets = re.findall(r'(?:src|href)="(/[^"]+)"', html.text)
        assert any(a.endswith(".js") for a in assets), assets
        for asset in assets:
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 100, asset
    assert "SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").text
    assert client.get("/openapi.json").json()["info"]["title"] == "distill"


def test_favicon_is_a_png(client):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png"
    assert icon.content[:8] == b"\x89PNG\r\n\x1a\n" and icon.content[16:24] == bytes([0, 0, 0, 32, 0, 0, 0, 32])


def test_a_typo_in_a_spec_field_names_the_field_meant(client):
    for route, body in (("/api/experiments", {"json": {"name": "t", "spec": {**tiny_spec(), "lmbd": 1.0}}}),
                        ("/api/experiments/yaml", {"content": "name: t\nspec:\n  lmbd: 1.0\n",
                                                   "headers": {"content-type": "application/yaml"}})):  # fmt: skip
        response = client.post(route, **body)
        assert response.status_code == 422
        [problem] = [p for p in response.json()["detail"] if p["loc"][-1] == "lmbd"]
        assert problem["msg"] == "is not a spec field; did you mean 'lmbda'?"


def test_cancelling_a_queued_run_takes_its_message_off_the_broker(client, service_env):
    from worker.queue import CeleryQueue

    kept, cancelled = post_experiment(client, "kept")["run_id"], post_experiment(client, "dropped")["run_id"]
    assert {kept, cancelled} <= CeleryQueue().waiting()
    assert client.post(f"/api/runs/{cancelled}/cancel").json()["status"] == "cancelled"
    waiting = CeleryQueue().waiting()
    assert kept in waiting and cancelled not in waiting


def _access(method: str, path: str, status: int) -> logging.LogRecord:
    args = ("127.0.0.1:5000", method, path, "1.1", status)  # what uvicorn's access logger is given
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)


def test_the_access_log_keeps_changes_and_errors_and_drops_polls():
    kept = [("POST", "/api/experiments", 201), ("POST", "/api/runs/3/cancel", 200), ("GET", "/api/runs/9", 404),
            ("GET", "/api/health", 503), ("POST", "/ui/gradio_api/queue/join", 500)]  # fmt: skip
    dropped = [("GET", "/api/health", 200), ("GET", "/api/runs/3/events", 200), ("POST", "/ui/gradio_api/queue/join", 200),
               ("GET", "/ui/gradio_api/queue/data", 200), ("GET", "/docs-assets/swagger-ui.css", 200),
               ("GET", "/ui/", 503)]  # fmt: skip
    assert all(quiet_access_log(_access(*request)) for request in kept)
    assert not any(quiet_access_log(_access(*request)) for request in dropped)
