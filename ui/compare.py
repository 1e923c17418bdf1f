"""Comparing runs: overlaid curves (one colour per run), the spec fields that differ, final metrics.

A comparison is named by its run ids, so `/ui?compare=3,7,9` reproduces it.
"""

from __future__ import annotations

import json
import re

import pandas as pd
from sqlalchemy import func, select
from sqlmodel import Session, col

from app.db import get_engine
from app.metrics_query import downsample_series, latest_metrics
from app.models import Experiment, MetricPoint, Run
from core_distill.spec import DistillSpec
from ui.live import MAX_POINTS, XAxis, empty_frame, series_frame

MAX_RUNS = 10  # more overlaid curves stop being readable (MLflow and W&B default to 10 too)
COMPARE_SLOTS = 4  # plots shown at once
# The browser draws (and hit-tests) every point as SVG, so runs share a budget per chart: with 2,000
# a 10-run comparison took 3.0 s to draw in Chromium, with 1,000 2.0 s (docs/benchmarks.md).
POINTS_PER_PLOT = 1000


def points_per_series(n_runs: int) -> int:
    """500 points per series for up to 2 runs, fewer beyond (250 for 4 runs, 100 each for 10)."""
    return max(100, min(MAX_POINTS, POINTS_PER_PLOT // max(n_runs, 1)))
DEFAULT_KEYS = ["loss", "div/fkl", "div/rkl", "eval/exact_match"]
FINAL_KEYS = ("loss", "loss/kd", "div/fkl", "div/rkl", "div/jsd", "eval/exact_match", "perf/tokens_per_sec")


class CompareError(ValueError):
    """Run ids that cannot be compared; the message says which."""


def parse_run_ids(text: str | list | None) -> list[int]:
    """'3, 7 9' or ['#3 name', ...] -> [3, 7, 9]: unique, order kept, at most MAX_RUNS."""
    items = text if isinstance(text, list) else re.split(r"[\s,]+", text or "")
    ids: list[int] = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        match = re.match(r"#?(\d+)\b", item)
        if match is None:
            raise CompareError(f"{item!r} is not a run id")
        ids.append(int(match.group(1)))
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_RUNS:
        raise CompareError(f"at most {MAX_RUNS} runs at once, got {len(ids)}")
    return ids


def load_runs(session: Session, run_ids: list[int]) -> list[tuple[Run, Experiment]]:
    rows = session.execute(
        select(Run, Experiment).join(Experiment, col(Run.experiment_id) == col(Experiment.id)).where(col(Run.id).in_(run_ids))
    ).all()
    by_id = {run.id: (run, experiment) for run, experiment in rows}
    missing = [i for i in run_ids if i not in by_id]
    if missing:
        raise CompareError(f"no run with id {', '.join(map(str, missing))}")
    return [by_id[i] for i in run_ids]


def run_label(run: Run, experiment: Experiment) -> str:
    return f"#{run.id} {experiment.name}"


def spec_diff(specs: dict[str, dict]) -> pd.DataFrame:
    """Only the spec fields whose values differ between the runs: rows = fields, columns = runs."""
    full = {label: DistillSpec.parse(spec).model_dump() for label, spec in specs.items()}
    rows = []
    for name in DistillSpec.model_fields:
        values = [full[label][name] for label in full]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            rows.append({"field": name, **{label: full[label][name] for label in full}})
    return pd.DataFrame(rows, columns=["field", *full])


def overlay_frames(
    session: Session, runs: list[tuple[Run, Experiment]], keys: list[str], smoothing: float, x: XAxis
) -> list[pd.DataFrame]:
    """One frame per metric key with every run's series (series column = run label)."""
    frames: list[list[pd.DataFrame]] = [[] for _ in keys]
    budget = points_per_series(len(runs))
    for run, experiment in runs:
        series = downsample_series(session, run.id, keys, max_points=budget, x=x)
        for i, key in enumerate(keys):
            frames[i].append(series_frame({key: series[key]}, smoothing, x, label=run_label(run, experiment)))
    return [pd.concat(parts, ignore_index=True) if parts else empty_frame() for parts in frames]


def final_metrics(session: Session, runs: list[tuple[Run, Experiment]]) -> pd.DataFrame:
    latest = latest_metrics(session, [run.id for run, _ in runs], FINAL_KEYS)
    rows = []
    for run, experiment in runs:
        min_loss = session.execute(
            select(func.min(MetricPoint.value)).where(MetricPoint.run_id == run.id, MetricPoint.key == "loss")
        ).scalar()
        row = {"run": run_label(run, experiment), "status": run.status, "step": run.last_step}
        row.update({key: _round(latest[run.id].get(key)) for key in FINAL_KEYS})
        row["min loss"] = _round(min_loss)
        rows.append(row)
    return pd.DataFrame(rows)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def compare(run_text: str | list, keys: list[str], smoothing: float = 0.0, x: XAxis = "step"):
    """Everything the compare tab shows: (plot frames, spec diff, final metrics, link markdown)."""
    run_ids = parse_run_ids(run_text)
    if len(run_ids) < 1:
        raise CompareError("pick at least one run")
    keys = [k for k in keys if k][:COMPARE_SLOTS]
    with Session(get_engine()) as session:
        runs = load_runs(session, run_ids)
        frames = overlay_frames(session, runs, keys, smoothing, x)
        finals = final_metrics(session, runs)
    diff = spec_diff({run_label(run, experiment): experiment.spec for run, experiment in runs})
    link = f"/ui/?compare={','.join(map(str, run_ids))}"
    return frames, diff, finals, f"Link to this comparison: [{link}]({link})"
