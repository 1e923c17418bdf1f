"""The queue as users see it: queued runs in order (and why each waits), which worker runs what, and
each worker host's GPUs with the run holding them (from the database, not the broker: the run rows
and GPU slots are the truth)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import select

from app.api.deps import SessionDep
from app.api.schemas import QueuedRun, QueueState, RunningRun
from app.models import Experiment, HostPublic, Run, RunStatus
from app.services import booking
from app.services import runs as run_service

router = APIRouter(tags=["queue"])


@router.get("/queue", response_model=QueueState)
def queue_state(session: SessionDep) -> QueueState:
    """Queued runs with their place in line, and running runs with their worker and GPU."""
    rows = session.exec(
        select(Run, Experiment)
        .join(Experiment, Run.experiment_id == Experiment.id)
        .where(Run.status.in_([RunStatus.queued, RunStatus.running]))
    ).all()
    positions = run_service.queue_positions(session=session)
    reasons = booking.waiting_reasons(session=session)
    queued = [
        QueuedRun(run_id=r.id, experiment_id=e.id, experiment_name=e.name, owner=e.owner,
                  position=positions[r.id], attempt=r.attempt, queued_at=r.queued_at, gpus=r.gpus, host=r.host,
                  waiting_for=reasons.get(r.id))
        for r, e in rows if r.id in positions
    ]  # fmt: skip
    running = [
        RunningRun(run_id=r.id, experiment_id=e.id, experiment_name=e.name, owner=e.owner, worker=r.worker,
                   gpu=r.gpu, gpus=r.gpus, attempt=r.attempt, started_at=r.started_at, heartbeat_at=r.heartbeat_at,
                   last_step=r.last_step, max_steps=r.max_steps, cancel_requested=r.cancel_requested)
        for r, e in rows if r.status == RunStatus.running
    ]  # fmt: skip
    queued.sort(key=lambda q: q.position)
    running.sort(key=lambda r: (r.worker or "", r.run_id))
    return QueueState(queued=queued, running=running, hosts=booking.list_hosts(session=session))


@router.get("/hosts", response_model=list[HostPublic])
def hosts(session: SessionDep) -> list[HostPublic]:
    """Worker hosts (live ones first), each GPU and the run holding it (booked or running)."""
    return booking.list_hosts(session=session)
