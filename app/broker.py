"""The run broker: a small interface, implemented by Celery in `worker/queue.py`. It only publishes.

The app never imports the worker: `DISTILL_QUEUE` (default `worker.queue:CeleryQueue`) names the
implementation, loaded once by `get_queue()` (create_app does so at start; tests may `use()` their
own). The database row stays the truth; a message only carries a run id, so publishing twice is
harmless (the guarded claim in `app.run_state` runs a run once).

Deciding what to publish where is `app.services.dispatch`'s job (it books GPUs, then publishes here):
`publish` sends a run to the shared queue or a host's queue, `publish_booked` to the queue of the
host it is booked on; `republish_missing` makes the broker agree with the database after it lost its queue.
"""

from __future__ import annotations

import importlib
import logging
from datetime import timedelta
from typing import Protocol

from sqlalchemy import update
from sqlmodel import Session, col, select

from app.models import Run, RunStatus, WorkerHost, utcnow
from app.services.booking import is_live, live_cutoff
from app.services.errors import QueueUnavailableError
from app.settings import get_settings

log = logging.getLogger(__name__)


class RunQueue(Protocol):
    def enqueue(self, run_id: int, queue: str | None = None) -> str:
        """Publish a message for `run_id` on `queue` (None: the shared queue every worker reads);
        returns its message (task) id. Raises when the broker is down."""
        ...

    def revoke(self, message_id: str) -> None:
        """Drop a published message if the broker still holds it (best effort)."""
        ...

    def waiting(self, queue: str | None = None) -> set[int]:
        """The run ids whose messages the broker holds now on `queue` (None: on any queue), not yet taken."""
        ...

    def workers_answer(self, timeout: float) -> bool:
        """Whether at least one worker answers a ping within `timeout` seconds (False when the broker is down)."""
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


def publish_booked(*, session: Session, run_id: int) -> str:
    """Publish a run booked on a host (Run.host) on that host's own queue; QueueUnavailableError if down."""
    queue_name = session.execute(
        select(WorkerHost.queue).join(Run, col(Run.host) == col(WorkerHost.name)).where(col(Run.id) == run_id)
    ).scalar_one_or_none()
    session.commit()
    if queue_name is None:
        raise ValueError(f"run {run_id} is not booked on a known host")
    return publish(session=session, run_id=run_id, queue_name=queue_name)


def publish(*, session: Session, run_id: int, queue_name: str | None = None) -> str:
    """Publish run `run_id` on `queue_name` (None: the shared queue) and record the message id on the row;
    QueueUnavailableError if the broker is down."""
    try:
        message_id = get_queue().enqueue(run_id, queue_name)
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
    queued = session.execute(
        select(Run.id, WorkerHost.queue, Run.celery_task_id)
        .outerjoin(WorkerHost, col(WorkerHost.name) == col(Run.host))
        .where(col(Run.status) == RunStatus.queued, col(Run.cancel_requested).is_(False), col(Run.queued_at) < cutoff)
        .order_by(col(Run.queued_at), col(Run.id))
    ).all()
    live_cut = live_cutoff()
    any_live_host = any(is_live(h, live_cut) for h in session.execute(select(WorkerHost)).scalars())
    session.commit()  # end the read transaction
    # a booked run belongs on its host's queue; an unbooked one on the shared queue, unless a worker
    # already took that message and found no free GPUs (it cleared the id): scheduling passes place it
    wanted = [
        (run_id, host_queue) for run_id, host_queue, message_id in queued
        if host_queue is not None or message_id is not None or not any_live_host
    ]  # fmt: skip
    if not wanted:
        return []
    held: dict[str | None, set[int]] = {}
    missing = []
    for run_id, host_queue in wanted:
        if host_queue not in held:
            held[host_queue] = get_queue().waiting(host_queue)
        if run_id not in held[host_queue]:
            missing.append(run_id)
            publish(session=session, run_id=run_id, queue_name=host_queue)
    if missing:
        log.warning("re-published %d queued run(s) the broker did not hold: %s", len(missing), missing)
    return missing
