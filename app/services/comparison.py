"""Comparing runs, for `GET /api/compare` and the dashboard's Compare tab: which runs (at most
MAX_COMPARED, every id known), each spec field's value per run (and whether it differs), the runs'
downsampled series of the keys every run has, and their final metrics with the reference rows
(the teacher's score where it is known, the student before training)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func
from sqlmodel import Session, col, select

from app.metrics_query import downsample_series, latest_metrics, metric_keys
from app.models import Experiment, MetricPoint, Run
from app.services.errors import NotFoundError
from core_distill import metric_keys as mk
from core_distill.paths import TOY_SCHEME, toy_dir
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


def differing_fields(specs: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the spec fields whose values differ among the specs, in the spec's field order."""
    return [field.name for field in spec_fields(specs) if field.differs] if len(specs) > 1 else []


def common_keys(*, session: Session, run_ids: Sequence[int]) -> list[str]:
    """The metric keys every one of the runs has, sorted."""
    key_sets = [set(metric_keys(session, run_id)) for run_id in run_ids]
    return sorted(set.intersection(*key_sets)) if key_sets else []


def series(
    *, session: Session, run_ids: Sequence[int], keys: Sequence[str], max_points: int, x: Literal["step", "wall_time"]
) -> dict[int, dict[str, list[dict[str, float]]]]:
    """{run id: {key: downsampled points}} (app.metrics_query.downsample_series: spikes survive)."""
    return {run_id: downsample_series(session, run_id, list(keys), max_points=max_points, x=x) for run_id in run_ids}


# --- final metrics, with the reference rows ---------------------------------------------------------
FINAL_KEYS = mk.FINAL
# the evaluation settings a score depends on: two runs that share them scored the same untrained student
EVAL_SETUP = ("student", "eval_data", "eval_metric", "eval_examples", "eval_temperature", "max_new_tokens", "seed")


def final_rows(*, session: Session, runs: Sequence[tuple[Run, Experiment]]) -> list[dict[str, Any]]:
    """One row per run (status, step, the last value of each FINAL key, the lowest loss), then the
    student before training (step 0's evaluation, one row per evaluation setup) and the teacher
    where its score is known (`teacher_score`). Reference rows have no status and fill only the
    evaluation columns."""
    ids = [run.id for run, _ in runs]
    latest = latest_metrics(session, ids, FINAL_KEYS)
    min_loss = dict(
        session.execute(
            select(MetricPoint.run_id, func.min(MetricPoint.value))
            .where(col(MetricPoint.run_id).in_(ids), MetricPoint.key == mk.LOSS)
            .group_by(MetricPoint.run_id)
        ).all()
    )
    rows = []
    for run, experiment in runs:
        row = {"run": run_label(run, experiment), "status": run.status, "step": run.last_step}
        row.update({key: _round(latest[run.id].get(key)) for key in FINAL_KEYS})
        row["min loss"] = _round(min_loss.get(run.id))
        rows.append(row)
    return rows + student_before_rows(session=session, runs=runs) + teacher_rows(runs)


def run_label(run: Run, experiment: Experiment) -> str:
    return f"#{run.id} {experiment.name}"


def student_before_rows(*, session: Session, runs: Sequence[tuple[Run, Experiment]]) -> list[dict[str, Any]]:
    """The step-0 evaluation (the engine evaluates before the first update): one row per evaluation
    setup, from the first run of that setup that has one."""
    step0: dict[int, dict[str, float]] = {}
    for run_id, key, value in session.execute(
        select(MetricPoint.run_id, MetricPoint.key, MetricPoint.value).where(
            col(MetricPoint.run_id).in_([run.id for run, _ in runs]), MetricPoint.step == 0,
            col(MetricPoint.key).startswith(mk.EVAL_PREFIX),
        )
    ):  # fmt: skip
        step0.setdefault(run_id, {})[key] = value
    rows: dict[tuple, dict[str, Any]] = {}
    for run, experiment in runs:
        setup = tuple(json.dumps(experiment.spec.get(name), default=str) for name in EVAL_SETUP)
        if run.id in step0 and setup not in rows:
            label = f"student before: {experiment.spec.get('student')} (#{run.id} at step 0)"
            rows[setup] = _reference_row(label, 0, step0[run.id])
    return list(rows.values())


@dataclass(frozen=True)
class TeacherScore:
    teacher: str
    metrics: dict[str, float]  # keyed like the runs' evaluation (eval/exact_match)
    source: str  # where the number comes from, shown next to it


def teacher_score(spec: dict[str, Any]) -> TeacherScore | None:
    """The teacher's score on the run's evaluation metric, where it is known; else None.

    Runs do not evaluate their teacher, so the one known score is the built-in task's: `distill toy
    build` records each model's share of valid walks sampled at temperature 1 on the task's test
    split (manifest.json). It is the run's `eval/exact_match` only for the countdown metric at
    evaluation temperature 1 (same metric and decoding; the test split, not the eval rows).
    """
    teacher = spec.get("teacher") or ""
    same_metric = spec.get("eval_metric") == "countdown" and spec.get("eval_temperature") == 1.0
    if not teacher.startswith(TOY_SCHEME) or not same_metric:
        return None
    try:
        manifest = json.loads((toy_dir() / "manifest.json").read_text())
        validity = float(manifest["models"][teacher.removeprefix(TOY_SCHEME)]["test_validity"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no manifest, or it does not know this model: unknown, not zero
    return TeacherScore(teacher, {mk.EVAL_EXACT_MATCH: validity}, "toy manifest: test split, T=1")


def teacher_rows(runs: Sequence[tuple[Run, Experiment]]) -> list[dict[str, Any]]:
    scores = {}
    for _, experiment in runs:
        score = teacher_score(experiment.spec)
        if score is not None:
            scores.setdefault(score.teacher, score)
    return [_reference_row(f"teacher: {s.teacher} ({s.source})", None, s.metrics) for s in scores.values()]


def _reference_row(label: str, step: int | None, metrics: dict[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = {"run": label, "status": "", "step": step}
    row.update({key: _round(metrics.get(key)) for key in FINAL_KEYS})
    row["min loss"] = None
    return row


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
