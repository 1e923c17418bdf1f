"""The run state machine and the reporter on the real database and Redis, without a worker (fast)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from app import events, run_state
from app.db import get_engine
from app.models import Experiment, MetricPoint, Run, RunEvent, RunEventKind, RunStatus, utcnow
from worker.reporter import DatabaseReporter


@pytest.fixture
def session(service_env):
    with Session(get_engine()) as session:
        yield session


def new_run(session: Session, spec: dict | None = None, output_dir: str | None = None) -> int:
    experiment = Experiment(name="state", spec=spec or {})
    session.add(experiment)
    session.commit()
    run = Run(experiment_id=experiment.id, output_dir=output_dir)
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


def test_a_first_attempt_says_started_and_a_later_one_resumed(session):
    """The engine calls resumed(step) at every attempt's start; a fresh run's event is `started`."""
    run_id = new_run(session)
    client = events.redis_client()
    for attempt, step in ((1, 0), (2, 0), (3, 4)):
        reporter = DatabaseReporter(run_id, engine=get_engine(), redis_client=client, attempt=attempt,
                                    flush_seconds=60, heartbeat_seconds=60)  # fmt: skip
        reporter.resumed(step)
        reporter.close()
    said = [(kind, data) for _, kind, data in events.read(client, run_id) if kind in ("started", "resumed")]
    assert said == [
        ("started", {"attempt": 1, "step": 0}),
        ("resumed", {"attempt": 2, "step": 0}),  # no checkpoint yet: still drop what attempt 1 logged
        ("resumed", {"attempt": 3, "step": 4}),
    ]


def test_an_engine_warning_lands_in_the_runs_history_and_on_its_pages(session):
    from app.services import runs as run_service
    from ui.live import run_header
    from ui.runs import run_summary

    run_id = new_run(session)
    run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="0")
    reporter = DatabaseReporter(run_id, engine=get_engine(), redis_client=events.redis_client(), flush_seconds=60,
                                heartbeat_seconds=60)  # fmt: skip
    text = "warning: eval/exact_match fell from 61.7% at step 0 to 12.0% at step 20 (...)"
    reporter.warning(text)
    reporter.close()
    history = run_service.run_history(session=session, run_id=run_id)
    assert [(e.kind, e.note, e.attempt) for e in history if e.kind == "warning"] == [("warning", text, 1)]
    assert run_service.warning_lines(history) == [text]
    assert f"**{text}**" in run_header(run_id) and f"**{text}**" in run_summary(run_id)
    # a later attempt has not warned (yet): the pages show only the latest attempt's warnings
    session.add(RunEvent(run_id=run_id, kind=RunEventKind.resumed, attempt=2, step=0, note="a person"))
    session.commit()
    assert run_service.warning_lines(run_service.run_history(session=session, run_id=run_id)) == []


# --- lost runs heal themselves ---------------------------------------------------------------------
@pytest.fixture
def healing(service_env, monkeypatch):
    """2 automatic resumes in a row, 5 s backoff doubling."""
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_AUTO_RESUME_ATTEMPTS", "2")
    monkeypatch.setenv("DISTILL_AUTO_RESUME_BACKOFF_SECONDS", "5")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def checkpointed_run(session: Session, tmp_path, spec: dict | None = None, step: int = 3) -> int:
    """A run whose folder holds a complete checkpoint at `step`."""
    from core_distill.checkpoint import checkpoint_dir

    folder = checkpoint_dir(tmp_path / "run") / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{}")
    return new_run(session, spec, output_dir=str(tmp_path / "run"))


def run_and_lose(session: Session, run_id: int, last_step: int):
    """Claim the run, let it reach `last_step`, then go silent; the time the reaper marks it lost."""
    run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="0")
    run_state.heartbeat(session=session, run_id=run_id, last_step=last_step)
    later = utcnow() + timedelta(seconds=service_lost_after() + 1)
    assert run_state.reap_lost_runs(session=session, now=later) == [run_id]
    return later


def row(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    session.refresh(run)
    return run


def history(session: Session, run_id: int) -> list[tuple[str, int, str]]:
    from app.services.runs import run_history

    return [(e.kind, e.attempt, e.note) for e in run_history(session=session, run_id=run_id)]


def test_a_lost_run_resumes_itself_after_a_doubling_backoff_and_gives_up_after_the_limit(session, healing, tmp_path):
    run_id = checkpointed_run(session, tmp_path)
    lost_at = run_and_lose(session, run_id, last_step=5)
    lost = row(session, run_id)
    assert lost.status == RunStatus.lost and lost.resume_after == lost_at + timedelta(seconds=5)
    assert run_state.resume_lost_runs(session=session, now=lost_at + timedelta(seconds=4)) == []  # backoff honoured
    assert row(session, run_id).status == RunStatus.lost

    assert run_state.resume_lost_runs(session=session, now=lost_at + timedelta(seconds=5)) == [run_id]
    resumed = row(session, run_id)
    assert (resumed.status, resumed.attempt, resumed.auto_resume_streak) == (RunStatus.queued, 2, 1)
    assert resumed.resume_after is None and resumed.output_dir == str(tmp_path / "run")

    # lost again without getting further: the second wait is twice the first
    lost_at = run_and_lose(session, run_id, last_step=5)
    assert row(session, run_id).resume_after == lost_at + timedelta(seconds=10)
    assert run_state.resume_lost_runs(session=session, now=lost_at + timedelta(seconds=10)) == [run_id]

    # a third loss without progress: 2 automatic resumes were allowed, so it waits for a person
    lost_at = run_and_lose(session, run_id, last_step=5)
    gave_up = row(session, run_id)
    assert gave_up.status == RunStatus.lost and gave_up.resume_after is None and gave_up.auto_resume_streak == 2
    assert run_state.resume_lost_runs(session=session, now=lost_at + timedelta(days=1)) == []
    assert history(session, run_id) == [
        ("lost", 1, "worker gone"), ("auto_resumed", 2, "attempt 1 of 2, after 5 s"),
        ("lost", 2, "worker gone"), ("auto_resumed", 3, "attempt 2 of 2, after 10 s"),
        ("lost", 3, "worker gone"), ("gave_up", 3, "after 2 automatic resume(s) in a row without progress"),
    ]  # fmt: skip
    assert statuses(run_id) == ["running", "lost", "queued"] * 2 + ["running", "lost"]


def test_progress_or_success_resets_the_streak(session, healing, tmp_path):
    run_id = checkpointed_run(session, tmp_path)
    lost_at = run_and_lose(session, run_id, last_step=5)
    assert run_state.resume_lost_runs(session=session, now=lost_at + timedelta(seconds=5)) == [run_id]
    assert row(session, run_id).auto_resume_streak == 1

    lost_at = run_and_lose(session, run_id, last_step=9)  # further than at its last loss: a fresh streak
    progressed = row(session, run_id)
    assert progressed.auto_resume_streak == 0 and progressed.resume_after == lost_at + timedelta(seconds=5)
    assert run_state.resume_lost_runs(session=session, now=lost_at + timedelta(seconds=5)) == [run_id]
    assert row(session, run_id).auto_resume_streak == 1

    run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="0")
    assert run_state.finish_run(session=session, run_id=run_id, status="succeeded", attempt=3)
    assert row(session, run_id).auto_resume_streak == 0


def test_failed_cancelled_and_opted_out_runs_are_never_resumed_automatically(session, healing, tmp_path):
    failed, cancelled = checkpointed_run(session, tmp_path / "f"), checkpointed_run(session, tmp_path / "c")
    for run_id in (failed, cancelled):
        run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="0")
    run_state.finish_run(session=session, run_id=failed, status="failed", error="boom")
    run_state.cancel_run(session=session, run_id=cancelled)
    run_state.finish_run(session=session, run_id=cancelled, status="cancelled")
    opted_out = checkpointed_run(session, tmp_path / "o", spec={"auto_resume_attempts": 0})
    run_and_lose(session, opted_out, last_step=5)
    stopped = checkpointed_run(session, tmp_path / "s")  # lost, about to resume itself, cancelled by a person
    run_and_lose(session, stopped, last_step=5)
    assert run_state.cancel_run(session=session, run_id=stopped).status == RunStatus.cancelled
    assert run_state.cancel_run(session=session, run_id=opted_out) is None  # not resuming itself: nothing to stop

    assert run_state.resume_lost_runs(session=session, now=utcnow() + timedelta(days=1)) == []
    assert [row(session, r).status for r in (failed, cancelled, opted_out, stopped)] == [
        "failed", "cancelled", "lost", "cancelled"
    ]  # fmt: skip
    assert row(session, stopped).resume_after is None
    assert row(session, opted_out).resume_after is None
    assert history(session, opted_out) == [("lost", 1, "worker gone")]  # nothing given up: it never tried
    assert history(session, failed) == history(session, cancelled) == []


def test_a_spec_can_only_lower_the_limit_and_a_run_without_checkpoint_waits_for_a_person(session, healing, tmp_path):
    from core_distill.spec import DistillSpec, SpecError

    assert run_state.auto_resume_limit({"auto_resume_attempts": 1}) == 1
    assert run_state.auto_resume_limit({"auto_resume_attempts": 50}) == 2  # the setting is the ceiling
    assert run_state.auto_resume_limit({}) == 2
    with pytest.raises(SpecError, match="auto_resume_attempts: Input should be greater than or equal to 0"):
        DistillSpec.parse({"auto_resume_attempts": -1})

    run_id = new_run(session, output_dir=str(tmp_path / "empty"))  # lost before its first checkpoint
    lost_at = run_and_lose(session, run_id, last_step=2)
    assert run_state.resume_lost_runs(session=session, now=lost_at + timedelta(seconds=5)) == []
    waiting = row(session, run_id)
    assert waiting.status == RunStatus.lost and waiting.resume_after is None
    assert history(session, run_id)[-1] == ("gave_up", 1, "no checkpoint to resume from; re-run the experiment instead")


def test_a_lost_run_is_requeued_once_by_racing_reapers_and_a_person(session, healing, tmp_path):
    run_id = checkpointed_run(session, tmp_path)
    lost_at = run_and_lose(session, run_id, last_step=5)
    due = lost_at + timedelta(seconds=5)
    with Session(get_engine()) as other:  # a second API process's reaper
        assert run_state.resume_lost_runs(session=session, now=due) == [run_id]
        assert run_state.resume_lost_runs(session=other, now=due) == []
    assert run_state.requeue_run(session=session, run_id=run_id, by="alice") is None  # already queued
    first = run_state.claim_run(session=session, run_id=run_id, worker="a", gpu="0")
    assert first is not None and first.attempt == 2
    assert run_state.claim_run(session=session, run_id=run_id, worker="b", gpu="1") is None
    assert [kind for kind, _, _ in history(session, run_id)] == ["lost", "auto_resumed"]


def test_a_person_resuming_a_lost_run_is_in_its_history_unless_the_queue_refused(session, healing, tmp_path):
    from app.services.runs import healing_line, resume_counts, run_history

    run_id = checkpointed_run(session, tmp_path)
    lost_at = run_and_lose(session, run_id, last_step=5)
    lost = row(session, run_id)
    line = healing_line(lost, {}, run_history(session=session, run_id=run_id), now=lost_at + timedelta(seconds=2))
    assert line == "lost at step 5 (worker gone); resuming automatically in 3 s, attempt 1 of 2"

    before = run_state.snapshot(lost)
    assert run_state.requeue_run(session=session, run_id=run_id, by="alice").resume_after is None
    assert history(session, run_id)[-1] == ("resumed", 2, "by alice")
    assert run_state.undo_requeue(session=session, before=before)  # the broker was down: as before
    assert row(session, run_id).resume_after == lost.resume_after and len(history(session, run_id)) == 1

    run_state.requeue_run(session=session, run_id=run_id, by=None)
    run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="0")
    run_state.finish_run(session=session, run_id=run_id, status="succeeded")
    events_ = run_history(session=session, run_id=run_id)
    assert resume_counts(events_) == (0, 1) and events_[-1].note == "by hand"
    assert healing_line(row(session, run_id), {}, events_) is None
