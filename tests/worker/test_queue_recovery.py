"""Redis without persistence loses its queue: killed while one run trains and three wait, restarted empty.
The database still calls the three queued; the reaper's reconciler publishes them again, in queue order,
and a real worker runs each once. Prints the recovery times (docs/service.md quotes them)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import datetime

import pytest
from sqlmodel import Session

from app import queue
from app.db import get_engine
from app.models import ExperimentCreate, RunStatus
from app.services import dispatch
from app.services import experiments as experiment_service
from app.settings import get_settings
from tests.helpers.factories import read_run, wait_for
from tests.helpers.specs import training_spec
from tests.services import free_port, port_open, stop_group
from tests.worker.conftest import HEARTBEAT_SECONDS, WorkerProcess
from tests.worker.test_worker import RUN_TIMEOUT, finished, step_counts

pytestmark = pytest.mark.slow


class VolatileRedis:
    """redis-server with no RDB snapshots and no append-only file: a restart starts empty."""

    def __init__(self, folder):
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: port_open("127.0.0.1", self.port), 30, "redis-server to listen")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_group(self.process, timeout=10)


@pytest.fixture
def volatile_redis(service_env, tmp_path, monkeypatch):
    server = VolatileRedis(tmp_path)
    server.start()
    monkeypatch.setenv("DISTILL_REDIS_URL", server.url)
    get_settings.cache_clear()
    queue.use(None)
    yield server
    server.stop()
    get_settings.cache_clear()


def submit(name: str, **spec) -> int:
    with Session(get_engine()) as session:
        experiment_in = ExperimentCreate(name=name, spec=training_spec(**spec))
        return experiment_service.create_experiment(session=session, experiment_in=experiment_in, user=None)[1].id


def test_queued_runs_survive_a_redis_that_lost_its_queue(volatile_redis, toy_dir, tmp_path):
    env = dict(os.environ, DISTILL_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    worker = WorkerProcess(env, tmp_path)
    stop = threading.Event()
    dispatch.start_reaper(stop)  # what `distill api` runs: every 5 s with the default settings
    try:
        worker.start()
        running = submit("running", max_steps=60, save_every=0)
        waiting = [submit(f"waiting {i}", max_steps=3, save_every=0) for i in range(3)]
        wait_for(lambda: read_run(running).last_step >= 1, RUN_TIMEOUT, "the first run to train", worker)
        assert all(read_run(i).status == RunStatus.queued for i in waiting)
        sent = {i: read_run(i).celery_task_id for i in waiting}

        volatile_redis.kill()  # SIGKILL: the queue is gone with the process
        volatile_redis.start()  # empty: no snapshot, no append-only file
        back = time.monotonic()
        wait_for(
            lambda: all(read_run(i).celery_task_id != sent[i] for i in waiting),
            RUN_TIMEOUT,
            "the re-publication",
            worker,
        )
        republished = time.monotonic() - back
        wait_for(lambda: read_run(waiting[0]).status != RunStatus.queued, RUN_TIMEOUT, "the first claim", worker)
        first_claim = time.monotonic() - back
        runs = [wait_for(lambda i=i: finished(i), RUN_TIMEOUT, f"run {i} to finish", worker) for i in waiting]
        all_done = time.monotonic() - back

        first = wait_for(lambda: finished(running), RUN_TIMEOUT, "the first run to finish", worker)
        assert first.status == RunStatus.succeeded and step_counts(running) == dict.fromkeys(range(1, 61), 1)
        assert [r.status for r in runs] == [RunStatus.succeeded] * 3
        assert all(r.attempt == 1 and step_counts(r.id) == {1: 1, 2: 1, 3: 1} for r in runs)  # each ran once
        started: list[datetime] = [r.started_at for r in runs]
        assert started == sorted(started), "the queued runs ran out of order"
        print(
            f"\nRedis back -> all {len(waiting)} queued runs re-published: {republished:.1f} s; "
            f"-> first one claimed: {first_claim:.1f} s; -> all finished: {all_done:.1f} s "
            f"(the first run finished at step {first.last_step} with every point)"
        )
    finally:
        stop.set()
        worker.stop()
