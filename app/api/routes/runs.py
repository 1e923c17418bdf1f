"""Runs: list, read, cancel, resume, the spec and eval samples, and the live event stream (SSE)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Literal

import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.sse import format_sse_event
from pydantic import BeforeValidator
from sqlmodel import Session

from app import crud, events
from app.api.deps import CurrentUser, SessionDep
from app.api.params import INTEGER_MAX, RunId, Skip, each_comma_separated, split_list
from app.api.routes.experiments import spec_filters_from
from app.api.schemas import RunDetail, RunsPublic, RunSummary, SamplesAtStep
from app.db import get_engine
from app.models import FINISHED, Experiment, Run, RunEventPublic, RunPublic, RunStatus
from app.services import run_views
from app.services import runs as run_service
from app.services.errors import RETRY_AFTER_SECONDS
from app.settings import get_settings
from core_distill.spec import DistillSpec, yaml_comment

router = APIRouter(prefix="/runs", tags=["runs"])

STREAM_ID_PATTERN = r"^\d{1,20}-\d{1,20}$"
IDLE_BLOCK_MS = 5000  # one blocking read of Redis waits this long at most
# A ping is a comment line with no blank line after it: it keeps proxies from closing an idle stream, and
# no client can turn it into an event (a blank line dispatches one in parsers that keep the last id, httpx-sse).
PING = b": ping\n"
PING_SECONDS = 15.0  # after this long without an event
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of a live stream
ROW_CHECK_SECONDS = 60.0  # a silent stream reads the run's row this seldom: 50 viewers, under 1 query/s
TERMINAL = frozenset(s.value for s in FINISHED)
SortKey = Literal[run_views.RESULT_KEYS]  # type: ignore[valid-type]  # the result columns, as an enum


StatusList = Annotated[
    list[RunStatus] | None,
    BeforeValidator(each_comma_separated),
    Query(description="Only these statuses: repeat it, or comma-separate them (`status=queued,running`)."),
]


def summarize(
    run: Run, experiment: Experiment, positions: dict[int, int], results: dict[str, float] | None = None
) -> RunSummary:
    return RunSummary(
        **RunPublic.model_validate(run).model_dump(),
        experiment_name=experiment.name,
        tags=experiment.tags,
        owner=experiment.owner,
        queue_position=positions.get(run.id),
        results=results or {},
    )


def run_detail(session: Session, run: Run, experiment: Experiment | None = None) -> RunDetail:
    experiment = experiment or crud.get_experiment(session=session, experiment_id=run.experiment_id)
    latest = run_views.results(session=session, run_ids=[run.id])[run.id]
    summary = summarize(run, experiment, run_service.queue_positions(session=session), latest)
    history = run_service.run_history(session=session, run_id=run.id)
    automatic, manual = run_service.resume_counts(history)
    return RunDetail(
        **summary.model_dump(),
        spec=experiment.distill_spec(),
        history=[RunEventPublic.model_validate(event) for event in history],
        auto_resumes=automatic,
        manual_resumes=manual,
        healing=run_service.healing_line(run, experiment.spec, history),
    )


@router.get("", response_model=RunsPublic)
def list_runs(
    request: Request,
    session: SessionDep,
    status: StatusList = None,
    tags: Annotated[str | None, Query(max_length=2000, description="Comma-separated; all must match.")] = None,
    experiment_id: Annotated[int | None, Query(ge=1, le=INTEGER_MAX, description="Only this experiment's.")] = None,
    owner: Annotated[str | None, Query(max_length=200)] = None,
    skip: Skip = 0,
    limit: Annotated[int, Query(ge=1, le=crud.MAX_PAGE)] = 100,
    sort: Annotated[
        SortKey | None, Query(description="Order by the latest value of this result (runs without one last).")
    ] = None,
    order: Annotated[Literal["desc", "asc"], Query(description="With `sort`: highest or lowest first.")] = "desc",
) -> RunsPublic:
    """List runs, newest first, each with its place in the queue and its latest results (`results`: the last
    logged eval accuracy, divergences, loss and tokens/s). Spec filters: `spec.FIELD=value`."""
    page = run_views.runs_page(
        session=session,
        status=[str(s) for s in status] if status else None,
        tags=split_list(tags),
        spec_filters=spec_filters_from(request),
        experiment_id=experiment_id,
        owner=owner,
        skip=skip,
        limit=limit,
        sort=sort,
        descending=order == "desc",
    )
    data = [summarize(run, experiment, page.positions, page.results.get(run.id)) for run, experiment in page.rows]
    return RunsPublic(data=data, count=page.count)


@router.get("/{run_id:id}", response_model=RunDetail)
def get_run(run_id: RunId, session: SessionDep) -> RunDetail:
    """One run with its experiment's spec and its place in the queue."""
    run, experiment = run_views.run_with_experiment(session=session, run_id=run_id)  # the dashboard's read too
    return run_detail(session, run, experiment)


@router.post("/{run_id:id}/cancel", response_model=RunDetail)
def cancel_run(run_id: RunId, session: SessionDep, user: CurrentUser) -> RunDetail:
    """Cancel: a queued run at once; a running run checkpoints and stops at its next step (409 if finished)."""
    return run_detail(session, run_service.cancel_run(session=session, run_id=run_id, user=user))


@router.post("/{run_id:id}/resume", response_model=RunDetail)
def resume_run(run_id: RunId, session: SessionDep, user: CurrentUser) -> RunDetail:
    """Continue a lost, failed or cancelled run from its last checkpoint (same run, next attempt)."""
    return run_detail(session, run_service.resume_run(session=session, run_id=run_id, user=user))


@router.get(
    "/{run_id:id}/spec.yaml", response_class=PlainTextResponse, responses={200: {"content": {"application/yaml": {}}}}
)
def run_spec_yaml(run_id: RunId, session: SessionDep) -> PlainTextResponse:
    """The run's spec as YAML, ready for `distill run` or another POST /api/experiments."""
    run = crud.get_run(session=session, run_id=run_id)
    experiment = crud.get_experiment(session=session, experiment_id=run.experiment_id)
    # the name is free text: escaped, so a line break or NUL in it cannot end the comment or the file
    header = f"# experiment {experiment.id} ({yaml_comment(experiment.name)}), run {run.id}\n"
    return PlainTextResponse(header + DistillSpec.parse(experiment.spec).to_yaml(), media_type="application/yaml")


@router.get("/{run_id:id}/samples", response_model=list[SamplesAtStep])
def run_samples(
    run_id: RunId,
    session: SessionDep,
    step: Annotated[int | None, Query(ge=0, le=INTEGER_MAX, description="Only this evaluation's.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="How many evaluations, the latest.")] = 10,
) -> list[SamplesAtStep]:
    """Sampled eval completions with per-token divergences: at `step`, else the latest evaluations, oldest first."""
    crud.get_run(session=session, run_id=run_id)
    rows = run_views.eval_samples(session=session, run_id=run_id, step=step, limit=limit)
    return [SamplesAtStep(step=r.step, wall_time=r.wall_time, samples=r.samples) for r in rows]


# --- live events ----------------------------------------------------------------------------------
def _run_state(run_id: int) -> dict:
    """The run's status from its row, in a session of its own that closes before this returns."""
    with Session(get_engine()) as session:
        run = crud.get_run(session=session, run_id=run_id)
        return {"status": run.status, "error": run.error, "last_step": run.last_step}


@dataclass(frozen=True)
class StreamStart:
    redis_url: str
    status: str  # the run's status as its row had it when the stream opened


def stream_source(run_id: RunId, session: SessionDep) -> StreamStart:
    """The checks that must answer before the stream starts (an error raised inside an event generator
    would arrive after a 200): 404 for an unknown run, 503 without Redis. In the request's session, which
    closes before the first event is sent."""
    run = crud.get_run(session=session, run_id=run_id)
    url = get_settings().redis_url
    if not url:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "no Redis configured: the live stream is off",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )  # fmt: skip
    return StreamStart(url, run.status)


EVENTS_DOC = {
    200: {
        "description": "Server-sent events `started`, `metrics`, `samples`, `status`, `resumed` (docs/api.md); "
        "ids are Redis stream ids. Keep-alive pings are `: ping` comment lines without an event.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get("/{run_id:id}/events", response_class=StreamingResponse, responses=EVENTS_DOC)
async def run_events(
    run_id: RunId,
    request: Request,
    start: Annotated[StreamStart, Depends(stream_source)],
    last_event_id: Annotated[str | None, Header(pattern=STREAM_ID_PATTERN)] = None,
    after: Annotated[str | None, Query(pattern=STREAM_ID_PATTERN, description="Like Last-Event-ID.")] = None,
) -> StreamingResponse:
    """Live metric points, samples and status changes of a run, as server-sent events.

    Starts with everything the stream holds (or after `Last-Event-ID`), then follows new events.
    Ends after a final status (succeeded, failed, cancelled, lost); a client closes then.
    The stream is followed in Redis alone; the run's row is read in a short session of its own only
    to confirm a final status, and once a minute while the stream is silent (a status Redis missed).
    """
    stream = _follow(run_id, request, start, last_event_id or after or "0-0")
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)


async def _follow(run_id: int, request: Request, start: StreamStart, cursor: str) -> AsyncIterator[bytes]:
    client = aioredis.Redis.from_url(start.redis_url, decode_responses=True, socket_timeout=IDLE_BLOCK_MS / 1000 + 30)
    last_status: str | None = None
    row_status, row_read_at = start.status, time.monotonic()
    sent_at = time.monotonic()
    try:
        while not await request.is_disconnected():
            finishing = last_status in TERMINAL or row_status in TERMINAL
            # after a final status, only drain what is left; otherwise wait for new events (or the next ping)
            block_ms = max(1, int(min(IDLE_BLOCK_MS, (PING_SECONDS - (time.monotonic() - sent_at)) * 1000)))
            reply = await client.xread(
                {events.stream_key(run_id): cursor}, count=500, block=None if finishing else block_ms
            )
            entries = [entry for _, stream_entries in reply for entry in stream_entries]
            for event_id, fields in entries:
                cursor = event_id
                if fields["kind"] == "status":
                    last_status = json.loads(fields["data"]).get("status")
                yield format_sse_event(data_str=fields["data"], event=fields["kind"], id=event_id)
            if entries:
                sent_at = time.monotonic()
                continue
            if time.monotonic() - sent_at >= PING_SECONDS:
                yield PING
                sent_at = time.monotonic()
            if not (finishing or time.monotonic() - row_read_at >= ROW_CHECK_SECONDS):
                continue
            state = await run_in_threadpool(_run_state, run_id)
            row_status, row_read_at = state["status"], time.monotonic()
            if row_status in TERMINAL:
                if row_status != last_status:  # finished while Redis missed it: say so from the row
                    yield format_sse_event(data_str=json.dumps(state), event="status")
                return
            last_status = None if last_status in TERMINAL else last_status  # resumed meanwhile
    finally:
        await client.aclose()
