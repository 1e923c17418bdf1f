"""The live run view: charts of one run that follow it while it trains, and its eval samples.

A Timer tick only calls `probe` (two index lookups: the run row and its newest point), and the
charts are re-queried only when the probe's answer changed. Each series is downsampled in SQL
to at most MAX_POINTS points keeping every bucket's min and max, so a spike is never lost and the
browser never gets a whole 100k-step series.
"""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
from sqlalchemy import func, select
from sqlmodel import Session, col

from app.db import get_engine
from app.metrics_query import downsample_series
from app.models import EvalSamples, Experiment, MetricPoint, Run
from app.services import runs as run_service
from core_distill import metric_keys
from ui.runs import error_block, status_text

MAX_POINTS = 500  # per series, what the browser receives
XAxis = Literal["step", "wall_time"]

# (title, keys): the distillation-specific views; keys a run never logged are simply absent
CHARTS: list[tuple[str, tuple[str, ...]]] = list(metric_keys.CHARTS)
X_TITLES = {"step": "step", "wall_time": "seconds since start"}
# Tableau 10: one fixed colour per series (per run in comparisons)
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


def color_map(frame: pd.DataFrame) -> dict[str, str]:
    """Series -> colour, in order of appearance. Gradio's LinePlot rebuilds its chart (and the colour
    domain) only when a property such as this map changes, so a series that appears later is drawn too."""
    names = list(dict.fromkeys(frame["series"]))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style exponential moving average, debiased so the first points are not pulled to 0."""
    if weight <= 0 or not values:
        return list(values)
    weight = min(weight, 0.999)
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


def empty_frame() -> pd.DataFrame:
    # typed columns: a plot first given untyped (object) columns draws later numbers as categories
    return pd.DataFrame({"x": pd.Series(dtype=float), "value": pd.Series(dtype=float), "series": pd.Series(dtype=str)})


def series_frame(
    series: dict[str, list[dict[str, float]]], smoothing: float, x: XAxis, label: str | None = None
) -> pd.DataFrame:
    """Long frame (x, value, series) for a LinePlot; `label` replaces the key as series name (compare)."""
    frames = []
    for key, points in series.items():
        if not points:
            continue
        t0 = points[0]["wall_time"]
        xs = [p["step"] if x == "step" else p["wall_time"] - t0 for p in points]
        values = ema([p["value"] for p in points], smoothing)
        frames.append(pd.DataFrame({"x": pd.Series(xs, dtype=float), "value": pd.Series(values, dtype=float),
                                    "series": label or key}))  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else empty_frame()


def probe(run_id: int | None) -> str:
    """A fingerprint of everything the live view shows; cheap enough for every tick of every viewer."""
    if not run_id:
        return ""
    with Session(get_engine()) as session:
        run = session.execute(
            select(Run.status, Run.last_step, Run.attempt, Run.cancel_requested).where(Run.id == int(run_id))
        ).first()
        if run is None:
            return "missing"
        newest_point = session.execute(
            select(func.max(MetricPoint.step)).where(MetricPoint.run_id == int(run_id), MetricPoint.key == metric_keys.LOSS)
        ).scalar()
        newest_samples = session.execute(
            select(func.max(EvalSamples.id)).where(EvalSamples.run_id == int(run_id))
        ).scalar()
    return f"{run.status}|{run.last_step}|{run.attempt}|{run.cancel_requested}|{newest_point}|{newest_samples}"


def chart_frames(run_id: int, smoothing: float = 0.0, x: XAxis = "step") -> list[pd.DataFrame]:
    """One frame per entry of CHARTS, each series at most MAX_POINTS points."""
    keys = [k for _, chart_keys in CHARTS for k in chart_keys]
    with Session(get_engine()) as session:
        series = downsample_series(session, int(run_id), keys, max_points=MAX_POINTS, x=x)
    return [series_frame({k: series[k] for k in chart_keys}, smoothing, x) for _, chart_keys in CHARTS]


def run_header(run_id: int) -> str:
    """Status line (with the place in the queue), the downloads, where the model is, and the error."""
    with Session(get_engine()) as session:
        run = session.get(Run, int(run_id))
        if run is None:
            return f"No run {int(run_id)}."
        experiment = session.get(Experiment, run.experiment_id)
        name = experiment.name if experiment else "?"
        queue = run_service.queue_position(session=session, run_id=run.id)
    status = status_text(run, queue).replace(" (cancelling)", " (cancel requested)")
    lines = [
        f"### Run {run.id} · {name} · **{status}** · step {run.last_step}/{run.max_steps} · attempt {run.attempt}",
        f"Downloads: [metrics.csv](/api/runs/{run.id}/metrics.csv) · [metrics.json](/api/runs/{run.id}/metrics.json)"
        f" · [spec.yaml](/api/runs/{run.id}/spec.yaml)",
        f"Model: `{run.model_dir}`" if run.model_dir else f"Output folder: `{run.output_dir or 'not started'}`",
    ]
    if run.error:
        lines.append(error_block(run.error))
    return "\n\n".join(lines)


def latest_samples(run_id: int) -> tuple[list[dict[str, Any]], int | None]:
    with Session(get_engine()) as session:
        row = session.execute(
            select(EvalSamples).where(EvalSamples.run_id == int(run_id)).order_by(col(EvalSamples.step).desc()).limit(1)
        ).scalar()
    return (row.samples, row.step) if row is not None else ([], None)
