"""A run rides through a database outage: a real worker trains on a PostgreSQL server of this module's
own, the server stops for 30 s mid-run and starts again, and the run ends `succeeded` (never `lost`,
with the reaper running) with every metric point stored exactly once. Below it, without a worker: a
reporter logging through an outage, a write sent twice, and the reaper's grace after an outage."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from app import run_state
from app.db import get_engine
from app.models import EvalSamples, MetricPoint, Run, RunStatus, utcnow
from app.services import dispatch
from app.settings import get_settings
from tests.helpers.factories import launch, read_run, wait_for
from tests.helpers.specs import training_spec
from tests.worker.test_run_state import new_run
from worker.reporter import DatabaseReporter

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


def claimed_run() -> int:
    with Session(get_engine()) as session:
        run_id = new_run(session)
        run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="0")
    return run_id


def rows_per_step_and_key(run_id: int) -> dict[tuple[int, str], int]:
    with Session(get_engine()) as session:
        rows = session.execute(
            select(MetricPoint.step, MetricPoint.key, func.count())
            .where(MetricPoint.run_id == run_id)
            .group_by(MetricPoint.step, MetricPoint.key)
        ).all()
    return {(step, key): count for step, key, count in rows}


def sample_steps(run_id: int) -> list[int]:
    with Session(get_engine()) as session:
        return sorted(session.exec(select(EvalSamples.step).where(EvalSamples.run_id == run_id)).all())


def test_points_and_samples_logged_while_the_database_is_away_land_once(service_env, own_postgres):
    run_id = claimed_run()
    reporter = DatabaseReporter(run_id, engine=get_engine(), attempt=1, flush_seconds=0.1, heartbeat_seconds=0.2)
    reporter.log(1, {"loss": 1.0})
    wait_for(lambda: rows_per_step_and_key(run_id), 30, "step 1 stored")

    own_postgres.stop()
    try:
        for step in range(2, 21):
            reporter.log(step, {"loss": 1.0 / step, "lr": 0.1})
            assert reporter.should_stop() is False  # the last flag read, not an error
        reporter.log_samples(20, [{"prompt": "1+1", "completion": "2"}])
        wait_for(lambda: reporter.reach.down, 30, "the reporter to notice the outage")
    finally:
        own_postgres.start()

    expected = {(1, "loss"): 1} | {(step, key): 1 for step in range(2, 21) for key in ("loss", "lr")}
    wait_for(lambda: rows_per_step_and_key(run_id) == expected, 60, "the points held back to be stored")
    reporter.close()
    assert rows_per_step_and_key(run_id) == expected and sample_steps(run_id) == [20]
    assert read_run(run_id).last_step == 20 and read_run(run_id).status == RunStatus.running


def test_points_and_samples_written_twice_are_stored_once(service_env):
    """A commit whose answer was lost (the connection broke after COMMIT) is sent again: stored once."""
    run_id = claimed_run()
    reporter = DatabaseReporter(run_id, engine=get_engine(), attempt=1, flush_seconds=60, heartbeat_seconds=60)
    now = time.time()
    points = [{"run_id": run_id, "step": 1, "key": key, "value": 0.5, "wall_time": now} for key in ("loss", "lr")]
    reporter._write_points(points)
    reporter._write_points(points)
    samples = {"run_id": run_id, "step": 1, "wall_time": now, "samples": [{"prompt": "1+1", "completion": "2"}]}
    reporter._unwritten_samples += [samples, dict(samples)]
    reporter.close()
    assert rows_per_step_and_key(run_id) == {(1, "loss"): 1, (1, "lr"): 1} and sample_steps(run_id) == [1]


def test_the_reaper_counts_silence_from_when_the_database_came_back(service_env):
    run_id = claimed_run()
    lost_after = get_settings().lost_after_seconds
    with Session(get_engine()) as session:
        session.get(Run, run_id).heartbeat_at = utcnow() - timedelta(hours=1)  # silent since long before
        session.commit()
        lately = utcnow() - timedelta(seconds=lost_after / 2)  # the reaper's last failure: inside the allowance
        assert run_state.reap_lost_runs(session=session, not_before=lately) == []
        assert read_run(run_id).status == RunStatus.running
        long_ago = utcnow() - timedelta(seconds=lost_after + 5)
        assert run_state.reap_lost_runs(session=session, not_before=long_ago) == [run_id]
