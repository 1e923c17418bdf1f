"""`distill up` end to end: embedded Redis, SQLite, API, one CPU worker; a run succeeds; Ctrl-C stops all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers.factories import wait_for
from tests.helpers.specs import training_spec
from tests.services import free_port, port_open
from worker.tasks import descendants

pytestmark = pytest.mark.slow


def start_up(tmp_path: Path, toy_dir: Path) -> tuple[subprocess.Popen, Path, str]:
    """A real `distill up` (embedded Redis, SQLite in tmp_path/home, one CPU worker) on a free port, serving;
    (process, its log, base URL). Its environment is its own: nothing of it is set in this process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
    env |= {"DISTILL_HOME": str(tmp_path / "home"), "DISTILL_TOY_DIR": str(toy_dir), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port), "--gpus", "0"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: "distill is up" in log_path.read_text() or up.poll() is not None, 240, "distill up to start")
        assert up.poll() is None, log_path.read_text()
    except BaseException:
        kill_all(up, [])
        raise
    return up, log_path, f"http://127.0.0.1:{port}"


def redis_port_of(log_path: Path) -> int:
    return int(log_path.read_text().split("redis: redis://127.0.0.1:", 1)[1].split("/", 1)[0])


def processes_below(pid: int) -> list[psutil.Process]:
    """Every live process below `pid`, as psutil handles: they still name the same processes after `pid`
    dies and they are re-parented (a signal to a handle whose pid was reused raises instead)."""
    found = []
    for child in descendants(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(child))
    return found


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_all(up: subprocess.Popen, processes: list[psutil.Process]) -> None:
    """After a failure: `distill up` and everything seen below it (its children live in sessions of their own)."""
    processes = processes + processes_below(up.pid)
    if up.poll() is None:
        up.kill()
        up.wait()
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def wait_until_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in processes if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


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


def test_a_killed_distill_up_takes_its_children_and_theirs_with_it(tmp_path, toy_dir):
    """SIGKILL (or a supervisor killed while it stops) leaves no orphan: not Redis, the API, the worker,
    its host heartbeat, nor the pool process training a run; the ports are free again."""
    up, log_path, base = start_up(tmp_path, toy_dir)
    port, redis_port = int(base.rsplit(":", 1)[1]), redis_port_of(log_path)
    children: list[psutil.Process] = []
    try:
        wait_for(lambda: httpx.get(f"{base}/api/health", timeout=10).json()["starting"] == [], 240, "everything up")
        body = {"name": "long", "spec": training_spec(max_steps=100_000, save_every=0).model_dump(mode="json")}
        response = httpx.post(f"{base}/api/experiments", json=body, timeout=30)
        assert response.status_code == 201, response.text
        run_url = f"{base}/api/runs/{response.json()['run_id']}"
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
