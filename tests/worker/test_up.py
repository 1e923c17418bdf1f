"""`distill up` end to end: embedded Redis, SQLite, API, one CPU worker; a run succeeds; Ctrl-C stops all."""

from __future__ import annotations

import signal

import httpx
import psutil
import pytest

from tests.helpers.factories import wait_for
from tests.helpers.specs import training_spec
from tests.helpers.up import kill_all, processes_below, redis_port_of, start_up, wait_until_gone
from tests.services import port_open

pytestmark = pytest.mark.slow


def test_distill_up_runs_an_experiment_and_ctrl_c_stops_everything(tmp_path, toy_dir):
    up, log_path, base = start_up(tmp_path, toy_dir)
    port = int(base.rsplit(":", 1)[1])
    children: list[psutil.Process] = []
    try:
        output = log_path.read_text()
        assert f"open {base}/ui" in output and "(embedded" in output and "sqlite" in output
        redis_port = redis_port_of(log_path)

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

        children = processes_below(up.pid)
        assert len(children) >= 4  # redis, api, worker and its pool child
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert up.wait(120) == 0, log_path.read_text()
        assert not wait_until_gone(children, 10), "orphans left after Ctrl-C"
        assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", redis_port)
        assert "stopped" in log_path.read_text()
    finally:
        kill_all(up, children)


def submit_when_up(base: str, name: str, spec) -> str:
    """Once API and worker are up, POST an experiment of `spec`; its run's URL."""
    wait_for(lambda: httpx.get(f"{base}/api/health", timeout=10).json()["starting"] == [], 240, "everything up")
    response = httpx.post(f"{base}/api/experiments", json={"name": name, "spec": spec.model_dump(mode="json")}, timeout=30)
    assert response.status_code == 201, response.text
    return f"{base}/api/runs/{response.json()['run_id']}"


def test_a_killed_distill_up_takes_its_children_and_theirs_with_it(tmp_path, toy_dir):
    """SIGKILL (or a supervisor killed while it stops) leaves no orphan: not Redis, the API, the worker,
    its host heartbeat, nor the pool process training a run; the ports are free again."""
    up, log_path, base = start_up(tmp_path, toy_dir)
    port, redis_port = int(base.rsplit(":", 1)[1]), redis_port_of(log_path)
    children: list[psutil.Process] = []
    try:
        run_url = submit_when_up(base, "long", training_spec(max_steps=100_000, save_every=0))
        wait_for(lambda: httpx.get(run_url, timeout=10).json()["status"] == "running", 240, "the run to train")

        children = processes_below(up.pid)
        names = " | ".join(" ".join(p.cmdline()[:6]) for p in children)
        assert len(children) >= 5, names  # redis, api, worker, its host heartbeat, the pool process training
        up.kill()
        up.wait(10)
        left = wait_until_gone(children, 60)
        assert not left, "orphans of a killed distill up: " + " | ".join(f"{p.pid} {p.cmdline()}" for p in left)
        assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", redis_port)
    finally:
        kill_all(up, children)


def test_a_worker_killed_under_distill_up_is_started_again_and_its_run_heals(tmp_path, toy_dir):
    """An OOM kill of the worker (SIGKILL to it and its pool process) neither stops the service nor needs a
    person: the supervisor starts the worker again, the reaper calls the run lost, it resumes by itself."""
    fast = {"DISTILL_HEARTBEAT_SECONDS": "0.5", "DISTILL_LOST_AFTER_SECONDS": "8"}
    up, log_path, base = start_up(tmp_path, toy_dir, extra_env=fast)
    children: list[psutil.Process] = []
    try:
        run_url = submit_when_up(base, "killed", training_spec(max_steps=400, save_every=5))
        wait_for(lambda: httpx.get(run_url, timeout=10).json()["last_step"] >= 10, 240, "a checkpoint or two")

        children = processes_below(up.pid)
        worker = next(p for p in children if "worker" in p.cmdline() and "app.cli" in p.cmdline())
        doomed = [worker, *worker.children(recursive=True)]
        for process in doomed:
            process.kill()
        wait_for(lambda: "started it again" in log_path.read_text(), 60, "the supervisor to restart the worker")
        assert up.poll() is None, log_path.read_text()

        def finished():
            run = httpx.get(run_url, timeout=10).json()
            return run if run["status"] in ("succeeded", "failed", "cancelled") else None

        run = wait_for(finished, 300, "the run to heal and finish")
        assert run["status"] == "succeeded" and run["attempt"] >= 2, run
        kinds = [event["kind"] for event in run["history"]]
        assert "lost" in kinds and "auto_resumed" in kinds, run["history"]
    finally:
        kill_all(up, children)
