"""Sweeps: create (a base spec, a grid or list of settings, seeds), list, read with groups and scores, cancel, export."""

from __future__ import annotations

import csv
import io
import json
from functools import partial
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response, status
from pydantic import ValidationError

from app import crud
from app.api.deps import CurrentUser, SessionDep
from app.api.errors import RequestInvalid, json_object, validation_detail
from app.api.params import Skip, SweepId
from app.api.routes.experiments import SUBMIT_LIMITER
from app.api.schemas import RETRY_AFTER, ErrorMessage, Problems, SweepsPublic
from app.models import SweepCreate, SweepView
from app.services import sweeps as sweep_service

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

EXPORT_FORMATS = Literal["csv", "json"]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepView,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SweepCreate"}}},
        }
    },
    responses={
        422: {"model": Problems, "description": "A bad sweep; `detail[].loc` names the setting and field."},
        503: {"model": ErrorMessage, "headers": RETRY_AFTER, "description": "Queue down: nothing was stored."},
    },
)
async def create_sweep(request: Request, session: SessionDep, user: CurrentUser) -> SweepView:
    """Create a sweep and queue one run per (setting, seed): a base `spec`, a `grid` (field -> values, every
    combination, or `samples` of them with `search: random`) or a list of `settings`, and `seeds`.
    Every run's spec is validated before anything is stored."""
    sweep_in = await _read_sweep_in(request)
    create = partial(sweep_service.create_sweep, session=session, sweep_in=sweep_in, user=user)
    return await to_thread.run_sync(create, limiter=SUBMIT_LIMITER)  # the preflight reads files


@router.get("", response_model=SweepsPublic)
def list_sweeps(
    session: SessionDep,
    owner: Annotated[str | None, Query(max_length=200, description="Only this owner's sweeps.")] = None,
    skip: Skip = 0,
    limit: Annotated[int, Query(ge=1, le=crud.MAX_PAGE)] = 100,
) -> SweepsPublic:
    """List sweeps, newest first, each with its status and run counts."""
    rows, count = sweep_service.list_sweeps(session=session, owner=owner, skip=skip, limit=limit)
    return SweepsPublic(data=rows, count=count)


@router.get("/{sweep_id:id}", response_model=SweepView)
def get_sweep(sweep_id: SweepId, session: SessionDep) -> SweepView:
    """One sweep: its groups (one per setting) with their runs and the mean +- sd over seeds of each final eval metric."""
    return sweep_service.get_sweep(session=session, sweep_id=sweep_id)


@router.post("/{sweep_id:id}/cancel", response_model=SweepView)
def cancel_sweep(sweep_id: SweepId, session: SessionDep, user: CurrentUser) -> SweepView:
    """Cancel every unfinished run of the sweep (owner or admin; 409 when none is left)."""
    return sweep_service.cancel_sweep(session=session, sweep_id=sweep_id, user=user)


@router.get(
    "/{sweep_id:id}/export",
    response_class=Response,
    responses={
        200: {
            "description": "One row per run: group, seed, run, status, steps, the final value of each eval key.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            },
        }
    },
)
def export_sweep(
    sweep_id: SweepId, session: SessionDep, format: Annotated[EXPORT_FORMATS, Query(description="csv or json.")] = "csv"
) -> Response:
    """The sweep's runs as a table (CSV or JSON), one row per run."""
    rows = sweep_service.export_rows(sweep_service.get_sweep(session=session, sweep_id=sweep_id))
    headers = {"Content-Disposition": f'attachment; filename="sweep-{sweep_id}.{format}"'}
    if format == "json":
        return Response(json.dumps(rows), media_type="application/json", headers=headers)
    return Response(_csv(rows), media_type="text/csv", headers=headers)


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


async def _read_sweep_in(request: Request) -> SweepCreate:
    data = json_object(await request.body())
    try:
        return SweepCreate.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid([_field_located(p) for p in validation_detail(exc)]) from None


def _field_located(problem: dict[str, Any]) -> dict[str, Any]:
    """SweepCreate's cross-field rules report at the body as "field: message": put the field in `loc`."""
    field, sep, rest = problem["msg"].partition(": ")
    if problem["loc"] == ["body"] and sep and field in SweepCreate.model_fields:
        return {**problem, "loc": ["body", field], "msg": rest}
    return problem
