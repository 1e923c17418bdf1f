"""The gang scheduler's policy, as a pure function: which queued run gets which GPUs of which host.

No database here: `app.services.booking` takes a snapshot of the live hosts and the waiting runs,
asks `plan` where they go, and books each placement with a guarded transaction.

Policy (`plan`): FIFO with backfill and one head-of-line reservation.
  - Queued runs are considered oldest first (`queued_at`, then id).
  - A run that fits on some host now is booked there: best fit, i.e. the host with the fewest free
    GPUs that still has enough (keeps big holes for big runs), ties by the freshest heartbeat.
  - The oldest run that fits nowhere now (but on some live host once its GPUs are free) reserves
    the host where it will fit soonest: the one with the most free GPUs, sticky across passes
    (`WorkerHost.reserved_for`). A reserved host takes no new run but that one, so it drains and the
    big run starts: small runs cannot starve it. Later runs still start on every other host
    (backfill), so a big run does not block small ones that fit elsewhere.
  - A run asking more GPUs than any live host has waits ("waiting for a host with N GPUs").
  - A CPU-only host has one slot (`cpu`), not GPUs: the reasons a run waits for it say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class HostView:
    name: str
    free: list[str]  # free slot labels, in position order
    total: int
    heartbeat_at: datetime
    reserved_for: int | None = None
    cpu: bool = False  # a CPU-only host: its one slot is not a GPU


@dataclass(frozen=True)
class Ask:
    run_id: int
    gpus: int


@dataclass(frozen=True)
class Placement:
    run_id: int
    host: str
    labels: tuple[str, ...]


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    reservation: tuple[str, int] | None = None  # (host, run id) the host drains for
    waiting: dict[int, str] = field(default_factory=dict)  # run id -> why it waits


def plan(hosts: list[HostView], queued: list[Ask]) -> Plan:
    """Placements for `queued` (oldest first) on `hosts` (live ones), by the policy in the module docstring."""
    free = {h.name: list(h.free) for h in hosts}
    result = Plan()
    queued_ids = {ask.run_id for ask in queued}
    # a reservation sticks while its run still waits; it is dropped (and made again below) otherwise
    reserved = next(((h.name, h.reserved_for) for h in hosts if h.reserved_for in queued_ids), None)
    for ask in queued:
        big_enough = [h for h in hosts if h.total >= ask.gpus]
        if not big_enough:
            result.waiting[ask.run_id] = f"waiting for a host with {ask.gpus} GPUs"
            continue
        fits = [h for h in big_enough if len(free[h.name]) >= ask.gpus]
        if reserved is not None and reserved[1] != ask.run_id:
            fits = [h for h in fits if h.name != reserved[0]]
        elif reserved is not None:  # the reservation's own run waits for its host only
            fits = [h for h in fits if h.name == reserved[0]] or fits
        if fits:
            host = min(fits, key=lambda h: (len(free[h.name]), -h.heartbeat_at.timestamp(), h.name))
            labels, free[host.name] = free[host.name][: ask.gpus], free[host.name][ask.gpus :]
            result.placements.append(Placement(ask.run_id, host.name, tuple(labels)))
            if reserved is not None and reserved[1] == ask.run_id:
                reserved = None
            continue
        if reserved is None:  # the head of the line: drain the host where it fits soonest
            host = max(big_enough, key=lambda h: (len(free[h.name]), h.total, h.name))
            reserved = (host.name, ask.run_id)
        if reserved[1] == ask.run_id:
            host = next(h for h in hosts if h.name == reserved[0])
            result.waiting[ask.run_id] = f"next on {host.name}: {_drain_reason(host, ask.gpus - len(free[host.name]))}"
        else:
            result.waiting[ask.run_id] = _busy_reason(big_enough, ask.gpus)
    result.reservation = reserved
    return result


def _gpus(n: int) -> str:
    return "GPU" if n == 1 else "GPUs"


def _drain_reason(host: HostView, missing: int) -> str:
    if host.cpu:
        return "waiting for the run on its CPU slot to finish"
    return f"waiting for {missing} more {_gpus(missing)} to free up"


def _busy_reason(hosts: list[HostView], gpus: int) -> str:
    """Why a run that fits on `hosts` (all busy) waits: GPUs, a CPU slot, or either."""
    kinds = {h.cpu for h in hosts}
    if kinds == {True}:
        return "waiting for a free CPU slot"
    either = " (or a free CPU slot)" if True in kinds else ""
    return f"waiting for {gpus} free {_gpus(gpus)} on one host{either}"
