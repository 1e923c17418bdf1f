"""Experiments: create (JSON, or YAML on its own route) and launch, list, read, edit, re-run."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Body, Depends, Query, Request, status
from sqlmodel import Session, select

from app import crud
from app.api.deps import CurrentUser, SessionDep
from app.api.errors import RequestInvalid
from app.api.params import ExperimentId, Skip, split_list
from app.api.schemas import RETRY_AFTER, ErrorMessage, ExperimentCreated, ExperimentDetail, ExperimentsPublic, Problems
from app.api.yaml_body import TAGS_TEXT_PATTERN, YAML_TYPES, media_type, read_yaml_experiment, tags_of
from app.models import (
    Experiment,
    ExperimentCreate,
    ExperimentPublic,
    ExperimentUpdate,
    Run,
    RunPublic,
    experiment_yaml_schema,
)
from app.services import experiments as experiment_service

router = APIRouter(prefix="/experiments", tags=["experiments"])

# Submits (create, re-run) run the preflight, which may wait up to DISTILL_PREFLIGHT_SECONDS: at most this
# many hold a thread at once, the others wait on the event loop, so the API's threads stay free for the rest.
MAX_CONCURRENT_SUBMITS = 8
SUBMIT_LIMITER = CapacityLimiter(MAX_CONCURRENT_SUBMITS)
SPEC_FILTER_PREFIX = "spec."
EXAMPLE_SPEC = {"student": "toy:student", "teacher": "toy:teacher", "lmbda": 1.0, "beta": 0.5, "max_steps": 50}
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    415: {"model": Problems, "description": "Another content type; `detail[0].msg` names the route that takes it."},
    422: {"model": Problems, "description": "A bad spec; `detail[].loc` names the field."},
    503: {
        "model": ErrorMessage,
        "headers": RETRY_AFTER,
        "description": "Queue or database down: nothing was stored; retry after `Retry-After` seconds.",
    },
}


def json_only(request: Request) -> None:
    """415 before the body is read when it is not JSON (YAML has its own route, which this names)."""
    kind = media_type(request)
    if kind in ("", "application/json") or kind.endswith("+json"):
        return
    where = "POST /api/experiments/yaml" if kind in YAML_TYPES or kind == "multipart/form-data" else "nowhere"
    raise RequestInvalid(
        [{"loc": ["header", "content-type"], "type": "unsupported_media_type",
          "msg": f"this route takes JSON (an ExperimentCreate), not {kind!r}" +
                 (f"; send YAML and uploads to {where}" if where != "nowhere" else "")}],
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    )  # fmt: skip


ExperimentIn = Annotated[
    ExperimentCreate,
    Body(openapi_examples={"on-policy GKD": {"value": {"name": "gkd", "tags": ["toy"], "spec": EXAMPLE_SPEC}}}),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentCreated,
    dependencies=[Depends(json_only)],
    responses=SUBMIT_RESPONSES,
)
async def create_experiment(experiment_in: ExperimentIn, session: SessionDep, user: CurrentUser) -> ExperimentCreated:
    """Create an experiment from a spec (JSON) and queue its first run; nothing is stored unless it was queued.

    YAML (a spec file, or an uploaded one) goes to `POST /api/experiments/yaml`.
    """
    return await _submit(session, experiment_in, user)


@router.post(
    "/yaml",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentCreated,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A YAML document: a bare spec, or an ExperimentCreate (with `spec:`). A multipart "
            "upload with the YAML in a `file` part (and name, tags, notes, launch as form fields) works too.",
            "content": {"application/yaml": {"schema": experiment_yaml_schema("#/components/schemas/")}},
        }
    },
    responses=SUBMIT_RESPONSES,
)
async def create_experiment_yaml(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    name: Annotated[str | None, Query(min_length=1, max_length=200, description="Where the document has none.")] = None,
    tags: Annotated[str | None, Query(pattern=TAGS_TEXT_PATTERN, description="Comma-separated.")] = None,
    notes: Annotated[str | None, Query(max_length=10_000)] = None,
    launch: Annotated[bool | None, Query(description="Queue a run right away (default true).")] = None,
) -> ExperimentCreated:
    """Create an experiment from a YAML spec (like examples/*.yaml) and queue its first run.

    The experiment's name, tags, notes and launch come from the document, else from the query (or the
    upload's form fields); an empty document is a 422.
    """
    fields = {"name": name, "tags": None if tags is None else tags_of(tags, ["query", "tags"]), "notes": notes,
              "launch": launch}  # fmt: skip
    return await _submit(session, await read_yaml_experiment(request, fields), user)


async def _submit(session: Session, experiment_in: ExperimentCreate, user: str | None) -> ExperimentCreated:
    # a thread: the preflight reads files and may ask the hub, which must not stall every other request
    create = partial(experiment_service.create_experiment, session=session, experiment_in=experiment_in, user=user)
    experiment, run = await to_thread.run_sync(create, limiter=SUBMIT_LIMITER)
    return ExperimentCreated(
        id=experiment.id,
        run_id=run.id if run else None,
        experiment=ExperimentPublic.model_validate(experiment),
        run=RunPublic.model_validate(run) if run else None,
    )


@router.get("", response_model=ExperimentsPublic)
def list_experiments(
    request: Request,
    session: SessionDep,
    name: Annotated[str | None, Query(max_length=200, description="Part of the name, any case.")] = None,
    tags: Annotated[str | None, Query(max_length=2000, description="Comma-separated; all must match.")] = None,
    owner: Annotated[str | None, Query(max_length=200)] = None,
    skip: Skip = 0,
    limit: Annotated[int, Query(ge=1, le=crud.MAX_PAGE)] = 100,
) -> ExperimentsPublic:
    """List experiments, newest first. Filter on any spec field with `spec.FIELD=value` (e.g. `spec.lmbda=1.0`)."""
    rows, count = crud.list_experiments(
        session=session,
        name=name,
        tags=split_list(tags),
        owner=owner,
        spec_filters=spec_filters_from(request),
        skip=skip,
        limit=limit,
    )
    return ExperimentsPublic(data=[ExperimentPublic.model_validate(e) for e in rows], count=count)


@router.get("/{experiment_id:id}", response_model=ExperimentDetail)
def get_experiment(experiment_id: ExperimentId, session: SessionDep) -> ExperimentDetail:
    """One experiment with its runs (newest first)."""
    experiment = crud.get_experiment(session=session, experiment_id=experiment_id)
    runs = session.exec(select(Run).where(Run.experiment_id == experiment_id).order_by(Run.id.desc())).all()
    return ExperimentDetail(
        **ExperimentPublic.model_validate(experiment).model_dump(), runs=[RunPublic.model_validate(r) for r in runs]
    )


@router.patch("/{experiment_id:id}", response_model=ExperimentPublic)
def update_experiment(
    experiment_id: ExperimentId, experiment_in: ExperimentUpdate, session: SessionDep, user: CurrentUser
) -> Experiment:
    """Rename an experiment or change its tags or notes (its spec never changes: create a new one)."""
    return experiment_service.update_experiment(
        session=session, experiment_id=experiment_id, experiment_in=experiment_in, user=user
    )


@router.post("/{experiment_id:id}/runs", status_code=status.HTTP_201_CREATED, response_model=RunPublic)
async def rerun_experiment(experiment_id: ExperimentId, session: SessionDep, user: CurrentUser) -> Run:
    """Queue a fresh run of the experiment's spec (to continue a stopped run, resume it instead)."""
    rerun = partial(experiment_service.rerun_experiment, session=session, experiment_id=experiment_id, user=user)
    return await to_thread.run_sync(rerun, limiter=SUBMIT_LIMITER)  # it runs the preflight again


# --- request parsing ----------------------------------------------------------------------------
def spec_filters_from(request: Request) -> dict[str, Any]:
    """`?spec.lmbda=1.0&spec.teacher=toy:teacher` -> typed values (422 naming an unknown field)."""
    raw = {k[len(SPEC_FILTER_PREFIX) :]: v for k, v in request.query_params.items() if k.startswith(SPEC_FILTER_PREFIX)}
    return crud.parse_spec_filters(raw) if raw else {}
