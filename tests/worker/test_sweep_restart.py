"""A sweep survives the service dying under it: a real `distill up` is killed (SIGKILL, every process) while
one run of the sweep trains and the others wait, then started again on the same home; every run ends
succeeded (the one that was training heals by itself: lost, resumed from its checkpoint) and none is
duplicated (one experiment and one run per setting and seed, each step's points stored once)."""

from __future__ import annotations

from collections import Counter

import httpx
import psutil
import pytest

from tests.helpers.factories import wait_for
from tests.helpers.specs import training_spec
from tests.helpers.up import kill_all, processes_below, start_up

pytestmark = pytest.mark.slow

# losing and healing in seconds, not minutes; queued runs a killed Redis lost are published again soon
FAST = {
    "DISTILL_HEARTBEAT_SECONDS": "0.5",
    "DISTILL_LOST_AFTER_SECONDS": "8",
    "DISTILL_AUTO_RESUME_BACKOFF_SECONDS": "1",
    "DISTILL_RECONCILE_AFTER_SECONDS": "2",
}
STEPS = 12


def sweep_view(base: str, sweep_id: int) -> dict:
    return httpx.get(f"{base}/api/sweeps/{sweep_id}", timeout=30).json()


def all_up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/health", timeout=10).json()["starting"] == []
    except httpx.HTTPError:
        return False


def test_a_restart_mid_sweep_loses_no_run_and_duplicates_none(tmp_path, toy_dir):
    up, log_path, base = start_up(tmp_path, toy_dir, extra_env=FAST)
    children: list[psutil.Process] = []
    try:
        wait_for(lambda: all_up(base), 240, "everything up")
        body = {
            "name": "restart",
            "spec": training_spec(max_steps=STEPS, save_every=3).model_dump(mode="json"),
            "grid": {"learning_rate": [0.001, 0.002]},
            "seeds": [0, 1],
        }
        response = httpx.post(f"{base}/api/sweeps", json=body, timeout=60)
        assert response.status_code == 201, response.text
        sweep_id = response.json()["id"]

        def training_past_a_checkpoint() -> dict | None:
            runs = [r for g in sweep_view(base, sweep_id)["groups"] for r in g["runs"]]
            return next((r for r in runs if r["status"] == "running" and r["last_step"] >= 3), None)

        interrupted = wait_for(training_past_a_checkpoint, 240, "a run of the sweep to pass its first checkpoint")
        children = processes_below(up.pid)
        kill_all(up, children)  # the whole service at once: no hand-back, no clean Redis shutdown
        log_path.rename(tmp_path / "up-first.log")

        up, log_path, base = start_up(tmp_path, toy_dir, extra_env=FAST)  # the same home: database, Redis file
        children = []

        def finished() -> dict | None:
            view = sweep_view(base, sweep_id)
            return view if view["status"] in ("finished", "cancelled") else None

        view = wait_for(finished, 300, "every run of the sweep to finish after the restart")
        runs = [r for g in view["groups"] for r in g["runs"]]
        assert view["status"] == "finished" and view["counts"]["succeeded"] == 4, view["counts"]
        assert sorted((g["label"], r["seed"]) for g in view["groups"] for r in g["runs"]) == [
            ("learning_rate=0.001", 0), ("learning_rate=0.001", 1), ("learning_rate=0.002", 0), ("learning_rate=0.002", 1),
        ]  # fmt: skip
        assert all(r["last_step"] == STEPS for r in runs)
        listed = httpx.get(f"{base}/api/runs", params={"tags": f"sweep:{sweep_id}"}, timeout=30).json()
        assert listed["count"] == 4  # no run queued twice

        healed = httpx.get(f"{base}/api/runs/{interrupted['run_id']}", timeout=30).json()
        assert healed["attempt"] >= 2 and healed["auto_resumes"] >= 1, healed["history"]
        for run in runs:  # each step trained (and stored) once, the interrupted run's included
            points = httpx.get(f"{base}/api/runs/{run['run_id']}/metrics.json", timeout=30).json()
            twice = [k for k, n in Counter((p["key"], p["step"]) for p in points).items() if n > 1]
            assert points and not twice, (run["run_id"], twice[:5])
    finally:
        kill_all(up, children)
