"""`distill up` answers at once: the port and the URL come before the app is built, and the terminal
keeps only what matters (no access line per poll, no Celery root warning or banner, no revoke warning, no
loading bars)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.helpers.factories import wait_for
from tests.helpers.specs import training_spec
from tests.helpers.up import kill_all, start_up

pytestmark = pytest.mark.slow

NOISE = (
    "superuser privileges",  # Celery's root warning
    "Failed to mark task",  # a revoke without a result backend
    '"GET /api/health',  # an access-log line per poll
    '"GET /api/runs',
    "gradio_api",  # the dashboard's own polls
    "[queues]",  # Celery's start banner
    ".> transport:",
    "Loading weights",  # transformers' loading bars, as log lines of the pool child
)


def test_up_answers_while_the_app_is_still_building_and_keeps_the_terminal_quiet(tmp_path: Path, toy_dir: Path):
    gate = tmp_path / "gate"
    # the app build waits on the gate: the port and the URL must come anyway
    up, log_path, base = start_up(tmp_path, toy_dir, {"DISTILL_START_GATE": str(gate)}, timeout=120)
    client = httpx.Client(base_url=base, timeout=30)
    try:
        assert f"open {base}/ui" in log_path.read_text()
        health = client.get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "starting"
        assert {"api", "dashboard"} <= set(health.json()["starting"])
        page = client.get("/ui/")
        assert page.status_code == 503 and "distill is starting" in page.text and "dashboard" in page.text
        icon = client.get("/favicon.ico")
        assert icon.status_code == 200 and icon.content.startswith(b"\x89PNG")

        held: dict[str, httpx.Response] = {}  # an API request during the build waits for the app
        reader = threading.Thread(target=lambda: held.update(r=httpx.get(f"{base}/api/experiments", timeout=300)))
        reader.start()
        assert not gate.exists() and client.get("/api/health").json()["status"] == "starting"

        gate.touch()  # the slow job finishes
        wait_for(lambda: client.get("/api/health").json()["starting"] == [], 300, "the app and the worker to start")
        assert client.get("/api/health").json()["status"] == "ok"
        reader.join(60)
        assert held["r"].status_code == 200, held["r"].text
        assert client.get("/ui/").status_code == 200

        # a long run takes the one CPU slot; a second waits in the queue and is cancelled there
        long_run = _launch(client, training_spec(max_steps=100_000, save_every=0), "long")
        wait_for(lambda: client.get(f"/api/runs/{long_run}").json()["status"] == "running", 240, "the long run")
        queued = _launch(client, training_spec(), "queued")
        for _ in range(5):  # the polls a dashboard makes
            assert client.get(f"/api/runs/{queued}").status_code == 200
        assert client.post(f"/api/runs/{queued}/cancel").json()["status"] == "cancelled"
        assert client.get("/api/queue").json()["queued"] == []
        client.post(f"/api/runs/{long_run}/cancel")
        wait_for(lambda: client.get(f"/api/runs/{long_run}").json()["status"] == "cancelled", 240, "the cancel")

        up.send_signal(signal.SIGINT)
        assert up.wait(120) == 0, log_path.read_text()
        output = log_path.read_text()
        assert '"POST /api/experiments HTTP/1.1" 201' in output  # changes are still logged
        assert not [noise for noise in NOISE if noise in output], output
        assert not (tmp_path / "home" / "startup.json").exists()
    finally:
        client.close()
        kill_all(up)


def _launch(client: httpx.Client, spec, name: str) -> int:
    response = client.post("/api/experiments", json={"name": name, "spec": spec.model_dump(mode="json")})
    assert response.status_code == 201, response.text
    return response.json()["run_id"]
