"""Runs: their place in the queue, cancel and resume (owner or admin). The API and the dashboard call these."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

from sqlmodel import Session, col, select

from app import broker, crud, run_state
from app.models import Run, RunEvent, RunEventKind, RunStatus, utcnow
from app.services import dispatch
from app.services.access import check_may_change
from app.services.errors import ConflictError, QueueUnavailableError
from core_distill.checkpoint import latest_checkpoint


def queue_order(*, session: Session) -> list[int]:
    """Ids of the queued runs in the order they will be considered: oldest queued first (FIFO), ties by id.

    The one place that says who is next: the runs table, the run page, `GET /api/runs/{id}` and
    `GET /api/queue` all number the queue from it.
    """
    query = select(Run.id).where(col(Run.status) == RunStatus.queued).order_by(col(Run.queued_at), col(Run.id))
    return list(session.execute(query).scalars())


def queue_positions(*, session: Session) -> dict[int, int]:
    """{run id: 1-based place in line} for every queued run."""
    return {run_id: place for place, run_id in enumerate(queue_order(session=session), start=1)}


def queue_position(*, session: Session, run_id: int) -> int | None:
    """The run's 1-based place in line, or None when it is not queued."""
    return queue_positions(session=session).get(run_id)


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def cancel_run(*, session: Session, run_id: int, user: str | None) -> Run:
    """Queued: cancelled now (and its message revoked). Lost and about to resume itself: cancelled now.
    Running: flagged; the worker checkpoints and stops at its next step. Finished: ConflictError."""
    run = crud.get_run(session=session, run_id=run_id)
    check_may_change(user, crud.get_experiment(session=session, experiment_id=run.experiment_id), "cancel a run of")
    cancelled = run_state.cancel_run(session=session, run_id=run_id)
    if cancelled is None:
        session.refresh(run)
        raise ConflictError(
            f"run {run_id} is {run.status}; only queued or running runs (or lost ones about to resume themselves) "
            "can be cancelled"
        )
    if cancelled.status == RunStatus.cancelled:
        broker.revoke(cancelled.celery_task_id)
    return cancelled


def resume_run(*, session: Session, run_id: int, user: str | None) -> Run:
    """Continue a lost, failed or cancelled run from its last checkpoint: same row, attempt + 1, queued.

    If the broker cannot take it, the row goes back to what it was and QueueUnavailableError is raised.
    """
    run = crud.get_run(session=session, run_id=run_id)
    check_may_change(user, crud.get_experiment(session=session, experiment_id=run.experiment_id), "resume a run of")
    if run.status not in run_state.RESUMABLE:
        raise ConflictError(f"run {run_id} is {run.status}; only lost, failed or cancelled runs can be resumed")
    if not run.output_dir or latest_checkpoint(Path(run.output_dir)) is None:
        raise ConflictError(f"run {run_id} has no checkpoint to resume from; re-run the experiment instead")
    before = run_state.snapshot(run)
    resumed = run_state.requeue_run(session=session, run_id=run_id, by=user)
    if resumed is None:  # someone else resumed or changed it in between
        session.refresh(run)
        raise ConflictError(f"run {run_id} is {run.status}; it can no longer be resumed")
    try:
        dispatch.queue_run(session=session, run_id=run_id)
    except QueueUnavailableError as exc:
        run_state.undo_requeue(session=session, before=before)
        raise QueueUnavailableError(f"run {run_id} was not resumed: {exc}") from exc
    session.refresh(resumed)
    return resumed


# --- history: lost, resumed, healing ----------------------------------------------------------------
def run_history(*, session: Session, run_id: int) -> list[RunEvent]:
    """The run's transitions that matter (RunEvent), oldest first."""
    query = select(RunEvent).where(col(RunEvent.run_id) == run_id).order_by(col(RunEvent.id))
    return list(session.execute(query).scalars())


def header_lines(history: list[RunEvent]) -> list[str]:
    """The engine's header of the run's latest attempt that had one (e.g. "vocabulary cut from ..."), one line each."""
    headers = [event.note for event in history if event.kind == RunEventKind.header]
    return headers[-1].splitlines() if headers else []


def warning_lines(history: list[RunEvent]) -> list[str]:
    """The engine's warnings about the run's latest attempt (e.g. its evaluations fell below step 0)."""
    latest = max((event.attempt for event in history), default=0)
    return [event.note for event in history if event.kind == RunEventKind.warning and event.attempt == latest]


def resume_counts(history: list[RunEvent]) -> tuple[int, int]:
    """(automatic resumes, resumes by a person) in a run's history."""
    kinds = [event.kind for event in history]
    return kinds.count(RunEventKind.auto_resumed), kinds.count(RunEventKind.resumed)


def healing_line(run: Run, spec: dict, history: list[RunEvent], now: datetime | None = None) -> str | None:
    """The run page's one line on losing and healing: 'lost at step 120 (worker gone); resuming automatically
    in 8 s, attempt 2 of 3', '... not resuming automatically (why)', 'resumed automatically 1x'; None if neither."""
    automatic, _ = resume_counts(history)
    if run.status != RunStatus.lost:
        return f"resumed automatically {automatic}x" if automatic else None
    losses = [e for e in history if e.kind == RunEventKind.lost]
    lost = f"lost at step {losses[-1].step} ({losses[-1].note})" if losses else f"lost at step {run.last_step}"
    if run.resume_after is not None:
        seconds = max(0, math.ceil((run.resume_after - (now or utcnow())).total_seconds()))
        limit = run_state.auto_resume_limit(spec)
        return f"{lost}; resuming automatically in {seconds} s, attempt {run.auto_resume_streak + 1} of {limit}"
    if history and history[-1].kind == RunEventKind.gave_up:
        return f"{lost}; not resuming automatically ({history[-1].note}): resume it to continue"
    return f"{lost}; automatic resume is off for this run: resume it to continue"
