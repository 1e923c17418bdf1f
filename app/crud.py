"""Queries and writes behind the API and the dashboard, keyword-only (`create_experiment(session=..., ...)`).

Only `app.services` (and `app.run_state` for state changes) call the writes here: they check who
acts and queue runs. Run state changes go through `app.run_state` (one guarded UPDATE each), so the
API, the worker and the reaper never race on a row. Lookups raise `NotFoundError`
(`app.services.errors`, re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import ColumnElement, Float, String, cast, delete, exists, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session, col

from app.models import (
    Experiment,
    ExperimentCreate,
    ExperimentUpdate,
    MetricPoint,
    Run,
    RunStatus,
    Sweep,
    SweepCreate,
)
from app.paths_policy import DATA_FIELDS, MODEL_FIELDS, check_spec_policy
from app.services.errors import ConflictError, NotFoundError, QueueUnavailableError
from app.settings import get_settings
from core_distill.spec import DistillSpec, SpecError

MAX_PAGE = 500
PREFLIGHT_THREADS = 4  # preflights at once; the others wait for one of these threads

_preflight_pool = ThreadPoolExecutor(PREFLIGHT_THREADS, thread_name_prefix="preflight")


# --- experiments --------------------------------------------------------------------------------
def validate_spec(spec: DistillSpec) -> DistillSpec:
    """Everything a spec must pass before a row is written: the server's path and remote-code policy,
    then the engine's preflight (paths exist, vocabularies match). Raises SpecError naming the field."""
    check_spec_policy(spec)
    run_preflight(spec)
    return spec


def run_preflight(spec: DistillSpec) -> None:
    """`spec.preflight()` in the preflight pool, waiting at most `DISTILL_PREFLIGHT_SECONDS` (queueing included).

    The engine bounds its own reads; this bounds the rest (a hub, a file system that stops answering):
    a check that hangs keeps one of the pool's threads; the caller waits no longer than the limit.
    """
    seconds = get_settings().preflight_seconds
    future = _preflight_pool.submit(spec.preflight)
    try:
        future.result(timeout=seconds)
    except FutureTimeout:
        future.cancel()  # still queued: it never needs to run
        message = (
            f"the checks of what the spec points at took longer than {seconds:g} s "
            "(DISTILL_PREFLIGHT_SECONDS); try again, or ask an admin what is slow"
        )
        fields = [name for name in MODEL_FIELDS + DATA_FIELDS if getattr(spec, name)] or ["student"]
        raise SpecError(dict.fromkeys(fields, message)) from None


def add_experiment(*, session: Session, experiment_in: ExperimentCreate, owner: str | None) -> Experiment:
    """Insert an experiment row (its spec already validated: `app.services.experiments.create_experiment`)."""
    experiment = Experiment(
        name=experiment_in.name,
        tags=experiment_in.tags,
        notes=experiment_in.notes,
        spec=experiment_in.spec.model_dump(mode="json"),
        owner=owner,
    )
    session.add(experiment)
    session.commit()
    session.refresh(experiment)
    return experiment


def delete_experiment(*, session: Session, experiment: Experiment) -> None:
    """Delete an experiment that has no runs left (undoing a create the queue refused)."""
    session.delete(experiment)
    session.commit()


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
    sort_key: str | None = None,
    descending: bool = True,
) -> tuple[list[tuple[Run, Experiment]], int]:
    """Runs with their experiment, filtered by run status and experiment fields: newest first, or by the
    latest value of the metric `sort_key` (runs without one last, then newest first)."""
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
    order = [col(Run.created_at).desc(), col(Run.id).desc()]
    if sort_key is not None:  # one index seek per matching run (metricpoint's run_id, key, step index)
        latest = (
            select(MetricPoint.value)
            .where(col(MetricPoint.run_id) == col(Run.id), col(MetricPoint.key) == sort_key)
            .order_by(col(MetricPoint.step).desc())
            .limit(1)
            .correlate(Run)
            .scalar_subquery()
        )
        order.insert(0, (latest.desc() if descending else latest.asc()).nulls_last())
    rows = session.execute(joined.where(*where).order_by(*order).offset(max(skip, 0)).limit(_page(limit))).all()
    return [(run, experiment) for run, experiment in rows], count


def running_runs(*, session: Session) -> list[Run]:
    return list(
        session.execute(select(Run).where(col(Run.status) == RunStatus.running).order_by(col(Run.started_at))).scalars()
    )


def add_run(*, session: Session, experiment: Experiment) -> Run:
    """Insert a queued run of the experiment, committed: the worker reads it by id once the message lands."""
    spec = experiment.spec
    run = Run(experiment_id=experiment.id, max_steps=int(spec.get("max_steps", 0)), gpus=int(spec.get("gpus", 1)))
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def delete_run(*, session: Session, run: Run) -> None:
    """Delete a run nobody has seen yet (undoing a queueing the broker refused)."""
    session.delete(run)
    session.commit()


# --- sweeps -------------------------------------------------------------------------------------
def add_sweep(
    *, session: Session, sweep_in: SweepCreate, owner: str | None, runs: Sequence[tuple[str, DistillSpec]]
) -> tuple[Sweep, list[Run]]:
    """Insert a sweep, one experiment per (group label, spec) of `runs` and a queued run of each, in one
    transaction (the specs already validated: `app.services.sweeps.create_sweep`); the runs in that order."""
    sweep = Sweep(
        name=sweep_in.name, owner=owner, spec=sweep_in.spec.model_dump(mode="json"), grid=sweep_in.grid,
        settings=sweep_in.settings, seeds=sweep_in.seeds, search=sweep_in.search, samples=sweep_in.samples,
        search_seed=sweep_in.search_seed,
    )  # fmt: skip
    session.add(sweep)
    session.flush()
    experiments = []
    for label, spec in runs:
        experiment = Experiment(
            name=f"{sweep_in.name} [{label}] seed {spec.seed}"[:200], tags=[f"sweep:{sweep.id}"],
            spec=spec.model_dump(mode="json"), owner=owner, sweep_id=sweep.id, sweep_group=label,
        )  # fmt: skip
        session.add(experiment)
        experiments.append(experiment)
    session.flush()
    rows = [Run(experiment_id=e.id, max_steps=int(e.spec.get("max_steps", 0)), gpus=int(e.spec.get("gpus", 1)))
            for e in experiments]  # fmt: skip
    session.add_all(rows)
    session.commit()
    session.refresh(sweep)
    for run in rows:
        session.refresh(run)
    return sweep, rows


def delete_sweep(*, session: Session, sweep_id: int) -> None:
    """Delete a sweep with its experiments and runs (undoing a create the queue refused: no run was seen)."""
    experiment_ids = select(Experiment.id).where(col(Experiment.sweep_id) == sweep_id)
    session.execute(delete(Run).where(col(Run.experiment_id).in_(experiment_ids)))
    session.execute(delete(Experiment).where(col(Experiment.sweep_id) == sweep_id))
    session.execute(delete(Sweep).where(col(Sweep.id) == sweep_id))
    session.commit()


def get_sweep(*, session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFoundError(f"no sweep with id {sweep_id}")
    return sweep


def list_sweeps(
    *, session: Session, owner: str | None = None, skip: int = 0, limit: int = 100
) -> tuple[list[Sweep], int]:
    """Sweeps newest first, optionally one owner's; (page, total count)."""
    where = [col(Sweep.owner) == owner] if owner is not None else []
    count = session.execute(select(func.count()).select_from(Sweep).where(*where)).scalar_one()
    rows = session.execute(
        select(Sweep).where(*where).order_by(col(Sweep.created_at).desc(), col(Sweep.id).desc())
        .offset(max(skip, 0)).limit(_page(limit))
    ).scalars()  # fmt: skip
    return list(rows), count


def sweep_runs(*, session: Session, sweep_ids: Sequence[int]) -> list[tuple[Run, Experiment]]:
    """The newest run of every experiment of the sweeps (a re-run replaces its experiment's earlier run), by id."""
    newest = (
        select(func.max(Run.id))
        .join(Experiment, col(Run.experiment_id) == col(Experiment.id))
        .where(col(Experiment.sweep_id).in_(list(sweep_ids)))
        .group_by(col(Run.experiment_id))
    )
    rows = session.execute(
        select(Run, Experiment).join(Experiment, col(Run.experiment_id) == col(Experiment.id))
        .where(col(Run.id).in_(newest)).order_by(col(Run.id))
    ).all()  # fmt: skip
    return [(run, experiment) for run, experiment in rows]


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


__all__ = [
    "ConflictError",
    "NotFoundError",
    "QueueUnavailableError",
    "add_experiment",
    "add_run",
    "add_sweep",
    "delete_experiment",
    "delete_run",
    "delete_sweep",
    "get_experiment",
    "get_run",
    "get_sweep",
    "list_experiments",
    "list_runs",
    "list_sweeps",
    "parse_spec_filters",
    "running_runs",
    "sweep_runs",
    "update_experiment",
    "validate_spec",
]
