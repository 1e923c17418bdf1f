"""The run state machine: every transition is one guarded UPDATE on the Run row.

    queued --book GPUs (app.services.booking)--> queued on a host --claim--> running
    running --finish--> succeeded | failed | cancelled
    queued | lost (resuming itself) --cancel--> cancelled           running --reap (no heartbeat)--> lost
    lost | failed | cancelled --requeue (attempt + 1)--> queued
    lost --resume_lost_runs (resume_after passed; attempt + 1)--> queued
    running --release (worker shutdown, after a checkpoint; attempt + 1)--> queued

Lost runs heal themselves: losing a run sets `resume_after` (a backoff that doubles per automatic resume
in a row) unless its streak of automatic resumes without progress reached the limit (the setting, or
the spec's lower `auto_resume_attempts`); the reaper's pass then re-queues it. A failed or cancelled
run is never resumed automatically. The transitions that matter add a RunEvent (the run's history)
in the same transaction.

The Celery message only carries a run id and may arrive twice (a re-delivery, a user's double
click): the `WHERE status = ...` guards make the second claim a no-op, so no run executes twice.
Each transition commits on its own and then publishes a `status` event for live views; the
database stays the source of truth when Redis is unreachable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import redis
from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from app import events
from app.models import Experiment, Run, RunEvent, RunEventKind, RunStatus, utcnow
from app.services.booking import release_gpus
from app.settings import get_settings
from core_distill.checkpoint import latest_checkpoint

log = logging.getLogger(__name__)

RESUMABLE = (RunStatus.lost, RunStatus.failed, RunStatus.cancelled)


# --- transitions ---------------------------------------------------------------------------------
def claim_run(
    *, session: Session, run_id: int, worker: str, gpu: str, output_dir: str | None = None, host: str | None = None
) -> Run | None:
    """queued -> running for this worker; None when the run is not queued (or was cancelled meanwhile).

    `output_dir` is recorded only when the row has none, so a resumed run keeps its folder. With
    `host`, only a run booked on that host is claimed (app.services.booking booked its GPUs).
    """
    now = utcnow()
    host_guard = [Run.host == host] if host is not None else []
    claimed = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.queued, Run.cancel_requested.is_(False), *host_guard)
        .values(
            status=RunStatus.running,
            worker=worker,
            gpu=gpu,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            error=None,
            output_dir=func.coalesce(Run.output_dir, output_dir),
        )  # fmt: skip
    ).rowcount
    session.commit()
    if claimed != 1:
        # A queued run whose cancel flag raced the queue: settle it as cancelled so it is not queued forever.
        _transition(session, run_id, (RunStatus.queued,), RunStatus.cancelled, [Run.cancel_requested.is_(True)])
        return None
    run = session.get(Run, run_id)
    session.refresh(run)
    _publish_status(run)
    return run


def heartbeat(*, session: Session, run_id: int, last_step: int | None = None, attempt: int | None = None) -> bool:
    """Touch heartbeat_at (and last_step); True when the worker should stop.

    Stop means: the user asked to cancel, or the row is no longer this attempt's running run
    (the reaper gave up on it, or it was re-queued), so whatever this worker computes is stale.
    """
    values: dict = {"heartbeat_at": utcnow()}
    if last_step is not None:
        values["last_step"] = last_step
    guard = [Run.id == run_id, Run.status == RunStatus.running]
    if attempt is not None:
        guard.append(Run.attempt == attempt)
    touched = session.execute(update(Run).where(*guard).values(**values)).rowcount
    session.commit()
    if touched != 1:
        return True
    cancel = session.execute(select(Run.cancel_requested).where(Run.id == run_id)).scalar_one()
    session.commit()  # end the read transaction: SQLite WAL readers pin old snapshots otherwise
    return bool(cancel)


def finish_run(
    *,
    session: Session,
    run_id: int,
    status: RunStatus | str,
    error: str | None = None,
    model_dir: str | None = None,
    last_step: int | None = None,
    attempt: int | None = None,
) -> bool:
    """running -> succeeded | failed | cancelled; False when the run was not running (nothing changes)."""
    status = RunStatus(status)
    if status not in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled):
        raise ValueError(f"a worker finishes a run as succeeded, failed or cancelled, not {status!r}")
    values: dict = {"error": error, "model_dir": model_dir, "heartbeat_at": utcnow()}
    if last_step is not None:
        values["last_step"] = last_step
    if status == RunStatus.succeeded:
        values["auto_resume_streak"] = 0
    extra_guard = [Run.attempt == attempt] if attempt is not None else []
    return _transition(session, run_id, (RunStatus.running,), status, extra_guard, **values) is not None


def mark_lost(*, session: Session, run_id: int, attempt: int, error: str) -> bool:
    """running -> lost for this attempt: every process of a multi-GPU run stopped without recording how it ended."""
    return _lose(session, run_id, [Run.attempt == attempt], error, "its processes stopped", utcnow()) is not None


def release_run(*, session: Session, run_id: int, attempt: int, last_step: int) -> Run | None:
    """running -> queued as the next attempt: a worker shutting down hands its run back (after a checkpoint)."""
    return _transition(
        session, run_id, (RunStatus.running,), RunStatus.queued, [Run.attempt == attempt],
        attempt=attempt + 1, last_step=last_step, queued_at=utcnow(), started_at=None, heartbeat_at=None,
        worker=None, gpu=None,
    )  # fmt: skip


def cancel_run(*, session: Session, run_id: int) -> Run | None:
    """Ask a run to stop: a queued run is cancelled at once, and so is a lost one waiting to resume itself
    (it stays resumable by hand); a running one stops (with a checkpoint) at its worker's next step. None
    when the run does not exist or has already finished."""
    cancelled = _transition(session, run_id, (RunStatus.queued,), RunStatus.cancelled, cancel_requested=True)
    if cancelled is not None:
        return cancelled
    healing = [col(Run.resume_after).is_not(None)]
    cancelled = _transition(session, run_id, (RunStatus.lost,), RunStatus.cancelled, healing, resume_after=None)
    if cancelled is not None:
        return cancelled
    flagged = session.execute(
        update(Run).where(Run.id == run_id, Run.status == RunStatus.running).values(cancel_requested=True)
    ).rowcount
    session.commit()
    return session.get(Run, run_id) if flagged == 1 else None


def requeue_run(*, session: Session, run_id: int, by: str | None = None) -> Run | None:
    """lost | failed | cancelled -> queued as the next attempt by a person (`by`), keeping output_dir (resume
    from its last checkpoint). The caller publishes it (`app.services.dispatch.queue_run`); None when not resumable."""
    note = f"by {by}" if by else "by hand"
    return _requeue(session, run_id, RESUMABLE, [], RunEventKind.resumed, note)


def _requeue(session: Session, run_id: int, sources, guard, kind: RunEventKind, note: str, **values) -> Run | None:
    """The one re-queueing of a finished run (a person's resume, or an automatic one), with its history line."""
    row = session.execute(select(Run.attempt, Run.last_step).where(Run.id == run_id)).first()
    session.commit()
    if row is None:
        return None
    event = RunEvent(run_id=run_id, kind=kind, attempt=row.attempt + 1, step=row.last_step, note=note)
    return _transition(
        session, run_id, sources, RunStatus.queued, [Run.attempt == row.attempt, *guard], [event],
        attempt=Run.attempt + 1, cancel_requested=False, queued_at=utcnow(), started_at=None,
        heartbeat_at=None, error=None, worker=None, gpu=None, model_dir=None, resume_after=None, **values,
    )  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """What `undo_requeue` restores: a resumable row's state before it was queued again."""

    run_id: int
    status: str
    attempt: int
    error: str | None
    finished_at: datetime | None
    resume_after: datetime | None


def snapshot(run: Run) -> Snapshot:
    return Snapshot(run.id, run.status, run.attempt, run.error, run.finished_at, run.resume_after)


def undo_requeue(*, session: Session, before: Snapshot) -> bool:
    """queued (attempt + 1) -> the state before requeue_run, when the message could not be published
    (and its history line taken back: that resume never happened).

    Guarded by the attempt: a row a worker already claimed is left alone. False when nothing changed."""
    changed = session.execute(
        update(Run)
        .where(Run.id == before.run_id, Run.status == RunStatus.queued, Run.attempt == before.attempt + 1)
        .values(
            status=before.status,
            attempt=before.attempt,
            error=before.error,
            finished_at=before.finished_at,
            resume_after=before.resume_after,
        )  # fmt: skip
    ).rowcount
    if changed == 1:
        session.execute(
            delete(RunEvent).where(
                RunEvent.run_id == before.run_id,
                RunEvent.attempt == before.attempt + 1,
                RunEvent.kind == RunEventKind.resumed,
            )  # fmt: skip
        )
    session.commit()
    return changed == 1


def reap_lost_runs(*, session: Session, now: datetime | None = None, not_before: datetime | None = None) -> list[int]:
    """Mark running runs whose heartbeat stopped (older than lost_after_seconds) as lost.

    `not_before`: when the reaper last failed to reach the database. Heartbeats could not land then
    either, so silence counts from that moment at the earliest: nothing is lost until lost_after_seconds after it."""
    settings = get_settings()
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.lost_after_seconds)
    if not_before is not None and not_before >= cutoff:
        return []
    last_seen = func.coalesce(Run.heartbeat_at, Run.started_at)
    stale = session.execute(
        select(Run.id, Run.worker, Run.last_step).where(Run.status == RunStatus.running, last_seen < cutoff)
    ).all()
    session.commit()
    reaped = []
    for run_id, worker, last_step in stale:
        error = (
            f"lost: worker {worker or '?'} sent no heartbeat for over {settings.lost_after_seconds:g} s "
            f"(it was killed or its machine stopped); resume the run to continue from its last checkpoint "
            f"(metrics are stored up to step {last_step})"
        )
        # the guard re-checks staleness: a heartbeat that lands meanwhile keeps the run alive
        run = _lose(session, run_id, [last_seen < cutoff], error, "worker gone", now)
        if run is not None:
            log.warning("run %s marked lost: %s", run_id, error)
            reaped.append(run_id)
    return reaped


# --- lost runs heal themselves ---------------------------------------------------------------------
def auto_resume_limit(spec: dict) -> int:
    """Automatic resumes in a row a lost run of this spec gets: the setting, or the spec's lower number."""
    allowed = get_settings().auto_resume_attempts
    asked = spec.get("auto_resume_attempts")
    return allowed if asked is None else min(allowed, int(asked))


def auto_resume_backoff(streak: int) -> float:
    """Seconds before automatic resume number streak + 1: the base wait, doubled for each one before it."""
    return get_settings().auto_resume_backoff_seconds * 2**streak


def resume_lost_runs(*, session: Session, now: datetime | None = None) -> list[int]:
    """lost -> queued (attempt + 1, from the last checkpoint) for each lost run whose resume_after has passed;
    the ids re-queued, which the caller publishes (`app.services.dispatch.reap`).

    The limit is read again (the setting may have been lowered since the loss), and a run without a
    checkpoint is left for a person, as a manual resume would refuse it. Two reapers cannot both re-queue
    a run: the transition is guarded by the attempt and resume_after, and claim_run by the status."""
    now = now or utcnow()
    due = session.execute(
        select(Run.id, Run.output_dir, Run.auto_resume_streak, Experiment.spec)
        .join(Experiment, col(Experiment.id) == col(Run.experiment_id))
        .where(Run.status == RunStatus.lost, col(Run.resume_after).is_not(None), col(Run.resume_after) <= now)
        .order_by(col(Run.resume_after))
    ).all()
    session.commit()
    resumed = []
    for run_id, output_dir, streak, spec in due:
        limit = auto_resume_limit(spec)
        if streak >= limit:
            _give_up(session, run_id, _no_progress(streak))
        elif not output_dir or latest_checkpoint(Path(output_dir)) is None:
            _give_up(session, run_id, "no checkpoint to resume from; re-run the experiment instead")
        else:
            note = f"attempt {streak + 1} of {limit}, after {auto_resume_backoff(streak):g} s"
            guard = [Run.resume_after <= now]
            run = _requeue(session, run_id, (RunStatus.lost,), guard, RunEventKind.auto_resumed, note,
                           auto_resume_streak=streak + 1)  # fmt: skip
            if run is not None:
                log.warning("lost run %s resumed automatically (%s)", run_id, note)
                resumed.append(run_id)
    return resumed


def _no_progress(streak: int) -> str:
    return f"after {streak} automatic resume(s) in a row without progress"


def _lose(session: Session, run_id: int, guard, error: str, why: str, now: datetime) -> Run | None:
    """running -> lost, with its history, and resume_after set when the run may still resume itself.

    The streak of automatic resumes starts again when the run got further than at its previous loss."""
    row = session.execute(
        select(Run.attempt, Run.last_step, Run.auto_resume_streak, Experiment.spec)
        .join(Experiment, col(Experiment.id) == col(Run.experiment_id))
        .where(Run.id == run_id)
    ).first()
    previous_loss = session.execute(
        select(RunEvent.step).where(RunEvent.run_id == run_id, RunEvent.kind == RunEventKind.lost)
        .order_by(col(RunEvent.id).desc()).limit(1)
    ).scalar()  # fmt: skip
    session.commit()
    if row is None:
        return None
    streak = 0 if previous_loss is not None and row.last_step > previous_loss else row.auto_resume_streak
    limit = auto_resume_limit(row.spec)
    history = [RunEvent(run_id=run_id, kind=RunEventKind.lost, attempt=row.attempt, step=row.last_step, note=why)]
    resume_after = now + timedelta(seconds=auto_resume_backoff(streak)) if streak < limit else None
    if resume_after is None and limit > 0:
        history.append(RunEvent(run_id=run_id, kind=RunEventKind.gave_up, attempt=row.attempt, step=row.last_step,
                                note=_no_progress(streak)))  # fmt: skip
    return _transition(
        session, run_id, (RunStatus.running,), RunStatus.lost, guard, history,
        error=error, auto_resume_streak=streak, resume_after=resume_after,
    )  # fmt: skip


def _give_up(session: Session, run_id: int, why: str) -> None:
    """A lost run waiting to resume itself stays lost for a person to resume (once, with its history line)."""
    row = session.execute(select(Run.attempt, Run.last_step).where(Run.id == run_id)).first()
    changed = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.lost, col(Run.resume_after).is_not(None))
        .values(resume_after=None)
    ).rowcount
    if changed == 1:
        session.add(RunEvent(run_id=run_id, kind=RunEventKind.gave_up, attempt=row.attempt, step=row.last_step,
                             note=why))  # fmt: skip
        log.warning("lost run %s left for a person to resume: %s", run_id, why)
    session.commit()


# --- helpers ---------------------------------------------------------------------------------------
def _transition(
    session: Session, run_id: int, sources, target: RunStatus, extra_guard=(), history=(), **values
) -> Run | None:
    """One guarded UPDATE `sources -> target`; the refreshed row (and a status event) or None.

    Leaving queued or running (to a final state, or back to the queue) frees the run's GPUs in the same
    transaction, so a GPU is held exactly as long as its run is booked or running; the `history` rows
    (RunEvent) are added in it too, so the history tells only what happened."""
    if target in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled, RunStatus.lost):
        values.setdefault("finished_at", utcnow())
    elif target == RunStatus.queued:
        values.setdefault("finished_at", None)
    if target != RunStatus.running:
        values.setdefault("host", None)
    changed = session.execute(
        update(Run).where(Run.id == run_id, Run.status.in_(list(sources)), *extra_guard).values(status=target, **values)
    ).rowcount
    if changed == 1 and target != RunStatus.running:
        release_gpus(session, run_id)
    if changed == 1:
        session.add_all(history)
    session.commit()
    if changed != 1:
        return None
    run = session.get(Run, run_id)
    session.refresh(run)
    _publish_status(run)
    return run


_clients: dict[str, redis.Redis] = {}


def _publish_status(run: Run) -> None:
    url = get_settings().redis_url
    if not url:
        return
    try:
        client = _clients.get(url) or _clients.setdefault(url, events.redis_client(url))
        events.publish(client, run.id, "status", {"status": run.status, "error": run.error, "last_step": run.last_step})
    except redis.RedisError as exc:  # the row is the truth; live views catch up on their next read
        log.warning("could not publish the status of run %s: %s", run.id, exc)
