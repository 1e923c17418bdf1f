"""The live run view's header and eval samples; its charts are drawn in the browser (ui/charts.py).

A Timer tick only calls `probe` (two index lookups: the run row and its newest point), and the
header and samples are re-read only when the probe's answer changed. The charts do not wait for a
tick: the browser follows the run's event stream and appends each point as it arrives.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import func, select
from sqlmodel import Session, col

from app.db import get_engine
from app.models import EvalSamples, Experiment, MetricPoint, Run
from app.services import runs as run_service
from core_distill import metric_keys
from ui.runs import error_block, status_text

DOWNLOADS = ("metrics.csv", "metrics.json", "metrics.jsonl", "metrics.parquet", "spec.yaml")  # /api/runs/{id}/NAME
MAX_POINTS = 500  # per series, what the browser receives (a comparison of few runs)
XAxis = Literal["step", "wall_time"]


def probe(run_id: int | None) -> str:
    """A fingerprint of everything the live view shows; cheap enough for every tick of every viewer."""
    if not run_id:
        return ""
    with Session(get_engine()) as session:
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
        newest_samples = session.execute(
            select(func.max(EvalSamples.id)).where(EvalSamples.run_id == int(run_id))
        ).scalar()
    return (
        f"{run.status}|{run.last_step}|{run.attempt}|{run.cancel_requested}|{run.resume_after}|{newest_point}"
        f"|{newest_samples}"
    )


def run_header(run_id: int) -> str:
    """Status line (with the place in the queue), the downloads, where the model is, and the error."""
    with Session(get_engine()) as session:
        run = session.get(Run, int(run_id))
        if run is None:
            return f"No run {int(run_id)}."
        experiment = session.get(Experiment, run.experiment_id)
        name = experiment.name if experiment else "?"
        queue = run_service.queue_position(session=session, run_id=run.id)
        history = run_service.run_history(session=session, run_id=run.id)
        healing = run_service.healing_line(run, experiment.spec if experiment else {}, history)
    status = status_text(run, queue).replace(" (cancelling)", " (cancel requested)")
    lines = [
        f"### Run {run.id} · {name} · **{status}** · step {run.last_step}/{run.max_steps} · attempt {run.attempt}",
        *([f"*{healing}*"] if healing else []),
        *run_service.header_lines(history),  # what the engine decided at start (a vocabulary cut, ...)
        *(f"**{line}**" for line in run_service.warning_lines(history)),
        "Downloads: " + " · ".join(f"[{name}](/api/runs/{run.id}/{name})" for name in DOWNLOADS),
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
