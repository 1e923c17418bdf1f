"""What the run views read, for the REST routes and the dashboard alike: a page of runs with their
latest results, the cheap fingerprints the dashboard's refresh ticks compare, and eval samples.

The fingerprints are index lookups only (they run on every tick of every open page); the results
are one index seek per run and key (`app.metrics_query.latest_metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from app import crud
from app.metrics_query import latest_metrics
from app.metrics_query import metric_keys as stored_keys
from app.models import EvalSamples, Experiment, MetricPoint, Run, RunEvent, RunStatus
from app.services import runs as run_service
from core_distill import metric_keys
from core_distill.spec import SpecError

RESULT_KEYS = metric_keys.SUMMARY


@dataclass
class RunsPage:
    rows: list[tuple[Run, Experiment]]
    count: int  # every run that matches, not only this page
    positions: dict[int, int]  # run id -> place in the queue (queued runs only)
    results: dict[int, dict[str, float]]  # run id -> {key: latest value} for RESULT_KEYS


def runs_page(
    *,
    session: Session,
    status: RunStatus | str | Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    spec_filters: dict[str, Any] | None = None,
    experiment_id: int | None = None,
    owner: str | None = None,
    skip: int = 0,
    limit: int = 100,
    sort: str | None = None,
    descending: bool = True,
) -> RunsPage:
    """Runs (`crud.list_runs`' filters), each with its place in the queue and latest results: newest first,
    or by the latest value of `sort` (one of RESULT_KEYS; runs that have none last) across every page."""
    if sort is not None and sort not in RESULT_KEYS:
        raise SpecError({"sort": f"{sort!r} is not a result column; one of {', '.join(RESULT_KEYS)}"})
    rows, count = crud.list_runs(session=session, status=status, tags=tags, spec_filters=spec_filters,
                                 experiment_id=experiment_id, owner=owner, skip=skip, limit=limit, sort_key=sort,
                                 descending=descending)  # fmt: skip
    positions = run_service.queue_positions(session=session)
    run_ids = [run.id for run, _ in rows]
    return RunsPage(rows=rows, count=count, positions=positions, results=results(session=session, run_ids=run_ids))


@dataclass
class RunStatusView:
    run: Run
    experiment: Experiment
    queue_position: int | None  # None unless queued
    history: list[RunEvent]


def run_with_experiment(*, session: Session, run_id: int) -> tuple[Run, Experiment]:
    """The run and its experiment (GET /api/runs/{id}, the dashboard's run panels); NotFoundError if unknown."""
    run = crud.get_run(session=session, run_id=int(run_id))
    return run, crud.get_experiment(session=session, experiment_id=run.experiment_id)


def run_status_view(*, session: Session, run_id: int) -> RunStatusView:
    """What a run's status lines show: the run, its experiment, its place in the queue and its history."""
    run, experiment = run_with_experiment(session=session, run_id=run_id)
    return RunStatusView(
        run=run,
        experiment=experiment,
        queue_position=run_service.queue_position(session=session, run_id=run.id),
        history=run_service.run_history(session=session, run_id=run.id),
    )


def known_keys(*, session: Session, run_ids: Sequence[int]) -> list[str]:
    """Every metric key any of the runs logged, sorted (unknown runs have none)."""
    return sorted({key for run_id in run_ids for key in stored_keys(session, run_id)})


def results(*, session: Session, run_ids: Sequence[int]) -> dict[int, dict[str, float]]:
    """Each run's latest value of each RESULT_KEYS key it logged: {run_id: {key: value}}."""
    return latest_metrics(session, run_ids, RESULT_KEYS)


def runs_fingerprint(*, session: Session) -> str:
    """Changes whenever a run is added, changes status or makes progress."""
    totals = session.execute(select(func.count(Run.id), func.max(Run.id), func.sum(Run.last_step))).one()
    by_status = session.execute(select(Run.status, func.count(Run.id)).group_by(Run.status)).all()
    return f"{tuple(totals)}|{sorted(tuple(r) for r in by_status)}"


def run_fingerprint(*, session: Session, run_id: int) -> str:
    """Changes with anything a run's live view shows (status, progress, a new loss point, new samples);
    "missing" for an unknown run."""
    run = session.execute(
        select(Run.status, Run.last_step, Run.attempt, Run.cancel_requested, Run.resume_after).where(
            Run.id == int(run_id)
        )
    ).first()
    if run is None:
        return "missing"
    newest_point = session.execute(
        select(func.max(MetricPoint.step)).where(MetricPoint.run_id == int(run_id), MetricPoint.key == metric_keys.LOSS)
    ).scalar()
    newest_samples = session.execute(select(func.max(EvalSamples.id)).where(EvalSamples.run_id == int(run_id))).scalar()
    return (
        f"{run.status}|{run.last_step}|{run.attempt}|{run.cancel_requested}|{run.resume_after}|{newest_point}"
        f"|{newest_samples}"
    )


def eval_samples(*, session: Session, run_id: int, step: int | None = None, limit: int = 10) -> list[EvalSamples]:
    """A run's sampled eval completions: at `step`, else the latest `limit` evaluations; oldest first."""
    query = select(EvalSamples).where(col(EvalSamples.run_id) == run_id)
    if step is not None:
        query = query.where(col(EvalSamples.step) == step)
    rows = session.execute(
        query.order_by(col(EvalSamples.step).desc(), col(EvalSamples.id).desc()).limit(limit)
    ).scalars()
    return list(reversed(list(rows)))
