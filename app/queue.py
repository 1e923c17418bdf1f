"""The run queue as the app sees it: a small interface, implemented by Celery in `worker/queue.py`.

The app never imports the worker: `DISTILL_QUEUE` (default `worker.queue:CeleryQueue`) names the
implementation, loaded once by `get_queue()` (create_app does so at start; tests may `use()` their
own). The database row stays the truth; a message only carries a run id, so publishing twice is
harmless (the guarded claim in `app.run_state` runs a run once).

`enqueue_run` is the one enqueue path (create, re-run, resume, the reconciler);
`republish_missing` makes the broker agree with the database after it lost its queue.
"""

from __future__ import annotations

import importlib
import logging
from datetime import timedelta
from typing import Protocol

from sqlalchemy import update
from sqlmodel import Session, col, select

from app.models import Run, RunStatus, utcnow
from app.services.errors import QueueUnavailableError
from app.settings import get_settings

log = logging.getLogger(__name__)


class RunQueue(Protocol):
    def enqueue(self, run_id: int) -> str:
        """Publish a message for `run_id`; returns its message (task) id. Raises when the broker is down."""
        ...

    def revoke(self, message_id: str) -> None:
        """Drop a published message if the broker still holds it (best effort)."""
        ...

    def waiting(self) -> set[int]:
        """The run ids whose messages the broker holds now, not yet taken by a worker."""
        ...


_queue: RunQueue | None = None


def use(queue: RunQueue | None) -> None:
    """Wire the queue implementation (None: load DISTILL_QUEUE again on next use)."""
    global _queue
    _queue = queue


def get_queue() -> RunQueue:
    """The wired queue, loading `module:attribute` from DISTILL_QUEUE the first time."""
    if _queue is None:
        module, _, name = get_settings().queue.partition(":")
        use(getattr(importlib.import_module(module), name)())
    return _queue


def enqueue_run(*, session: Session, run_id: int) -> str:
    """Publish a queued run and record its message id on the row; QueueUnavailableError if the broker is down.

    The row must be committed first: the worker reads it by id as soon as the message lands.
    """
    try:
        message_id = get_queue().enqueue(run_id)
    except Exception as exc:  # kombu OperationalError, redis ConnectionError, ...
        raise QueueUnavailableError(f"the queue (Redis) is unreachable, nothing was queued: {exc}") from exc
    # only this column: the worker may already be running the row
    session.execute(update(Run).where(col(Run.id) == run_id).values(celery_task_id=message_id))
    session.commit()
    return message_id


def revoke(message_id: str | None) -> None:
    """Drop a queued message (best effort: the row already says cancelled, and workers skip such runs)."""
    if not message_id:
        return
    try:
        get_queue().revoke(message_id)
    except Exception as exc:
        log.warning("could not revoke message %s (the run is cancelled in the database anyway): %s", message_id, exc)


def republish_missing(*, session: Session, older_than_seconds: float | None = None) -> list[int]:
    """Re-publish, oldest queued first, the runs the database calls queued but the broker does not hold.

    That is what a broker restarted without its data (Redis without AOF) or a worker killed between
    taking a message and claiming its run leave behind. Runs queued in the last `older_than_seconds`
    (DISTILL_RECONCILE_AFTER_SECONDS) are left alone: their message may be on its way. A message a worker took but has not claimed
    yet is re-sent too: the guarded claim makes the second one a no-op. Returns the run ids re-sent.
    """
    if older_than_seconds is None:
        older_than_seconds = get_settings().reconcile_after_seconds
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    queued = session.exec(
        select(Run.id)
        .where(col(Run.status) == RunStatus.queued, col(Run.cancel_requested).is_(False), col(Run.queued_at) < cutoff)
        .order_by(col(Run.queued_at), col(Run.id))
    ).all()
    session.commit()  # end the read transaction
    if not queued:
        return []
    held = get_queue().waiting()
    missing = [run_id for run_id in queued if run_id not in held]
    for run_id in missing:
        enqueue_run(session=session, run_id=run_id)
    if missing:
        log.warning("re-published %d queued run(s) the broker did not hold: %s", len(missing), missing)
    return missing
