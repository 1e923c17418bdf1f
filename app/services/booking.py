"""Worker hosts, their GPUs, and bookings: the database side of scheduling. Nothing here publishes.

The database is the source of truth. A worker host announces itself and its GPUs (`announce_host`)
and keeps a heartbeat; each GPU is a `GpuSlot` row whose `run_id` says which run holds it. A run
asking N GPUs is booked on N free GPUs of ONE host by a guarded transaction (`book`): the run row
(`status = queued AND host IS NULL`), then the host row (live, not reserved for another run), then
the N slots (`run_id IS NULL`); if any UPDATE matches fewer rows than it should, nothing is written.
Two schedulers racing therefore never double-book a GPU: the loser's guard fails and it rolls back.
Locks are always taken in the order run -> host -> slots, so PostgreSQL cannot deadlock on them.

`book_waiting` is one scheduling pass: it books what the policy (`app.services.placement.plan`)
places and returns the plan; `app.services.dispatch` publishes the bookings. A booked run is claimed
by its host's worker (`app.run_state.claim_run(host=...)`), which holds the GPUs until the run leaves
`running`: every transition out of queued/running releases its slots in the same transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col

from app.models import GpuPublic, GpuSlot, HostPublic, Run, RunStatus, WorkerHost, utcnow
from app.services.placement import Ask, HostView, Placement, Plan, plan
from app.settings import get_settings
from core_distill.spec import SpecError

log = logging.getLogger(__name__)

CPU_LABEL = "cpu"  # the one slot of a host without GPUs


# --- hosts ---------------------------------------------------------------------------------------
def announce_host(*, session: Session, name: str, labels: list[str], queue: str) -> WorkerHost:
    """Register (or re-register) a worker host with its GPUs; slots held by runs are kept."""
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"a host needs distinct GPU labels, got {labels}")
    now = utcnow()
    host = session.get(WorkerHost, name)
    if host is None:
        host = WorkerHost(name=name, queue=queue)
    host.queue, host.started_at, host.heartbeat_at, host.stopped_at = queue, now, now, None
    session.add(host)
    session.flush()
    existing = {slot.label: slot for slot in session.exec(select(GpuSlot).where(col(GpuSlot.host) == name)).scalars()}
    for position, label in enumerate(labels):
        slot = existing.pop(label, None) or GpuSlot(host=name, label=label)
        slot.position = position
        session.add(slot)
    for gone in existing.values():  # GPUs no longer offered: dropped once free
        if gone.run_id is None:
            session.delete(gone)
    session.commit()
    session.refresh(host)
    return host


def host_heartbeat(*, session: Session, name: str) -> bool:
    """Touch the host's heartbeat; False when the host row is gone or stopped (announce again)."""
    touched = session.execute(
        update(WorkerHost).where(col(WorkerHost.name) == name, col(WorkerHost.stopped_at).is_(None))
        .values(heartbeat_at=utcnow())
    ).rowcount  # fmt: skip
    session.commit()
    return touched == 1


def stop_host(*, session: Session, name: str) -> None:
    """A clean shutdown: the host takes no new run (its running runs hand themselves back)."""
    session.execute(update(WorkerHost).where(col(WorkerHost.name) == name).values(stopped_at=utcnow()))
    session.commit()


def live_cutoff(now: datetime | None = None) -> datetime:
    """Hosts silent since before this are dead (the same bound as a run's heartbeat)."""
    return (now or utcnow()) - timedelta(seconds=get_settings().lost_after_seconds)


def is_live(host: WorkerHost, cutoff: datetime) -> bool:
    return host.stopped_at is None and host.heartbeat_at is not None and host.heartbeat_at >= cutoff


def list_hosts(*, session: Session) -> list[HostPublic]:
    """Every known host with its GPUs and the run holding each (live ones first)."""
    cutoff = live_cutoff()
    hosts = session.exec(select(WorkerHost).order_by(col(WorkerHost.name))).scalars().all()
    slots = session.exec(select(GpuSlot).order_by(col(GpuSlot.host), col(GpuSlot.position))).scalars().all()
    session.commit()  # end the read transaction
    by_host: dict[str, list[GpuPublic]] = {}
    for slot in slots:
        by_host.setdefault(slot.host, []).append(GpuPublic(label=slot.label, run_id=slot.run_id))
    views = [
        HostPublic(name=h.name, live=is_live(h, cutoff), heartbeat_at=h.heartbeat_at, stopped_at=h.stopped_at,
                   reserved_for=h.reserved_for, gpus=by_host.get(h.name, []))
        for h in hosts
    ]  # fmt: skip
    return sorted(views, key=lambda v: (not v.live, v.name))


def largest_live_host(*, session: Session) -> tuple[str, int] | None:
    """(name, GPU count) of the live host with the most GPUs; None when no host is live."""
    live = [h for h in list_hosts(session=session) if h.live]
    if not live:
        return None
    best = max(live, key=lambda h: (len(h.gpus), h.name))
    return best.name, len(best.gpus)


def check_gpus_fit(*, session: Session, gpus: int) -> None:
    """SpecError naming `gpus` when no live host has that many GPUs (no live host: accepted, it waits)."""
    largest = largest_live_host(session=session)
    if largest is not None and gpus > largest[1]:
        name, count = largest
        raise SpecError({"gpus": f"asks for {gpus} GPUs, but the largest worker host ({name}) has {count}; "
                                 f"a run's processes all run on one host"})  # fmt: skip


# --- booking (guarded) ---------------------------------------------------------------------------
def book(*, session: Session, placement: Placement, cutoff: datetime | None = None) -> bool:
    """Give the run exactly these GPUs, atomically; False (nothing written) when any guard fails."""
    now = utcnow()
    cutoff = cutoff or live_cutoff(now)
    run_id, name, labels = placement.run_id, placement.host, list(placement.labels)
    try:
        took = session.execute(
            update(Run)
            .where(col(Run.id) == run_id, col(Run.status) == RunStatus.queued, col(Run.host).is_(None),
                   col(Run.cancel_requested).is_(False))
            .values(host=name, gpu=",".join(labels))
        ).rowcount  # fmt: skip
        host_ok = took == 1 and session.execute(
            update(WorkerHost)
            .where(col(WorkerHost.name) == name, col(WorkerHost.stopped_at).is_(None),
                   col(WorkerHost.heartbeat_at) >= cutoff,
                   or_(col(WorkerHost.reserved_for).is_(None), col(WorkerHost.reserved_for) == run_id))
            .values(assigned_at=now, reserved_for=None)
        ).rowcount == 1  # fmt: skip
        got = host_ok and session.execute(
            update(GpuSlot)
            .where(col(GpuSlot.host) == name, col(GpuSlot.label).in_(labels), col(GpuSlot.run_id).is_(None))
            .values(run_id=run_id, assigned_at=now)
        ).rowcount == len(labels)  # fmt: skip
        if not got:
            session.rollback()
            return False
        session.commit()
        return True
    except DBAPIError as exc:  # a lock timeout or deadlock victim: nothing was written, try next pass
        session.rollback()
        log.info("booking run %s on %s failed (%s); retried next pass", run_id, name, type(exc).__name__)
        return False


def release_gpus(session: Session, run_id: int) -> None:
    """Free the run's GPUs (no commit: part of the caller's transition)."""
    session.execute(update(GpuSlot).where(col(GpuSlot.run_id) == run_id).values(run_id=None, assigned_at=None))


def unbook_run(*, session: Session, run_id: int) -> bool:
    """A booked, unclaimed run back to waiting (its GPUs freed); False when it was not booked and queued."""
    changed = session.execute(
        update(Run).where(col(Run.id) == run_id, col(Run.status) == RunStatus.queued, col(Run.host).is_not(None))
        .values(host=None, gpu=None)
    ).rowcount  # fmt: skip
    if changed == 1:
        release_gpus(session, run_id)
    session.commit()
    return changed == 1


def unbook_dead_hosts(*, session: Session, cutoff: datetime | None = None) -> list[int]:
    """Booked-but-unclaimed runs of hosts that stopped or went silent go back to waiting (their GPUs
    freed); reservations on such hosts are dropped. Returns the run ids unbooked."""
    cutoff = cutoff or live_cutoff()
    dead = [
        h.name for h in session.exec(select(WorkerHost)).scalars() if not is_live(h, cutoff)
    ]  # fmt: skip
    session.commit()
    if not dead:
        return []
    runs = session.execute(
        select(Run.id, Run.host).where(col(Run.status) == RunStatus.queued, col(Run.host).in_(dead))
    ).all()
    session.commit()
    unbooked = []
    for run_id, host in runs:
        changed = session.execute(
            update(Run).where(col(Run.id) == run_id, col(Run.status) == RunStatus.queued, col(Run.host) == host)
            .values(host=None, gpu=None)
        ).rowcount  # fmt: skip
        if changed == 1:
            release_gpus(session, run_id)
            unbooked.append(run_id)
        session.commit()
    session.execute(update(WorkerHost).where(col(WorkerHost.name).in_(dead)).values(reserved_for=None))
    # stopped hosts' free GPUs go; held ones stay listed until their runs end
    session.execute(
        delete(GpuSlot).where(col(GpuSlot.host).in_(dead), col(GpuSlot.run_id).is_(None),
                              col(GpuSlot.host).in_(select(WorkerHost.name).where(col(WorkerHost.stopped_at).is_not(None))))
    )  # fmt: skip
    session.commit()
    if unbooked:
        log.warning("runs %s were booked on hosts that went away (%s): waiting again", unbooked, dead)
    return unbooked


def _free_stale_slots(session: Session) -> None:
    """Safety net: slots held by runs that are neither queued nor running are freed."""
    active = select(Run.id).where(col(Run.status).in_([RunStatus.queued, RunStatus.running]))
    session.execute(
        update(GpuSlot).where(col(GpuSlot.run_id).is_not(None), col(GpuSlot.run_id).not_in(active))
        .values(run_id=None, assigned_at=None)
    )  # fmt: skip
    session.commit()


# --- one scheduling pass -------------------------------------------------------------------------
def snapshot(*, session: Session, cutoff: datetime) -> tuple[list[HostView], list[Ask]]:
    """Live hosts with their free GPUs, and the waiting (queued, unbooked, not cancelled) runs, oldest first."""
    hosts = [h for h in session.exec(select(WorkerHost)).scalars() if is_live(h, cutoff)]
    slots = session.exec(
        select(GpuSlot).where(col(GpuSlot.host).in_([h.name for h in hosts])).order_by(col(GpuSlot.position))
    ).scalars().all()  # fmt: skip
    asks = [
        Ask(run_id, max(1, gpus or 1))
        for run_id, gpus in session.execute(
            select(Run.id, Run.gpus)
            .where(col(Run.status) == RunStatus.queued, col(Run.host).is_(None), col(Run.cancel_requested).is_(False))
            .order_by(col(Run.queued_at), col(Run.id))
        ).all()
    ]
    session.commit()  # end the read transaction (SQLite WAL readers pin old snapshots otherwise)
    views = [
        HostView(h.name, [s.label for s in slots if s.host == h.name and s.run_id is None],
                 sum(1 for s in slots if s.host == h.name), h.heartbeat_at, h.reserved_for,
                 cpu=[s.label for s in slots if s.host == h.name] == [CPU_LABEL])
        for h in hosts
    ]  # fmt: skip
    return views, asks


def book_waiting(*, session: Session) -> Plan:
    """One pass: unbook runs of dead hosts, then book what the policy places; the plan's placements are
    the bookings made (the caller publishes them). Race-safe."""
    cutoff = live_cutoff()
    unbook_dead_hosts(session=session, cutoff=cutoff)
    _free_stale_slots(session)
    hosts, asks = snapshot(session=session, cutoff=cutoff)
    result = (
        plan(hosts, asks) if hosts and asks else Plan(waiting={a.run_id: "waiting for a worker host" for a in asks})
    )
    result.placements = [p for p in result.placements if book(session=session, placement=p, cutoff=cutoff)]
    _store_reservation(session, hosts, result.reservation)  # after: runs ahead of it in line were placed first
    for placement in result.placements:
        log.info("run %s -> %s GPU(s) %s", placement.run_id, placement.host, ",".join(placement.labels))
    return result


def _store_reservation(session: Session, hosts: list[HostView], reservation: tuple[str, int] | None) -> None:
    for host in hosts:
        wanted = reservation[1] if reservation and reservation[0] == host.name else None
        if host.reserved_for != wanted:
            session.execute(update(WorkerHost).where(col(WorkerHost.name) == host.name).values(reserved_for=wanted))
    session.commit()


def waiting_reasons(*, session: Session) -> dict[int, str]:
    """Why each unbooked queued run waits (the queue view shows it); computed without booking anything."""
    hosts, asks = snapshot(session=session, cutoff=live_cutoff())
    if not hosts:
        return {a.run_id: f"waiting for a worker host with {a.gpus} GPU(s) to start" for a in asks}
    return plan(hosts, asks).waiting
