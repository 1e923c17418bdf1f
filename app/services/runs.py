"""Runs: cancel and resume (owner or admin). The API and the dashboard call these."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session

from app import crud, queue, run_state
from app.models import Run, RunStatus
from app.services.access import check_may_change
from app.services.errors import ConflictError, QueueUnavailableError
from core_distill.checkpoint import latest_checkpoint


def cancel_run(*, session: Session, run_id: int, user: str | None) -> Run:
    """Queued: cancelled now (and its message revoked). Running: flagged; the worker checkpoints and
    stops at its next step. Finished: ConflictError."""
    run = crud.get_run(session=session, run_id=run_id)
    check_may_change(user, crud.get_experiment(session=session, experiment_id=run.experiment_id), "cancel a run of")
    cancelled = run_state.cancel_run(session=session, run_id=run_id)
    if cancelled is None:
        session.refresh(run)
        raise ConflictError(f"run {run_id} is {run.status}; only queued or running runs can be cancelled")
    if cancelled.status == RunStatus.cancelled:
        queue.revoke(cancelled.celery_task_id)
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
    resumed = run_state.requeue_run(session=session, run_id=run_id)
    if resumed is None:  # someone else resumed or changed it in between
        session.refresh(run)
        raise ConflictError(f"run {run_id} is {run.status}; it can no longer be resumed")
    try:
        queue.enqueue_run(session=session, run_id=run_id)
    except QueueUnavailableError as exc:
        run_state.undo_requeue(session=session, before=before)
        raise QueueUnavailableError(f"run {run_id} was not resumed: {exc}") from exc
    session.refresh(resumed)
    return resumed
