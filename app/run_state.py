"""The run state machine: every transition is one guarded UPDATE on the Run row.

    queued --book GPUs (app.services.booking)--> queued on a host --claim--> running
    running --finish--> succeeded | failed | cancelled
    queued --cancel--> cancelled           running --reap (no heartbeat)--> lost
    lost | failed | cancelled --requeue (attempt + 1)--> queued
    running --release (worker shutdown, after a checkpoint; attempt + 1)--> queued

The Celery message only carries a run id and may arrive twice (a re-delivery, a user's double
click): the `WHERE status = ...` guards make the second claim a no-op, so no run executes twice.
Each transition commits on its own and then publishes a `status` event for live views; the
database stays the source of truth when Redis is unreachable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from sqlalchemy import func, update
from sqlmodel import Session, select

from app import events
from app.models import Run, RunStatus, utcnow
from app.services.booking import release_gpus
from app.settings import get_settings

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
    extra_guard = [Run.attempt == attempt] if attempt is not None else []
    return _transition(session, run_id, (RunStatus.running,), status, extra_guard, **values) is not None


def mark_lost(*, session: Session, run_id: int, attempt: int, error: str) -> bool:
    """running -> lost for this attempt: every process of a multi-GPU run stopped without recording how it ended."""
    return (
        _transition(session, run_id, (RunStatus.running,), RunStatus.lost, [Run.attempt == attempt], error=error)
        is not None
    )


def release_run(*, session: Session, run_id: int, attempt: int, last_step: int) -> Run | None:
    """running -> queued as the next attempt: a worker shutting down hands its run back (after a checkpoint)."""
    return _transition(
        session, run_id, (RunStatus.running,), RunStatus.queued, [Run.attempt == attempt],
        attempt=attempt + 1, last_step=last_step, queued_at=utcnow(), started_at=None, heartbeat_at=None,
        worker=None, gpu=None,
    )  # fmt: skip


def cancel_run(*, session: Session, run_id: int) -> Run | None:
    """Ask a run to stop: a queued run is cancelled at once; a running one stops (with a checkpoint)
    at its worker's next step. None when the run does not exist or has already finished."""
    cancelled = _transition(session, run_id, (RunStatus.queued,), RunStatus.cancelled, cancel_requested=True)
    if cancelled is not None:
        return cancelled
    flagged = session.execute(
        update(Run).where(Run.id == run_id, Run.status == RunStatus.running).values(cancel_requested=True)
    ).rowcount
    session.commit()
    return session.get(Run, run_id) if flagged == 1 else None


def requeue_run(*, session: Session, run_id: int) -> Run | None:
    """lost | failed | cancelled -> queued as the next attempt, keeping output_dir (resume from its
    last checkpoint). The caller publishes it (`app.services.dispatch.queue_run`); None when not resumable."""
    return _transition(
        session, run_id, RESUMABLE, RunStatus.queued,
        attempt=Run.attempt + 1, cancel_requested=False, queued_at=utcnow(), started_at=None,
        heartbeat_at=None, error=None, worker=None, gpu=None, model_dir=None,
    )  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    """What `undo_requeue` restores: a resumable row's state before it was queued again."""

    run_id: int
    status: str
    attempt: int
    error: str | None
    finished_at: datetime | None


def snapshot(run: Run) -> Snapshot:
    return Snapshot(run.id, run.status, run.attempt, run.error, run.finished_at)


def undo_requeue(*, session: Session, before: Snapshot) -> bool:
    """queued (attempt + 1) -> the state before requeue_run, when the message could not be published.

    Guarded by the attempt: a row a worker already claimed is left alone. False when nothing changed."""
    changed = session.execute(
        update(Run)
        .where(Run.id == before.run_id, Run.status == RunStatus.queued, Run.attempt == before.attempt + 1)
        .values(status=before.status, attempt=before.attempt, error=before.error, finished_at=before.finished_at)
    ).rowcount
    session.commit()
    return changed == 1


def reap_lost_runs(*, session: Session, now: datetime | None = None) -> list[int]:
    """Mark running runs whose heartbeat stopped (older than lost_after_seconds) as lost."""
    settings = get_settings()
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.lost_after_seconds)
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
        run = _transition(session, run_id, (RunStatus.running,), RunStatus.lost, [last_seen < cutoff], error=error)
        if run is not None:
            log.warning("run %s marked lost: %s", run_id, error)
            reaped.append(run_id)
    return reaped


# --- helpers ---------------------------------------------------------------------------------------
def _transition(session: Session, run_id: int, sources, target: RunStatus, extra_guard=(), **values) -> Run | None:
    """One guarded UPDATE `sources -> target`; the refreshed row (and a status event) or None.

    Leaving queued or running (to a final state, or back to the queue) frees the run's GPUs in the same
    transaction, so a GPU is held exactly as long as its run is booked or running."""
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
