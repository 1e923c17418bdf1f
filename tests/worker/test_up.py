"""`distill up` end to end: embedded Redis, SQLite, API, one CPU worker; a run succeeds; Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.factories import wait_for
from tests.helpers.specs import training_spec
from tests.services import free_port, port_open

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_distill_up_runs_an_experiment_and_ctrl_c_stops_everything(tmp_path, toy_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
    env |= {"DISTILL_HOME": str(tmp_path / "home"), "DISTILL_TOY_DIR": str(toy_dir), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port), "--gpus", "0"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: "distill is up" in log_path.read_text() or up.poll() is not None, 240, "distill up to start")
        output = log_path.read_text()
        assert up.poll() is None, output
        assert f"open {base}/ui" in output and "(embedded" in output and "sqlite" in output
        redis_port = int(output.split("redis: redis://127.0.0.1:", 1)[1].split("/", 1)[0])

        # the port answers while the app and the worker are still starting (app/boot.py): wait until all are up
        wait_for(lambda: httpx.get(f"{base}/api/health", timeout=10).json()["starting"] == [], 240, "everything up")
        assert httpx.get(f"{base}/api/health", timeout=10).json()["status"] == "ok"
        body = {"name": "smoke", "spec": training_spec(max_steps=2).model_dump(mode="json")}
        response = httpx.post(f"{base}/api/experiments", json=body, timeout=30)
        assert response.status_code == 201, response.text
        run_id = response.json()["run_id"]

        def finished():
            run = httpx.get(f"{base}/api/runs/{run_id}", timeout=10).json()
            return run if run["status"] not in ("queued", "running") else None

        run = wait_for(finished, 240, "the run to finish")
        assert run["status"] == "succeeded", run.get("error")
        assert (tmp_path / "home" / "distill.db").exists()  # SQLite under DISTILL_HOME

        children = descendants(up.pid)
        assert len(children) >= 4  # redis, api, worker and its pool child
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert up.wait(120) == 0, log_path.read_text()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if alive(pid)], "orphans left after Ctrl-C"
        assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", redis_port)
        assert "stopped" in log_path.read_text()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        for pid in descendants(up.pid):
            os.kill(pid, signal.SIGKILL)
