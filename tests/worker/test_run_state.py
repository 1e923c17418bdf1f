"""The run state machine and the reporter on the real database and Redis, without a worker (fast)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from app import events, run_state
from app.db import get_engine
from app.models import Experiment, MetricPoint, Run, RunStatus, utcnow
from worker.reporter import DatabaseReporter


@pytest.fixture
def session(service_env):
    with Session(get_engine()) as session:
        yield session


def new_run(session: Session) -> int:
    experiment = Experiment(name="state", spec={})
    session.add(experiment)
    session.commit()
    run = Run(experiment_id=experiment.id)
    session.add(run)
    session.commit()
    return run.id


def statuses(run_id: int) -> list[str]:
    return [data["status"] for _, kind, data in events.read(events.redis_client(), run_id) if kind == "status"]


def test_a_run_is_claimed_once(session):
    run_id = new_run(session)
    first = run_state.claim_run(session=session, run_id=run_id, worker="a", gpu="0", output_dir="/runs/x")
    second = run_state.claim_run(session=session, run_id=run_id, worker="b", gpu="1", output_dir="/runs/y")
    assert first.status == RunStatus.running and first.worker == "a" and first.output_dir == "/runs/x"
    assert second is None  # a duplicate delivery does nothing
    assert session.get(Run, run_id).worker == "a"
    assert statuses(run_id) == ["running"]


def test_cancel_queued_run_is_final_and_never_claimed(session):
    run_id = new_run(session)
    assert run_state.cancel_run(session=session, run_id=run_id).status == RunStatus.cancelled
    assert run_state.claim_run(session=session, run_id=run_id, worker="a", gpu="0") is None
    assert run_state.cancel_run(session=session, run_id=run_id) is None  # already finished
    assert session.get(Run, run_id).started_at is None


def test_cancel_running_run_sets_the_flag_the_heartbeat_reports(session):
    run_id = new_run(session)
    run_state.claim_run(session=session, run_id=run_id, worker="a", gpu="0")
    assert run_state.heartbeat(session=session, run_id=run_id, last_step=3, attempt=1) is False
    flagged = run_state.cancel_run(session=session, run_id=run_id)
    assert flagged.status == RunStatus.running and flagged.cancel_requested
    assert run_state.heartbeat(session=session, run_id=run_id, last_step=4, attempt=1) is True


def test_reaper_marks_silent_runs_lost_and_ignores_fresh_ones(session, monkeypatch):
    silent, fresh = new_run(session), new_run(session)
    for run_id in (silent, fresh):
        run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="0")
    later = utcnow() + timedelta(seconds=service_lost_after() + 1)
    run_state.heartbeat(session=session, run_id=fresh, last_step=1)
    session.execute(Run.__table__.update().where(Run.__table__.c.id == fresh).values(heartbeat_at=later))
    session.commit()

    assert run_state.reap_lost_runs(session=session, now=later) == [silent]
    lost = session.get(Run, silent)
    session.refresh(lost)
    assert lost.status == RunStatus.lost and "heartbeat" in lost.error and lost.finished_at is not None
    assert session.get(Run, fresh).status == RunStatus.running
    assert run_state.reap_lost_runs(session=session, now=later) == []  # idempotent
    assert statuses(silent) == ["running", "lost"]


def service_lost_after() -> float:
    from app.settings import get_settings

    return get_settings().lost_after_seconds


def test_a_zombie_attempt_can_neither_beat_nor_finish(session):
    run_id = new_run(session)
    run_state.claim_run(session=session, run_id=run_id, worker="old", gpu="0")
    later = utcnow() + timedelta(seconds=service_lost_after() + 1)
    assert run_state.reap_lost_runs(session=session, now=later) == [run_id]
    resumed = run_state.requeue_run(session=session, run_id=run_id)
    assert resumed.status == RunStatus.queued and resumed.attempt == 2 and resumed.error is None
    run_state.claim_run(session=session, run_id=run_id, worker="new", gpu="0")

    # attempt 1's worker wakes up: told to stop, and its result is ignored
    assert run_state.heartbeat(session=session, run_id=run_id, last_step=9, attempt=1) is True
    assert not run_state.finish_run(session=session, run_id=run_id, status="succeeded", attempt=1)
    assert run_state.finish_run(session=session, run_id=run_id, status="failed", error="boom", attempt=2)
    run = session.get(Run, run_id)
    session.refresh(run)
    assert (run.status, run.worker, run.error) == (RunStatus.failed, "new", "boom")


def test_finish_only_from_running_and_only_to_final_states(session):
    run_id = new_run(session)
    assert not run_state.finish_run(session=session, run_id=run_id, status="succeeded")  # still queued
    with pytest.raises(ValueError, match="lost"):
        run_state.finish_run(session=session, run_id=run_id, status="lost")
    assert run_state.requeue_run(session=session, run_id=run_id) is None  # queued is not resumable


def test_reporter_batches_and_resume_drops_what_came_after_the_checkpoint(session):
    run_id = new_run(session)
    run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="0")
    client = events.redis_client()
    reporter = DatabaseReporter(run_id, engine=get_engine(), redis_client=client, save_every=2, max_steps=10,
                                flush_seconds=60, heartbeat_seconds=60)  # fmt: skip
    for step in range(1, 6):
        reporter.log(step, {"loss": 1.0 / step, "div/fkl": float("nan")})
        reporter.should_stop()  # flushes synchronously on checkpoint steps 2 and 4
    stored = Counter(session.exec(select(MetricPoint.step).where(MetricPoint.run_id == run_id)).all())
    assert stored == {1: 1, 2: 1, 3: 1, 4: 1}  # step 5 waits in the buffer; NaN values are not stored
    assert session.get(Run, run_id).last_step == 4
    reporter.close()  # the final flush
    assert Counter(session.exec(select(MetricPoint.step).where(MetricPoint.run_id == run_id)).all())[5] == 1

    # a new attempt resumes from the checkpoint at step 4: step 5 is dropped, to be logged again
    again = DatabaseReporter(run_id, engine=get_engine(), redis_client=client, flush_seconds=0.1, heartbeat_seconds=60)
    again.resumed(4)
    again.log(5, {"loss": 0.5})
    time.sleep(0.5)  # the background thread flushes within flush_seconds
    again.close()
    steps = session.exec(select(MetricPoint.step).where(MetricPoint.run_id == run_id, MetricPoint.key == "loss")).all()
    assert sorted(steps) == [1, 2, 3, 4, 5]
    kinds = [kind for _, kind, _ in events.read(client, run_id)]
    assert kinds.count("resumed") == 1 and kinds.count("metrics") >= 3
