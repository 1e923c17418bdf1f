"""Comparing runs, for `GET /api/compare` and the dashboard's Compare tab: which runs (at most
MAX_COMPARED, every id known), each spec field's value per run (and whether it differs), and the
runs' downsampled series of the keys every run has."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlmodel import Session, col, select

from app.metrics_query import downsample_series, metric_keys
from app.models import Experiment, Run
from app.services.errors import NotFoundError
from core_distill.spec import DistillSpec

# More overlaid curves stop being readable (MLflow and W&B default to 10), and the browser draws every
# point as SVG: 10 runs share a chart's point budget (ui/compare.py, docs/benchmarks.md).
MAX_COMPARED = 10


class CompareError(ValueError):
    """Run ids that cannot be compared together (none, or too many); the message says which."""


@dataclass(frozen=True)
class FieldValues:
    name: str
    group: str | None
    values: list[Any]  # one per run, in the runs' order
    differs: bool


def check_run_ids(run_ids: Sequence[int]) -> list[int]:
    """Unique ids, order kept; CompareError unless there are 1 to MAX_COMPARED of them."""
    ids = list(dict.fromkeys(int(i) for i in run_ids))
    if not 1 <= len(ids) <= MAX_COMPARED:
        raise CompareError(f"compare 1 to {MAX_COMPARED} runs, got {len(ids)}")
    return ids


def load_runs(*, session: Session, run_ids: Sequence[int]) -> list[tuple[Run, Experiment]]:
    """The runs with their experiments, in the order asked; NotFoundError names every unknown id."""
    ids = check_run_ids(run_ids)
    rows = session.execute(
        select(Run, Experiment)
        .join(Experiment, col(Run.experiment_id) == col(Experiment.id))
        .where(col(Run.id).in_(ids))
    ).all()
    by_id = {run.id: (run, experiment) for run, experiment in rows}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise NotFoundError(f"no run with id {', '.join(map(str, missing))}")
    return [by_id[i] for i in ids]


def spec_fields(specs: Sequence[dict[str, Any]]) -> list[FieldValues]:
    """Every spec field with its value in each spec (a field a stored spec lacks takes its default)."""
    fields = []
    for name, info in DistillSpec.model_fields.items():
        default = info.get_default(call_default_factory=True)
        values = [spec.get(name, default) for spec in specs]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        differs = len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1
        fields.append(FieldValues(name=name, group=extra.get("group"), values=values, differs=differs))
    return fields


def common_keys(*, session: Session, run_ids: Sequence[int]) -> list[str]:
    """The metric keys every one of the runs has, sorted."""
    key_sets = [set(metric_keys(session, run_id)) for run_id in run_ids]
    return sorted(set.intersection(*key_sets)) if key_sets else []


def series(
    *, session: Session, run_ids: Sequence[int], keys: Sequence[str], max_points: int, x: Literal["step", "wall_time"]
) -> dict[int, dict[str, list[dict[str, float]]]]:
    """{run id: {key: downsampled points}} (app.metrics_query.downsample_series: spikes survive)."""
    return {run_id: downsample_series(session, run_id, list(keys), max_points=max_points, x=x) for run_id in run_ids}
