"""Experiments: create (and queue the first run), edit name/tags/notes, re-run. The API and the dashboard call these."""

from __future__ import annotations

from sqlmodel import Session

from app import crud
from app.models import Experiment, ExperimentCreate, ExperimentUpdate, Run
from app.services import booking, dispatch
from app.services.access import check_may_change
from app.services.errors import QueueUnavailableError


def create_experiment(
    *, session: Session, experiment_in: ExperimentCreate, user: str | None
) -> tuple[Experiment, Run | None]:
    """Store an experiment owned by `user` and, if `launch`, queue its first run.

    All or nothing: the spec is checked first (SpecError names the field), and if the broker cannot
    take the run, the experiment and run rows are deleted again and QueueUnavailableError is raised.
    """
    crud.validate_spec(experiment_in.spec)
    booking.check_gpus_fit(session=session, gpus=experiment_in.spec.gpus)
    experiment = crud.add_experiment(session=session, experiment_in=experiment_in, owner=user)
    if not experiment_in.launch:
        return experiment, None
    run = crud.add_run(session=session, experiment=experiment)
    try:
        dispatch.queue_run(session=session, run_id=run.id)
    except QueueUnavailableError:
        crud.delete_run(session=session, run=run)
        crud.delete_experiment(session=session, experiment=experiment)
        raise
    session.refresh(experiment)
    session.refresh(run)
    return experiment, run


def update_experiment(
    *, session: Session, experiment_id: int, experiment_in: ExperimentUpdate, user: str | None
) -> Experiment:
    """Rename an experiment or change its tags or notes (owner or admin)."""
    experiment = crud.get_experiment(session=session, experiment_id=experiment_id)
    check_may_change(user, experiment, "edit")
    return crud.update_experiment(session=session, experiment=experiment, experiment_in=experiment_in)


def rerun_experiment(*, session: Session, experiment_id: int, user: str | None) -> Run:
    """A fresh run (attempt 1, new folder) of the experiment's spec, queued now (owner or admin)."""
    experiment = crud.get_experiment(session=session, experiment_id=experiment_id)
    check_may_change(user, experiment, "re-run")
    crud.validate_spec(experiment.distill_spec())  # the server's policy or the files may have changed since
    booking.check_gpus_fit(session=session, gpus=experiment.distill_spec().gpus)
    run = crud.add_run(session=session, experiment=experiment)
    try:
        dispatch.queue_run(session=session, run_id=run.id)
    except QueueUnavailableError:
        crud.delete_run(session=session, run=run)
        raise
    session.refresh(run)
    return run
