"""Sweeps: a base spec, a grid (or an explicit list) of settings over spec fields, times a list of seeds.

Each (setting, seed) is one experiment (`sweep_id`, `sweep_group` = the setting's label) with one run,
queued through `app.services.dispatch.queue_runs` (one scheduling pass for the whole sweep) like any run:
every host and GPU, the scheduler's rules, ownership, healing after a restart. The REST API, the dashboard and `distill sweep` call these.

    expand_settings  the settings of a request: the grid's combinations (all, or `samples` drawn at
                     random with `search_seed`), or its explicit list; nothing queried, nothing stored
    plan_runs        every run's spec (base + setting + seed), each validated, before anything is stored
    create_sweep     plan, check what the specs point at, store all, queue all (all or nothing)
    get_sweep        the view: groups with their runs and the mean +- sd over seeds of each final eval metric
"""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from app import broker, crud, run_state
from app.metrics_query import final_values
from app.models import (
    MAX_GROUP_LABEL,
    Experiment,
    MetricSummary,
    Run,
    RunStatus,
    Sweep,
    SweepCreate,
    SweepGroupView,
    SweepPublic,
    SweepRunView,
    SweepSummary,
    SweepView,
)
from app.services import booking, dispatch
from app.services.access import check_may_change_sweep
from app.services.errors import ConflictError, QueueUnavailableError, SweepError, SweepTooLarge
from app.settings import get_settings
from core_distill import metric_keys as mk
from core_distill.spec import DistillSpec, SpecError, unknown_field_message

log = logging.getLogger(__name__)

BASE_LABEL = "base"  # the label of the empty setting (the base spec alone)

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Setting:
    """One setting of a sweep: the fields it sets over the base spec, its label, and where in the request
    it comes from (for errors: ("grid",) or ("settings", 2))."""

    values: dict[str, Any]
    label: str
    where: Loc

    def loc_of(self, field: str) -> Loc:
        if field not in self.values:
            return ("spec", field)
        return ("grid", field) if self.where == ("grid",) else (*self.where, field)


@dataclass(frozen=True)
class PlannedRun:
    setting: Setting
    seed: int
    spec: DistillSpec


# --- expanding and validating ---------------------------------------------------------------------
def label_of(values: dict[str, Any]) -> str:
    """{"learning_rate": 0.001, "beta": 0.5} -> "learning_rate=0.001, beta=0.5" (strings bare)."""
    if not values:
        return BASE_LABEL
    parts = [f"{k}={v if isinstance(v, str) else json.dumps(v, default=str)}" for k, v in values.items()]
    label = ", ".join(parts)
    return label if len(label) <= MAX_GROUP_LABEL else label[: MAX_GROUP_LABEL - 3] + "..."


def _check_fields(fields: Sequence[str], where: Loc) -> dict[Loc, str]:
    problems: dict[Loc, str] = {}
    for name in fields:
        if name == "seed":
            problems[(*where, name)] = "is set by the sweep's `seeds` list; take it out of the grid or settings"
        elif name not in DistillSpec.model_fields:
            problems[(*where, name)] = unknown_field_message(name)
    return problems


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def expand_settings(sweep_in: SweepCreate, max_runs: int | None = None) -> list[Setting]:
    """The sweep's settings, in a stable order; SweepError names a field that is not a spec field (or is
    `seed`), an empty or repeated value, and a sweep of more than `max_runs` runs (settings x seeds)."""
    max_runs = max_runs or get_settings().sweep_max_runs
    seeds = len(sweep_in.seeds)
    if sweep_in.grid is not None:
        grid = sweep_in.grid
        problems = _check_fields(list(grid), ("grid",))
        for name, values in grid.items():
            if not values:
                problems.setdefault(("grid", name), "needs at least one value")
            elif len({_key(v) for v in values}) != len(values):
                problems.setdefault(("grid", name), f"lists a value twice: {_key(values)[:200]}")
        if problems:
            raise SweepError(problems)
        names = list(grid)
        total = math.prod(len(grid[n]) for n in names)
        count = min(sweep_in.samples, total) if sweep_in.search == "random" else total
        where: Loc = ("samples",) if sweep_in.search == "random" else ("grid",)
        _check_cap(count, seeds, max_runs, where)
        if sweep_in.search == "random":  # k distinct combinations, without building the product
            indices = sorted(random.Random(sweep_in.search_seed).sample(range(total), count))
        else:
            indices = range(total)
        settings = []
        for index in indices:
            values = {}
            for name in reversed(names):  # mixed radix, the last field varying fastest (itertools.product)
                index, digit = divmod(index, len(grid[name]))
                values[name] = grid[name][digit]
            ordered = {name: values[name] for name in names}
            settings.append(Setting(ordered, label_of(ordered), ("grid",)))
        return settings
    if sweep_in.settings is not None:
        if not sweep_in.settings:
            raise SweepError({("settings",): "needs at least one setting"})
        problems = {}
        seen: dict[str, int] = {}
        for i, values in enumerate(sweep_in.settings):
            problems.update(_check_fields(list(values), ("settings", i)))
            first = seen.setdefault(_key(values), i)
            if first != i:
                problems[("settings", i)] = f"repeats setting {first}"
        if problems:
            raise SweepError(problems)
        _check_cap(len(sweep_in.settings), seeds, max_runs, ("settings",))
        return [Setting(dict(v), label_of(v), ("settings", i)) for i, v in enumerate(sweep_in.settings)]
    _check_cap(1, seeds, max_runs, ("seeds",))
    return [Setting({}, BASE_LABEL, ("spec",))]


def _check_cap(settings: int, seeds: int, max_runs: int, where: Loc) -> None:
    if settings * seeds > max_runs:
        raise SweepTooLarge({where: f"asks for {settings * seeds} runs ({settings} settings x {seeds} seeds); a sweep "
                                 f"may have at most {max_runs} (DISTILL_SWEEP_MAX_RUNS)"})  # fmt: skip


def plan_runs(sweep_in: SweepCreate, max_runs: int | None = None) -> list[PlannedRun]:
    """Every run's spec (base + setting + seed), setting by setting, seeds in the given order. Each is
    validated by DistillSpec (field values and cross-field rules); SweepError names the setting and the
    field of every setting that fails (the first failing seed's message)."""
    planned: list[PlannedRun] = []
    problems: dict[Loc, str] = {}
    for setting in expand_settings(sweep_in, max_runs):
        for seed in sweep_in.seeds:
            try:
                spec = sweep_in.spec.with_overrides({**setting.values, "seed": seed})
            except SpecError as exc:
                for field, msg in exc.errors.items():
                    problems.setdefault(setting.loc_of(field), f"{msg} (setting {setting.label}, seed {seed})")
                break
            planned.append(PlannedRun(setting, seed, spec))
    if problems:
        raise SweepError(problems)
    return planned


def check_resources(*, session: Session, planned: Sequence[PlannedRun]) -> None:
    """The server's path policy and the engine's preflight (what the specs point at) once per setting (the
    seed changes neither), and that some host has the GPUs each asks; SweepError names setting and field."""
    problems: dict[Loc, str] = {}
    checked: set[str] = set()
    for run in planned:
        if run.setting.label in checked:
            continue
        checked.add(run.setting.label)
        try:
            crud.validate_spec(run.spec)
            booking.check_gpus_fit(session=session, gpus=run.spec.gpus)
        except SpecError as exc:
            for field, msg in exc.errors.items():
                problems.setdefault(run.setting.loc_of(field), f"{msg} (setting {run.setting.label})")
    if problems:
        raise SweepError(problems)


# --- create, list, read, cancel ----------------------------------------------------------------------
def create_sweep(*, session: Session, sweep_in: SweepCreate, user: str | None) -> SweepView:
    """Store a sweep owned by `user` with one experiment and queued run per (setting, seed), and queue them.

    All or nothing: every run's spec is validated first (SweepError names the setting and field); if the
    broker cannot take the first run, every row is deleted again and QueueUnavailableError is raised. A
    broker lost after that leaves the rest queued in the database, which the reaper's reconciler publishes.
    """
    planned = plan_runs(sweep_in)
    check_resources(session=session, planned=planned)
    sweep, runs = crud.add_sweep(
        session=session, sweep_in=sweep_in, owner=user, runs=[(p.setting.label, p.spec) for p in planned]
    )
    try:
        dispatch.queue_runs(session=session, run_ids=[run.id for run in runs])  # one scheduling pass for all
    except QueueUnavailableError as exc:
        published = getattr(exc, "published", 0)
        if published == 0:
            crud.delete_sweep(session=session, sweep_id=sweep.id)
            raise
        log.warning("sweep %s: the queue went away after %d of %d runs; the reaper publishes the rest",
                    sweep.id, published, len(runs))  # fmt: skip
    return get_sweep(session=session, sweep_id=sweep.id)


def list_sweeps(
    *, session: Session, owner: str | None = None, skip: int = 0, limit: int = 100
) -> tuple[list[SweepSummary], int]:
    """Sweeps newest first (one owner's when given), each with its status and run counts; (page, total)."""
    sweeps, count = crud.list_sweeps(session=session, owner=owner, skip=skip, limit=limit)
    by_sweep: dict[int, list[Run]] = {s.id: [] for s in sweeps}
    for run, experiment in crud.sweep_runs(session=session, sweep_ids=list(by_sweep)):
        by_sweep[experiment.sweep_id].append(run)
    session.commit()  # end the read transaction
    return [_summary(s, by_sweep[s.id]) for s in sweeps], count


def get_sweep(*, session: Session, sweep_id: int) -> SweepView:
    """The sweep with its groups (one per setting, in the sweep's order), each group's runs (one per seed)
    and the mean +- sd over its succeeded runs of the last value of each `eval/...` key."""
    sweep = crud.get_sweep(session=session, sweep_id=sweep_id)
    rows = crud.sweep_runs(session=session, sweep_ids=[sweep_id])
    finals = final_values(session, [run.id for run, _ in rows], mk.EVAL_PREFIX)
    session.commit()  # end the read transaction
    seed_order = {seed: i for i, seed in enumerate(sweep.seeds)}
    groups: dict[str, list[tuple[Run, Experiment]]] = {}
    for run, experiment in sorted(rows, key=lambda r: r[1].id):  # experiments were stored setting by setting
        groups.setdefault(experiment.sweep_group or BASE_LABEL, []).append((run, experiment))
    views = []
    for label, members in groups.items():
        members.sort(key=lambda r: seed_order.get(int(r[1].spec.get("seed", 0)), len(seed_order)))
        runs = [_run_view(run, experiment, finals.get(run.id, {})) for run, experiment in members]
        views.append(SweepGroupView(label=label, setting=_setting_of(sweep, label, members[0][1].spec), runs=runs,
                                    metrics=summarize(runs)))  # fmt: skip
    keys = sorted({key for values in finals.values() for key in values})
    summary = _summary(sweep, [run for run, _ in rows])
    return SweepView(**summary.model_dump(), groups=views, metric_keys=keys)


def sweeps_fingerprint(*, session: Session) -> str:
    """Changes when a sweep is added or one of a sweep's runs changes status (two aggregate queries)."""
    sweeps = session.execute(select(func.count(Sweep.id), func.max(Sweep.id))).one()
    by_status = session.execute(
        select(Run.status, func.count(Run.id)).join(Experiment, col(Run.experiment_id) == col(Experiment.id))
        .where(col(Experiment.sweep_id).is_not(None)).group_by(Run.status)
    ).all()  # fmt: skip
    return f"{tuple(sweeps)}|{sorted(tuple(r) for r in by_status)}"


def sweep_fingerprint(*, session: Session, sweep_id: int) -> str:
    """Changes when a run of the sweep is added, changes status, resumes or makes progress."""
    rows = session.execute(
        select(Run.status, func.count(Run.id), func.sum(Run.last_step), func.sum(Run.attempt), func.max(Run.id))
        .join(Experiment, col(Run.experiment_id) == col(Experiment.id))
        .where(Experiment.sweep_id == int(sweep_id)).group_by(Run.status)
    ).all()  # fmt: skip
    return str(sorted(tuple(r) for r in rows))


def cancel_sweep(*, session: Session, sweep_id: int, user: str | None) -> SweepView:
    """Cancel every unfinished run of the sweep (owner or admin): queued ones at once (their messages
    revoked), running ones at their next step, lost ones about to resume themselves at once. ConflictError
    when none was left to cancel."""
    sweep = crud.get_sweep(session=session, sweep_id=sweep_id)
    check_may_change_sweep(user, sweep, "cancel")
    rows = crud.sweep_runs(session=session, sweep_ids=[sweep_id])
    session.commit()
    cancelled = 0
    for run, _ in rows:
        if RunStatus(run.status).finished and run.resume_after is None:
            continue
        done = run_state.cancel_run(session=session, run_id=run.id)
        if done is None:
            continue  # it finished in between
        cancelled += 1
        if done.status == RunStatus.cancelled:
            broker.revoke(done.celery_task_id)
    if not cancelled:
        raise ConflictError(f"sweep {sweep_id} has no queued or running run left to cancel")
    return get_sweep(session=session, sweep_id=sweep_id)


# --- the view --------------------------------------------------------------------------------------
def sweep_status(runs: Sequence[Run]) -> str:
    """queued: nothing started yet; running: some run unfinished (a lost run about to resume itself counts);
    then cancelled if any run was cancelled, else finished."""
    unfinished = [r for r in runs if not RunStatus(r.status).finished or r.resume_after is not None]
    if unfinished:
        started = any(r.status != RunStatus.queued or r.attempt > 1 for r in runs)
        return "running" if started else "queued"
    return "cancelled" if any(r.status == RunStatus.cancelled for r in runs) else "finished"


def summarize(runs: Sequence[SweepRunView]) -> dict[str, MetricSummary]:
    """Mean and sample sd over the succeeded runs of each final eval metric (sd None for a single run)."""
    values: dict[str, list[float]] = {}
    for run in runs:
        if run.status == RunStatus.succeeded:
            for key, value in run.finals.items():
                values.setdefault(key, []).append(value)
    return {
        key: MetricSummary(mean=statistics.fmean(v), sd=statistics.stdev(v) if len(v) > 1 else None, n=len(v))
        for key, v in sorted(values.items())
    }


def export_rows(view: SweepView) -> list[dict[str, Any]]:
    """One row per run: sweep, group, seed, run, status, steps and the final value of every eval key."""
    rows = []
    for group in view.groups:
        for run in group.runs:
            row: dict[str, Any] = {"sweep_id": view.id, "group": group.label, "seed": run.seed, "run_id": run.run_id,
                                   "experiment_id": run.experiment_id, "status": run.status,
                                   "last_step": run.last_step, "max_steps": run.max_steps}  # fmt: skip
            row.update({key: run.finals.get(key) for key in view.metric_keys})
            rows.append(row)
    return rows


def _summary(sweep: Sweep, runs: Sequence[Run]) -> SweepSummary:
    counts = Counter(run.status for run in runs)
    return SweepSummary(
        **SweepPublic.model_validate(sweep).model_dump(),
        status=sweep_status(runs) if runs else "finished",
        counts={status.value: counts.get(status.value, 0) for status in RunStatus},
        runs=len(runs),
    )


def _run_view(run: Run, experiment: Experiment, finals: dict[str, float]) -> SweepRunView:
    return SweepRunView(
        run_id=run.id, experiment_id=experiment.id, seed=int(experiment.spec.get("seed", 0)), status=run.status,
        attempt=run.attempt, last_step=run.last_step, max_steps=run.max_steps, finals=finals,
    )  # fmt: skip


def _setting_of(sweep: Sweep, label: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The fields the group's setting sets: the grid's fields, or the explicit setting of that label."""
    if sweep.grid is not None:
        return {name: spec.get(name) for name in sweep.grid}
    for values in sweep.settings or []:
        if label_of(values) == label:
            return dict(values)
    return {}


__all__ = [
    "cancel_sweep",
    "create_sweep",
    "expand_settings",
    "export_rows",
    "get_sweep",
    "list_sweeps",
    "plan_runs",
    "summarize",
    "sweep_status",
]
