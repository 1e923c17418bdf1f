"""A run rides through a database outage: a real worker trains on a PostgreSQL server of this module's
own, the server stops for 30 s mid-run and starts again, and the run ends `succeeded` (never `lost`,
with the reaper running) with every metric point stored exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlmodel import Session, select

from app.db import get_engine
from app.models import MetricPoint, Run, RunStatus
from app.services import dispatch
from app.settings import get_settings
from tests.helpers.factories import launch, read_run, wait_for
from tests.helpers.specs import training_spec

pytestmark = pytest.mark.slow

MAX_STEPS = 1500  # a toy step takes ~30 ms: the run trains on through the whole outage
OUTAGE_SECONDS = 30
RUN_TIMEOUT = 400  # seconds: start-up, the outage and the steps, on a loaded machine


@pytest.fixture(scope="module")
def _service_backends(own_backends):
    """client and worker on this module's own PostgreSQL server."""
    return own_backends


def running_since_step(run_id: int, step: int) -> bool:
    run = read_run(run_id)
    return run.status == RunStatus.running and run.last_step >= step


def test_run_rides_through_a_database_outage(client, worker, own_postgres, monkeypatch):
    # a silence of a third of the outage counts as lost, so a reaper unaware of the outage gives up on the
    # run; more than the workers' longest retry delay (10 s), so one aware of it does not
    monkeypatch.setenv("DISTILL_LOST_AFTER_SECONDS", "20")
    get_settings.cache_clear()
    stop_reaper = threading.Event()
    dispatch.start_reaper(stop_reaper, interval_seconds=0.5)
    try:
        spec = training_spec(max_steps=MAX_STEPS, save_every=500, batch_size=1)
        run_id = launch(client, spec, name="outage")
        wait_for(lambda: running_since_step(run_id, 3), 240, f"run {run_id} to train a few steps", worker)

        own_postgres.stop()
        outage_began = time.time()
        try:
            time.sleep(OUTAGE_SECONDS)  # the outage itself: a fixed length on purpose
        finally:
            own_postgres.start()
            outage_ended = time.time()

        def finished() -> Run | None:
            try:
                run = read_run(run_id)
            except Exception:  # the pool's connections died with the server: the next read reconnects
                return None
            return run if RunStatus(run.status).finished else None

        run = wait_for(finished, RUN_TIMEOUT, f"run {run_id} to finish", worker)
    finally:
        stop_reaper.set()

    assert run.status == RunStatus.succeeded, run.error
    assert run.attempt == 1 and run.last_step == MAX_STEPS  # never lost, never resumed
    with Session(get_engine()) as session:
        points = session.exec(
            select(MetricPoint.step, MetricPoint.key, MetricPoint.wall_time).where(MetricPoint.run_id == run_id)
        ).all()
    counts = Counter((step, key) for step, key, _ in points)
    assert max(counts.values()) == 1, [pair for pair, n in counts.items() if n > 1][:10]
    assert {step for step, key in counts if key == "loss"} == set(range(1, MAX_STEPS + 1))
    assert "database unavailable" in worker.log_text()  # the outage reached the worker mid-run
    during = [step for step, key, wall_time in points if key == "loss" and outage_began < wall_time < outage_ended]
    assert during, "no step was trained while the database was away"
