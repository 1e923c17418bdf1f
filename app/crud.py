"""Queries and writes behind the API and the dashboard, keyword-only (`create_experiment(session=..., ...)`).

Run state changes go through `app.run_state` (one guarded UPDATE each), so the API, the worker
and the reaper never race on a row. Functions here raise the errors below; the API turns them
into 404 / 409 / 422 / 503 responses and the dashboard into messages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import ColumnElement, Float, String, cast, exists, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col

from app import run_state
from app.models import Experiment, ExperimentCreate, ExperimentUpdate, Run, RunStatus
from app.paths_policy import check_spec_policy
from app.settings import get_settings
from core_distill.checkpoint import latest_checkpoint
from core_distill.spec import DistillSpec, SpecError

log = logging.getLogger(__name__)

MAX_PAGE = 500


class NotFoundError(LookupError):
    """No such experiment or run."""


class ConflictError(RuntimeError):
    """The request does not fit the run's current state (cancel a finished run, resume a running one)."""


class QueueUnavailableError(RuntimeError):
    """The broker could not be reached; nothing was written."""


# --- experiments --------------------------------------------------------------------------------
def validate_spec(spec: DistillSpec) -> DistillSpec:
    """Everything a spec must pass before a row is written: the server's path and remote-code policy,
    then the engine's preflight (paths exist, vocabularies match). Raises SpecError naming the field."""
    check_spec_policy(spec)
    spec.preflight()
    return spec


def create_experiment(
    *, session: Session, experiment_in: ExperimentCreate, owner: str | None
) -> tuple[Experiment, Run | None]:
    """Store an experiment and, if `launch`, queue its first run.

    All or nothing: the spec is checked first, and if the broker cannot take the run the
    experiment and run rows are deleted again and QueueUnavailableError is raised.
    """
    validate_spec(experiment_in.spec)
    experiment = Experiment(
        name=experiment_in.name,
        tags=experiment_in.tags,
        notes=experiment_in.notes,
        spec=experiment_in.spec.model_dump(mode="json"),
        owner=owner,
    )
    session.add(experiment)
    if not experiment_in.launch:
        session.commit()
        session.refresh(experiment)
        return experiment, None
    session.flush()
    run = _new_run(experiment)
    session.add(run)
    session.commit()  # the worker reads the row by id, so it must exist before the message does
    try:
        _enqueue(session=session, run=run)
    except QueueUnavailableError:
        session.delete(run)
        session.flush()  # the run row first: no ORM relationship tells SQLAlchemy the order
        session.delete(experiment)
        session.commit()
        raise
    session.refresh(experiment)
    return experiment, run


def get_experiment(*, session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFoundError(f"no experiment with id {experiment_id}")
    return experiment


def update_experiment(*, session: Session, experiment: Experiment, experiment_in: ExperimentUpdate) -> Experiment:
    """Change name, tags or notes (the spec of an experiment never changes: create a new one)."""
    experiment.sqlmodel_update(experiment_in.model_dump(exclude_unset=True, exclude_none=True))
    session.add(experiment)
    session.commit()
    session.refresh(experiment)
    return experiment


def list_experiments(
    *,
    session: Session,
    name: str | None = None,
    tags: Sequence[str] | None = None,
    owner: str | None = None,
    spec_filters: dict[str, Any] | None = None,
    skip: int = 0,
    limit: int = 100,
) -> tuple[list[Experiment], int]:
    """Experiments newest first, filtered; (page, total count)."""
    dialect = session.get_bind().dialect.name
    where: list[ColumnElement[bool]] = []
    if name:
        where.append(func.lower(Experiment.name).contains(name.lower(), autoescape=True))
    if owner is not None:
        where.append(col(Experiment.owner) == owner)
    where += [_has_tag(tag, dialect) for tag in tags or ()]
    where += _spec_conditions(spec_filters or {})
    count = session.execute(select(func.count()).select_from(Experiment).where(*where)).scalar_one()
    rows = session.execute(
        select(Experiment)
        .where(*where)
        .order_by(col(Experiment.created_at).desc(), col(Experiment.id).desc())
        .offset(max(skip, 0))
        .limit(_page(limit))
    ).scalars()
    return list(rows), count


# --- runs ---------------------------------------------------------------------------------------
def get_run(*, session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"no run with id {run_id}")
    return run


def list_runs(
    *,
    session: Session,
    status: RunStatus | str | Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    spec_filters: dict[str, Any] | None = None,
    experiment_id: int | None = None,
    owner: str | None = None,
    skip: int = 0,
    limit: int = 100,
) -> tuple[list[tuple[Run, Experiment]], int]:
    """Runs newest first with their experiment, filtered by run status and experiment fields."""
    dialect = session.get_bind().dialect.name
    where: list[ColumnElement[bool]] = []
    if status:
        statuses = [status] if isinstance(status, str) else list(status)
        where.append(col(Run.status).in_([RunStatus(s).value for s in statuses]))
    if experiment_id is not None:
        where.append(col(Run.experiment_id) == experiment_id)
    if owner is not None:
        where.append(col(Experiment.owner) == owner)
    where += [_has_tag(tag, dialect) for tag in tags or ()]
    where += _spec_conditions(spec_filters or {})
    joined = select(Run, Experiment).join(Experiment, col(Run.experiment_id) == col(Experiment.id))
    count = session.execute(
        select(func.count())
        .select_from(Run)
        .join(Experiment, col(Run.experiment_id) == col(Experiment.id))
        .where(*where)
    ).scalar_one()
    rows = session.execute(
        joined.where(*where)
        .order_by(col(Run.created_at).desc(), col(Run.id).desc())
        .offset(max(skip, 0))
        .limit(_page(limit))
    ).all()
    return [(run, experiment) for run, experiment in rows], count


def queue_positions(*, session: Session) -> dict[int, int]:
    """{run_id: 1-based place in line} for queued runs, oldest queued first (one GPU queue, FIFO)."""
    ids = session.execute(
        select(Run.id).where(col(Run.status) == RunStatus.queued).order_by(col(Run.queued_at), col(Run.id))
    ).scalars()
    return {run_id: place for place, run_id in enumerate(ids, start=1)}


def running_runs(*, session: Session) -> list[Run]:
    return list(
        session.execute(select(Run).where(col(Run.status) == RunStatus.running).order_by(col(Run.started_at))).scalars()
    )


def rerun_experiment(*, session: Session, experiment: Experiment) -> Run:
    """A fresh run (attempt 1, new folder) of an experiment's spec, queued now."""
    validate_spec(experiment.distill_spec())  # the server's policy or the files may have changed since
    run = _new_run(experiment)
    session.add(run)
    session.commit()
    try:
        _enqueue(session=session, run=run)
    except QueueUnavailableError:
        session.delete(run)
        session.commit()
        raise
    return run


def request_cancel(*, session: Session, run: Run) -> Run:
    """Queued: cancelled now (and its message revoked). Running: flagged; the worker checkpoints and
    stops at its next step. Finished: ConflictError."""
    run_id = run.id
    cancelled = run_state.cancel_run(session=session, run_id=run_id)
    if cancelled is None:
        session.refresh(run)
        raise ConflictError(f"run {run_id} is {run.status}; only queued or running runs can be cancelled")
    if cancelled.status == RunStatus.cancelled and cancelled.celery_task_id:
        _revoke(cancelled.celery_task_id)
    return cancelled


def resume_run(*, session: Session, run: Run) -> Run:
    """Continue a lost, failed or cancelled run from its last checkpoint: same row, attempt + 1, queued."""
    if run.status not in run_state.RESUMABLE:
        raise ConflictError(f"run {run.id} is {run.status}; only lost, failed or cancelled runs can be resumed")
    if not run.output_dir or latest_checkpoint(Path(run.output_dir)) is None:
        raise ConflictError(f"run {run.id} has no checkpoint to resume from; re-run the experiment instead")
    try:
        resumed = run_state.resume_run(session=session, run_id=run.id)
    except Exception as exc:  # the broker: run_state already put the row back
        raise QueueUnavailableError(f"the queue is unreachable, run {run.id} was not resumed: {exc}") from exc
    if resumed is None:  # someone else resumed or changed it in between
        session.refresh(run)
        raise ConflictError(f"run {run.id} is {run.status}; it can no longer be resumed")
    return resumed


# --- spec filters -------------------------------------------------------------------------------
def parse_spec_filters(raw: dict[str, str]) -> dict[str, Any]:
    """{'lmbda': '1.0', 'teacher': 'toy:teacher'} -> typed values; SpecError names unknown fields and bad values."""
    fields = DistillSpec.model_fields
    parsed: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, text in raw.items():
        if name not in fields:
            errors[name] = "is not a spec field (the fields are listed by GET /api/spec/schema)"
            continue
        try:
            parsed[name] = TypeAdapter(fields[name].annotation).validate_strings(text)
        except ValidationError as exc:
            errors[name] = f"{exc.errors()[0]['msg']}, got {text[:200]!r}"
    if errors:
        raise SpecError(errors)
    return parsed


def _spec_conditions(filters: dict[str, Any]) -> list[ColumnElement[bool]]:
    """JSON field comparisons that SQLAlchemy renders as json_extract (SQLite) or ->> (PostgreSQL)."""
    conditions: list[ColumnElement[bool]] = []
    for name, value in filters.items():
        if name not in DistillSpec.model_fields:
            raise SpecError({name: "is not a spec field"})
        field = Experiment.__table__.c.spec[name]
        if isinstance(value, bool):
            conditions.append(field.as_boolean() == value)
        elif isinstance(value, int | float):
            conditions.append(cast(field.as_float(), Float) == float(value))
        else:
            conditions.append(field.as_string() == str(value))
    return conditions


def _has_tag(tag: str, dialect: str) -> ColumnElement[bool]:
    tags = Experiment.__table__.c.tags
    if dialect == "postgresql":
        return cast(tags, JSONB).contains([tag])
    each = func.json_each(tags).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(cast(each.c.value, String) == tag))


def _page(limit: int) -> int:
    return min(max(int(limit), 1), MAX_PAGE)


# --- queue --------------------------------------------------------------------------------------
def _new_run(experiment: Experiment) -> Run:
    return Run(experiment_id=experiment.id, max_steps=int(experiment.spec.get("max_steps", 0)))


def _enqueue(*, session: Session, run: Run) -> None:
    from worker.celery_app import celery_app, enqueue_run  # Celery is imported only by code paths that queue

    if celery_app.conf.broker_url != get_settings().redis_url:
        # the broker moved (tests; `distill up` restarted Redis): drop the pools that still point at the old
        # one, as Celery itself does after a fork
        celery_app._pool = None
        celery_app.amqp._producer_pool = None
    try:
        task_id = enqueue_run(run.id)
    except Exception as exc:  # kombu raises OperationalError, redis ConnectionError, ...
        raise QueueUnavailableError(f"the queue (Redis) is unreachable, nothing was queued: {exc}") from exc
    # only this column: the worker may already be running the row
    session.execute(Run.__table__.update().where(Run.__table__.c.id == run.id).values(celery_task_id=task_id))
    session.commit()
    session.refresh(run)


def _revoke(task_id: str) -> None:
    """Drop a queued message (best effort: the run row already says cancelled, and workers skip such runs)."""
    from worker.celery_app import configure

    try:
        configure().control.revoke(task_id)
    except Exception as exc:
        log.warning("could not revoke task %s (the run is cancelled in the database anyway): %s", task_id, exc)


__all__ = [
    "ConflictError",
    "NotFoundError",
    "QueueUnavailableError",
    "create_experiment",
    "get_experiment",
    "get_run",
    "list_experiments",
    "list_runs",
    "parse_spec_filters",
    "queue_positions",
    "request_cancel",
    "rerun_experiment",
    "resume_run",
    "running_runs",
    "update_experiment",
    "validate_spec",
]
