"""Metric series of runs: downsampled for charts, full exports, and comparisons of several runs."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BeforeValidator, Field
from starlette.background import BackgroundTask

from app import crud, events
from app.api.deps import SessionDep
from app.api.params import INTEGER_MAX, RunId, each_comma_separated, split_list
from app.api.routes.runs import run_detail
from app.api.schemas import Comparison, ErrorMessage, MetricSeries, SpecField
from app.metrics_query import MAX_POINTS_CAP, MIN_POINTS, downsample_series, metric_keys
from app.services import comparison, metrics_export

router = APIRouter(tags=["metrics"])

MaxPoints = Annotated[int, Query(ge=MIN_POINTS, le=MAX_POINTS_CAP, description="Points per series, at most.")]
XAxis = Annotated[Literal["step", "wall_time"], Query(description="The axis the buckets cut.")]
KeysQuery = Annotated[str | None, Query(max_length=4000, description="Comma-separated metric keys; default all.")]


StepBound = Annotated[int | None, Query(ge=0, le=INTEGER_MAX, description="Only steps in [step_min, step_max].")]


@router.get(
    "/runs/{run_id:id}/metrics",
    response_model=MetricSeries,
    responses={200: {"headers": {events.CURSOR_HEADER: {"description": "The run's event stream id before the "
                                                        "query: follow /events?after= it to miss nothing."}}}},
)  # fmt: skip
def run_metrics(
    run_id: RunId,
    session: SessionDep,
    response: Response,
    keys: KeysQuery = None,
    max_points: MaxPoints = 500,
    x: XAxis = "step",
    step_min: StepBound = None,
    step_max: StepBound = None,
) -> MetricSeries:
    """A run's metric series, downsampled on the server: each bucket keeps its min and max, so spikes show.
    `step_min`/`step_max` narrow it to a range (a zoomed chart gets finer buckets there)."""
    crud.get_run(session=session, run_id=run_id)
    cursor = events.last_id(run_id)  # before the query: an event after it may repeat a point, none is lost
    if cursor is not None:
        response.headers[events.CURSOR_HEADER] = cursor
    steps = None
    if step_min is not None or step_max is not None:
        steps = (step_min or 0, 2**31 - 1 if step_max is None else step_max)
    available = metric_keys(session, run_id)
    wanted = split_list(keys) or available
    series = downsample_series(session, run_id, wanted, max_points=max_points, x=x, steps=steps)
    return MetricSeries(run_id=run_id, x=x, max_points=max_points, keys=available, series=series)


@router.get(
    "/runs/{run_id:id}/metrics.csv", response_class=StreamingResponse, responses={200: {"content": {"text/csv": {}}}}
)
def run_metrics_csv(run_id: RunId, session: SessionDep, keys: KeysQuery = None) -> StreamingResponse:
    """Every stored point of the run as CSV (step, key, value, wall_time), streamed."""
    crud.get_run(session=session, run_id=run_id)

    def rows() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", "key", "value", "wall_time"])
        for n, p in enumerate(metrics_export.points(run_id, split_list(keys)), start=1):
            writer.writerow([p.step, p.key, repr(p.value), repr(p.wall_time)])
            if n % 1000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    headers = {"Content-Disposition": f'attachment; filename="run-{run_id}-metrics.csv"'}
    return StreamingResponse(rows(), media_type="text/csv", headers=headers)


@router.get("/runs/{run_id:id}/metrics.json", response_class=StreamingResponse)
def run_metrics_json(run_id: RunId, session: SessionDep, keys: KeysQuery = None) -> StreamingResponse:
    """Every stored point of the run as a JSON array of {step, key, value, wall_time}, streamed."""
    crud.get_run(session=session, run_id=run_id)

    def parts() -> Iterator[str]:
        yield "["
        for n, p in enumerate(metrics_export.points(run_id, split_list(keys))):
            item = {"step": p.step, "key": p.key, "value": p.value, "wall_time": p.wall_time}
            yield ("," if n else "") + json.dumps(item)
        yield "]"

    return StreamingResponse(parts(), media_type="application/json")


@router.get(
    "/runs/{run_id:id}/metrics.jsonl",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/jsonl": {}}}},
)
def run_metrics_jsonl(run_id: RunId, session: SessionDep, keys: KeysQuery = None) -> StreamingResponse:
    """Every stored point of the run as the metrics.jsonl a CLI run writes: one line per log call,
    {"step", "time", "metrics": {key: value}}, streamed."""
    crud.get_run(session=session, run_id=run_id)
    headers = {"Content-Disposition": f'attachment; filename="run-{run_id}-metrics.jsonl"'}
    lines = metrics_export.jsonl_lines(run_id, split_list(keys))
    return StreamingResponse(lines, media_type="application/jsonl", headers=headers)


@router.get(
    "/runs/{run_id:id}/metrics.parquet",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/vnd.apache.parquet": {}}},
        501: {"description": "pyarrow is not installed on the server.", "model": ErrorMessage},
    },
)
def run_metrics_parquet(run_id: RunId, session: SessionDep, keys: KeysQuery = None) -> FileResponse:
    """Every stored point of the run as a Parquet table (step, key, value, wall_time), written to a temporary
    file that is removed once sent. 501 when the server has no pyarrow."""
    crud.get_run(session=session, run_id=run_id)
    if not metrics_export.parquet_available():
        raise HTTPException(501, metrics_export.PARQUET_NEEDS)
    handle, name = tempfile.mkstemp(prefix=f"run-{run_id}-", suffix=".parquet")
    os.close(handle)
    path = Path(name)
    try:
        metrics_export.write_parquet(run_id, path, split_list(keys))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(path, media_type="application/vnd.apache.parquet", filename=f"run-{run_id}-metrics.parquet",
                        background=BackgroundTask(path.unlink, missing_ok=True))  # fmt: skip


@router.get("/compare", response_model=Comparison)
def compare_runs(
    session: SessionDep,
    run_ids: Annotated[
        list[Annotated[int, Field(ge=1, le=INTEGER_MAX)]],
        BeforeValidator(each_comma_separated),
        # the count is declared here and checked by the service, whose message the dashboard shows too
        Query(
            description="Run ids: repeat it, or comma-separate them.",
            json_schema_extra={"minItems": 1, "maxItems": comparison.MAX_COMPARED},
        ),
    ],
    keys: KeysQuery = None,
    max_points: MaxPoints = 500,
    x: XAxis = "step",
) -> Comparison:
    """Several runs side by side: each spec field with its value per run (`differs` marks the ones that
    vary), the runs' downsampled series of `keys` (default: the keys every run has) and the final
    metrics, with the student before training and the teacher where known."""
    try:
        ids = comparison.check_run_ids(run_ids)
    except comparison.CompareError as exc:
        raise HTTPException(422, [{"loc": ["query", "run_ids"], "msg": str(exc), "type": "value_error"}]) from None
    loaded = comparison.load_runs(session=session, run_ids=ids)
    runs = [run_detail(session, run) for run, _ in loaded]
    wanted = split_list(keys) or comparison.common_keys(session=session, run_ids=ids)
    fields = [SpecField(**vars(f)) for f in comparison.spec_fields([run.spec.model_dump() for run in runs])]
    series = comparison.series(session=session, run_ids=ids, keys=wanted, max_points=max_points, x=x)
    finals = comparison.final_rows(session=session, runs=loaded)
    return Comparison(runs=runs, fields=fields, series=series, finals=finals)
