"""Comparing runs: overlaid curves (one colour per run), the spec fields that differ, final metrics.

A comparison is named by its run ids, so `/ui?compare=3,7,9` reproduces it.
"""

from __future__ import annotations

import re

import pandas as pd
from sqlmodel import Session

from app.models import Experiment, Run
from app.services import comparison
from app.services.errors import NotFoundError
from app.services.session import open_session
from core_distill import metric_keys
from ui import charts
from ui.live import MAX_POINTS, XAxis

MAX_RUNS = comparison.MAX_COMPARED
# The browser draws (and hit-tests) every point as SVG, so runs share a budget per chart: with 2,000
# a 10-run comparison took 3.0 s to draw in Chromium, with 1,000 2.0 s (Gradio's LinePlot then;
# Plotly now: docs/benchmarks.md).
POINTS_PER_PLOT = 1000


def points_per_series(n_runs: int) -> int:
    """500 points per series for up to 2 runs, fewer beyond (250 for 4 runs, 100 each for 10)."""
    return max(100, min(MAX_POINTS, POINTS_PER_PLOT // max(n_runs, 1)))
DEFAULT_KEYS = list(metric_keys.COMPARED)
FINAL_KEYS = metric_keys.FINAL


CompareError = comparison.CompareError  # run ids that cannot be compared; the message says which


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
    return comparison.check_run_ids(ids) if ids else []


def load_runs(session: Session, run_ids: list[int]) -> list[tuple[Run, Experiment]]:
    try:
        return comparison.load_runs(session=session, run_ids=run_ids)
    except NotFoundError as exc:
        raise CompareError(str(exc)) from None


run_label = comparison.run_label  # "#3 name": the series name in every chart and the row of the finals


def spec_diff(specs: dict[str, dict]) -> pd.DataFrame:
    """Only the spec fields whose values differ between the runs: rows = fields, columns = runs."""
    labels = list(specs)
    rows = [
        {"field": field.name, **dict(zip(labels, field.values, strict=True))}
        for field in comparison.spec_fields(list(specs.values()))
        if field.differs
    ]
    return pd.DataFrame(rows, columns=["field", *labels])


def final_metrics(session: Session, runs: list[tuple[Run, Experiment]]) -> pd.DataFrame:
    """The runs' final metrics, then the student before training and the teacher where known; shares in %
    (as the charts show them: `metric_keys.display_value`), the API's own rows keep the logged values."""
    rows = comparison.final_rows(session=session, runs=runs)
    return pd.DataFrame([{_label(k): _shown(k, v) for k, v in row.items()} for row in rows])


def _label(column: str) -> str:
    return metric_keys.display_label(column) if metric_keys.is_known(column) else column


def _shown(column: str, value):
    return metric_keys.display_value(column, value) if metric_keys.is_known(column) and value is not None else value


def compare(run_text: str | list, keys: list[str], smoothing: float = 0.0, x: XAxis = "step"):
    """Everything the compare tab shows: (the charts' container: one chart per key, however many; the
    browser fetches the curves from GET /api/compare), spec diff, final metrics, link markdown)."""
    run_ids = parse_run_ids(run_text)
    if len(run_ids) < 1:
        raise CompareError("pick at least one run")
    keys = list(dict.fromkeys(k for k in keys if k))
    with open_session() as session:
        runs = load_runs(session, run_ids)
        finals = final_metrics(session, runs)
    labelled = [(run.id, run_label(run, experiment)) for run, experiment in runs]
    specs = [experiment.spec for _, experiment in runs]
    chart_html = charts.compare_html(labelled, specs, keys, smoothing, x, points_per_series(len(runs)))
    diff = spec_diff({run_label(run, experiment): experiment.spec for run, experiment in runs})
    link = f"/ui/?compare={','.join(map(str, run_ids))}"
    return chart_html, diff, finals, f"Link to this comparison: [{link}]({link})"
