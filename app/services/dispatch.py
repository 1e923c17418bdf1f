"""Dispatch: the one place that books GPUs for runs and then publishes them. The API and the worker go through here.

    queue_run  a run was queued (created, re-run, resumed, handed back): book it if GPUs are free and
               publish it on that host's queue, else on the shared queue
    queue_runs the same for many runs at once (a sweep): one scheduling pass, then each published
    take       a worker took a message: book the run here if it waits (or pass it on to the host it is
               booked on) and claim it; a `Claim` to train, or why there is nothing to do
    ended      a run left its GPUs: book the next runs and publish them
    reap       the reaper's pass (`start_reaper`, in `distill api`): silent runs lost, lost runs resumed
               (app.run_state.resume_lost_runs), waiting runs booked and published, queued runs the broker
               lost published again

Booking (`app.services.booking`) only touches the database and the policy (`app.services.placement`)
is pure; publishing is `app.broker`. A booking always commits before its message is sent, so a worker
never reads a run its message got ahead of.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import update
from sqlmodel import Session

from app import broker, run_state
from app.db_retry import Reachability
from app.models import Experiment, Run, RunStatus
from app.services import booking
from app.services.booking import CPU_LABEL
from app.services.errors import QueueUnavailableError
from app.services.placement import Plan
from app.settings import get_settings

log = logging.getLogger(__name__)


def queue_run(*, session: Session, run_id: int) -> str:
    """Publish a queued run: booked on a host's free GPUs, on that host's queue; otherwise on the shared
    queue, where a worker that takes it books it again. Records the message id on the row;
    QueueUnavailableError (nothing booked) if the broker is down.

    The row must be committed first: the worker reads it by id as soon as the message lands.
    """
    try:
        booked = any(p.run_id == run_id for p in dispatch_waiting(session=session, keep=run_id).placements)
    except Exception as exc:  # the run stays queued: the next pass (reaper loop, a run ending) books it
        session.rollback()
        log.warning("scheduling pass after queueing run %s failed: %s", run_id, exc)
        booked = False
    if not booked:
        return broker.publish(session=session, run_id=run_id)
    try:
        return broker.publish_booked(session=session, run_id=run_id)
    except QueueUnavailableError:
        booking.unbook_run(session=session, run_id=run_id)  # all or nothing: the caller undoes the queueing
        raise


class PartlyQueuedError(QueueUnavailableError):
    """The broker went away during `queue_runs`: the first `published` runs were published, the others are
    queued in the database and booked on nothing (the reaper's reconciler publishes them)."""

    def __init__(self, message: str, published: int):
        super().__init__(message)
        self.published = published


def queue_runs(*, session: Session, run_ids: Sequence[int]) -> list[str]:
    """`queue_run` for many committed runs: one scheduling pass books what fits, then each run is published
    in order (booked ones on their host's queue, the others on the shared queue); their message ids.

    If the broker fails at run k, runs k.. are unbooked again (their GPUs freed) and PartlyQueuedError
    says that k were published; with k == 0 nothing was booked or published (QueueUnavailableError)."""
    wanted = set(run_ids)
    try:
        booked = {p.run_id for p in dispatch_waiting(session=session, keep=wanted).placements} & wanted
    except Exception as exc:  # the runs stay queued: the next pass (reaper loop, a run ending) books them
        session.rollback()
        log.warning("scheduling pass after queueing %d runs failed: %s", len(wanted), exc)
        booked = set()
    messages = []
    for n, run_id in enumerate(run_ids):
        try:
            if run_id in booked:
                messages.append(broker.publish_booked(session=session, run_id=run_id))
            else:
                messages.append(broker.publish(session=session, run_id=run_id))
        except QueueUnavailableError as exc:
            for left in run_ids[n:]:
                if left in booked:
                    booking.unbook_run(session=session, run_id=left)
            raise PartlyQueuedError(str(exc), published=n) from exc
    return messages


def dispatch_waiting(*, session: Session, keep: int | Collection[int] | None = None) -> Plan:
    """One scheduling pass: book what the policy places, then publish each booking on its host's queue (a
    broker error is logged: the reconciler re-publishes booked runs), except the run(s) `keep`, which the
    caller publishes or trains itself."""
    kept = {keep} if isinstance(keep, int) else set(keep or ())
    result = booking.book_waiting(session=session)
    for placement in (p for p in result.placements if p.run_id not in kept):
        try:
            broker.publish_booked(session=session, run_id=placement.run_id)
        except Exception as exc:  # still booked in the database: the reconciler publishes it again
            log.warning("run %s booked on %s but not published: %s", placement.run_id, placement.host, exc)
    return result


@dataclass(frozen=True)
class Claim:
    """A run this worker claimed (now `running`): what the task needs to train it."""

    run_id: int
    attempt: int
    spec: dict
    output_dir: str
    gpus: int
    labels: list[str]  # the booked GPUs (["cpu"]: the CPU slot)


def take(*, session: Session, run_id: int, host: str, message_id: str | None, output_dir: str) -> Claim | str:
    """A worker on `host` took run `run_id`'s message: the claimed run, or why there is nothing to train here
    ("skipped", "booked on H", "waiting for GPUs"). `output_dir` is the folder a fresh run trains into."""
    run = session.get(Run, run_id)
    if run is None or run.status != RunStatus.queued:
        return "skipped"
    if run.host is None:  # waiting for GPUs: a scheduling pass decides where it goes
        dispatch_waiting(session=session, keep=run_id)  # booked here: trained now, without another message
        session.refresh(run)
        if run.status == RunStatus.queued and run.host not in (None, host):
            try:
                broker.publish_booked(session=session, run_id=run_id)
            except QueueUnavailableError as exc:  # still booked: the reconciler publishes it
                log.warning("run %s booked on %s but not published: %s", run_id, run.host, exc)
            return f"booked on {run.host}"
        if run.status == RunStatus.queued and run.host is None:
            # no GPUs for it yet: the scheduler books it when some free up (forget this message)
            session.execute(
                update(Run).where(Run.id == run_id, Run.celery_task_id == message_id).values(celery_task_id=None)
            )
            session.commit()
            return "waiting for GPUs"
    if run.host != host:
        return f"booked on {run.host}" if run.host else "skipped"
    gpu = run.gpu or CPU_LABEL
    claimed = run_state.claim_run(
        session=session, run_id=run_id, worker=host, gpu=gpu, output_dir=output_dir, host=host
    )
    if claimed is None:
        return "skipped"
    experiment = session.get(Experiment, claimed.experiment_id)
    spec = dict(experiment.spec)
    session.commit()  # end the read transaction
    return Claim(run_id, claimed.attempt, spec, claimed.output_dir, claimed.gpus, (claimed.gpu or CPU_LABEL).split(","))


def ended(*, session: Session) -> Plan:
    """A run left its GPUs (finished, lost, handed back): book the next runs and publish them."""
    return dispatch_waiting(session=session)


def hand_back(*, session: Session, run_id: int, attempt: int, last_step: int, host: str) -> bool:
    """A worker shutting down hands its running run back (after a checkpoint): the host takes no new run,
    the run is queued as its next attempt and published. False when the run was no longer this attempt's."""
    booking.stop_host(session=session, name=host)  # first, so the scheduler books it elsewhere
    if run_state.release_run(session=session, run_id=run_id, attempt=attempt, last_step=last_step) is None:
        return False
    try:
        queue_run(session=session, run_id=run_id)
    except QueueUnavailableError as exc:  # still queued in the database: the reconciler re-publishes it
        log.warning("run %s handed back but not re-published: %s", run_id, exc)
    return True


def reap(*, session: Session, reach: Reachability | None = None) -> None:
    """The reaper's pass: silent runs lost, lost runs whose backoff passed queued again (healing), GPUs freed
    by them and hosts that came or went used by booking waiting runs, queued runs the broker does not hold
    published again. `reach`: the reaper's record of database outages (runs get lost_after_seconds of grace
    after one)."""
    run_state.reap_lost_runs(session=session, not_before=reach.last_failure_at if reach else None)
    for run_id in run_state.resume_lost_runs(session=session):
        try:
            queue_run(session=session, run_id=run_id)
        except QueueUnavailableError as exc:  # queued in the database: the reconciler below publishes it later
            log.warning("lost run %s resumed automatically but not published: %s", run_id, exc)
    if get_settings().redis_url:
        dispatch_waiting(session=session)
        broker.republish_missing(session=session)


def start_reaper(stop_event: threading.Event, interval_seconds: float | None = None) -> threading.Thread:
    """A daemon thread that runs `reap` every few seconds until stop_event is set (`distill api`)."""
    from app.db import get_engine

    interval = interval_seconds or max(0.5, min(5.0, get_settings().lost_after_seconds / 4))
    reach = Reachability("reaper")

    def loop() -> None:
        while not stop_event.wait(interval):
            try:
                with Session(get_engine()) as session:
                    reap(session=session, reach=reach)
                reach.reached()
            except Exception as exc:  # a database or broker hiccup must not end the reaper
                if not reach.noted(exc):  # an outage is logged once; heartbeats could not land meanwhile
                    log.warning("reaper pass failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, interval)

    thread = threading.Thread(target=loop, name="distill-reaper", daemon=True)
    thread.start()
    return thread
