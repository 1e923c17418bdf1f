"""The live run view's header and eval samples; its charts are drawn in the browser (ui/charts.py).

A Timer tick only calls `probe` (two index lookups: the run row and its newest point), and the
header and samples are re-read only when the probe's answer changed. The charts do not wait for a
tick: the browser follows the run's event stream and appends each point as it arrives.
"""

from __future__ import annotations

from typing import Any, Literal

from app.services import run_views
from app.services import runs as run_service
from app.services.errors import NotFoundError
from app.services.session import open_session
from ui.runs import error_block, status_text

DOWNLOADS = ("metrics.csv", "metrics.json", "metrics.jsonl", "metrics.parquet", "spec.yaml")  # /api/runs/{id}/NAME
MAX_POINTS = 500  # per series, what the browser receives (a comparison of few runs)
XAxis = Literal["step", "wall_time"]


def probe(run_id: int | None) -> str:
    """A fingerprint of everything the live view shows; cheap enough for every tick of every viewer."""
    if not run_id:
        return ""
    with open_session() as session:
        return run_views.run_fingerprint(session=session, run_id=int(run_id))


def run_header(run_id: int) -> str:
    """Status line (with the place in the queue), the downloads, where the model is, and the error."""
    try:
        with open_session() as session:
            view = run_views.run_status_view(session=session, run_id=int(run_id))
    except NotFoundError:
        return f"No run {int(run_id)}."
    run, name, queue, history = view.run, view.experiment.name, view.queue_position, view.history
    healing = run_service.healing_line(run, view.experiment.spec, history)
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
        lines.append(error_block(run.error, run.status))
    return "\n\n".join(lines)


def latest_samples(run_id: int) -> tuple[list[dict[str, Any]], int | None]:
    with open_session() as session:  # the service behind GET /api/runs/{id}/samples
        rows = run_views.eval_samples(session=session, run_id=int(run_id), limit=1)
    return (rows[-1].samples, rows[-1].step) if rows else ([], None)
