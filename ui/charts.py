"""The dashboard's chart containers and the assets that draw them.

Gradio renders a container (`live_html`, `compare_html`) whose data attributes say what to draw;
ui/static/charts.js finds it and draws with Plotly: the live view from the run's downsampled history
(GET /api/runs/{id}/metrics) and then its event stream (GET /api/runs/{id}/events), a comparison from
GET /api/compare. The browser calls the REST API with the page's login cookie, so it sees exactly
what the API shows that user. plotly.min.js comes from the installed `plotly` package: no CDN, the
dashboard works offline.
"""

from __future__ import annotations

import dataclasses
import html
import json
from functools import cache
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

from app.models import RunStatus
from app.services import comparison, run_views
from app.services.errors import NotFoundError
from app.services.session import open_session
from core_distill import metric_keys

ASSETS_URL = "/dashboard-assets"
STATIC = Path(__file__).parent / "static"
HISTORY_POINTS = 500  # per series on load; a zoom asks for as many inside its range
HEAD = (
    f'<script src="{ASSETS_URL}/plotly.min.js"></script>\n'
    f'<script src="{ASSETS_URL}/charts.js"></script>\n'
    f'<script src="{ASSETS_URL}/confirm.js"></script>\n'
    f'<link rel="stylesheet" href="{ASSETS_URL}/charts.css">'
)


def plotly_js() -> Path:
    """plotly.min.js as shipped inside the `plotly` Python package (package data)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def mount_assets(app: FastAPI) -> None:
    """GET /dashboard-assets/{plotly.min.js, charts.js, confirm.js, charts.css}: public, cached by the browser."""
    files = {
        "plotly.min.js": plotly_js,
        "charts.js": lambda: STATIC / "charts.js",
        "confirm.js": lambda: STATIC / "confirm.js",  # destructive buttons ask first
        "charts.css": lambda: STATIC / "charts.css",
    }
    media = {".js": "text/javascript", ".css": "text/css"}

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    def dashboard_asset(name: str) -> FileResponse:
        if name not in files:
            raise HTTPException(404, f"no dashboard asset {name!r}")
        path = files[name]()
        return FileResponse(path, media_type=media[path.suffix], headers={"Cache-Control": "no-cache"})


@cache
def families_json() -> str:
    """The metric catalogue's chart families (title, y unit, keys, percent, reference) for the browser."""
    return json.dumps([dataclasses.asdict(f) for f in metric_keys.FAMILIES])


def _attrs(**values: object) -> str:
    return " ".join(f'data-{k.replace("_", "-")}="{html.escape(str(v), quote=True)}"' for k, v in values.items())


def teacher_references(specs: list[dict]) -> list[dict]:
    """Reference lines: the teacher's score where it is known (app.services.comparison.teacher_score,
    the same number as the final-metrics table's teacher row), one per distinct teacher."""
    lines = {}
    for spec in specs:
        score = comparison.teacher_score(spec)
        for key, value in (score.metrics if score else {}).items():
            lines[(score.teacher, key)] = {
                "key": key,
                "value": value,
                "label": f"teacher {score.teacher} ({score.source})",
            }
    return list(lines.values())


def live_html(run_id: int | None, smoothing: float = 0.0, x: str = "step") -> str:
    """The live charts of a run: history first, then every point as the worker logs it."""
    if not run_id:
        return '<div class="distill-empty">Pick a run in the Runs tab or type its id.</div>'
    try:
        with open_session() as session:
            run, experiment = run_views.run_with_experiment(session=session, run_id=int(run_id))
    except NotFoundError:
        return f'<div class="distill-empty">No run {int(run_id)}.</div>'
    # the attempt is part of the container: a resumed run gets a fresh one (history re-read, stream followed again);
    # so is a finished status: a finished run's page shows its history and follows no stream
    finished = run.status if RunStatus(run.status).finished else ""
    attrs = _attrs(run=int(run_id), attempt=run.attempt, finished=finished, smoothing=float(smoothing), x=x,
                   max_points=HISTORY_POINTS,
                   families=families_json(),
                   references=json.dumps(teacher_references([experiment.spec])))  # fmt: skip
    return f'<div class="distill-live" id="live-charts-{int(run_id)}" {attrs}></div>'


# a run's colour and dash in every comparison: from its id, never its place in the list (10 colours x 4
# dashes: runs whose ids differ by less than 40 never look the same)
RUN_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
               "#bab0ac")  # fmt: skip
RUN_DASHES = ("solid", "dash", "dot", "dashdot")


def run_style(run_id: int) -> tuple[str, str]:
    """(colour, Plotly dash) of run `run_id`: the same in every comparison it is part of."""
    return RUN_COLOURS[run_id % len(RUN_COLOURS)], RUN_DASHES[run_id // len(RUN_COLOURS) % len(RUN_DASHES)]


def compare_html(
    runs: list[tuple[int, str]], specs: list[dict], keys: list[str], smoothing: float, x: str, max_points: int
) -> str:
    """One chart per metric key, one colour and dash per run (`run_style`: its own, whatever the order)."""
    styled = [(run_id, label, *run_style(run_id)) for run_id, label in runs]
    attrs = _attrs(runs=json.dumps(styled), keys=json.dumps(keys), smoothing=float(smoothing), x=x, max_points=int(max_points),
                   families=families_json(), references=json.dumps(teacher_references(specs)))  # fmt: skip
    return f'<div class="distill-compare" {attrs}></div>'
