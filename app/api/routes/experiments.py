"""Experiments: create (JSON, YAML or an uploaded YAML file) and launch, list, read, edit, re-run."""

from __future__ import annotations

from functools import partial
from pathlib import PurePath
from typing import Annotated, Any

import yaml
from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Query, Request, status
from pydantic import ValidationError
from sqlmodel import select
from starlette.datastructures import UploadFile

from app import crud
from app.api.deps import CurrentUser, SessionDep
from app.api.errors import RequestInvalid, invalid, json_object, validation_detail
from app.api.schemas import ErrorMessage, ExperimentCreated, ExperimentDetail, ExperimentsPublic, Problems
from app.models import Experiment, ExperimentCreate, ExperimentPublic, ExperimentUpdate, Run, RunPublic
from app.services import experiments as experiment_service
from core_distill.spec import DuplicateKeyError, load_yaml

router = APIRouter(prefix="/experiments", tags=["experiments"])

# Submits (create, re-run) run the preflight, which may wait up to DISTILL_PREFLIGHT_SECONDS: at most this
# many hold a thread at once, the others wait on the event loop, so the API's threads stay free for the rest.
MAX_CONCURRENT_SUBMITS = 8
SUBMIT_LIMITER = CapacityLimiter(MAX_CONCURRENT_SUBMITS)
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
SPEC_FILTER_PREFIX = "spec."


def _create_body_docs() -> dict[str, Any]:
    experiment = {"$ref": "#/components/schemas/ExperimentCreate"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": experiment},
                "application/yaml": {
                    "schema": {"type": "string"},
                    "example": "student: toy:student\nteacher: toy:teacher\nlmbda: 1.0\nmax_steps: 50\n",
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": "A YAML spec file."},
                            "name": {"type": "string"},
                            "tags": {"type": "string", "description": "Comma-separated."},
                            "notes": {"type": "string"},
                            "launch": {"type": "boolean", "default": True},
                        },
                    }
                },
            },
        }
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentCreated,
    openapi_extra=_create_body_docs(),
    responses={
        422: {"model": Problems, "description": "A bad spec; `detail[].loc` names the field."},
        503: {"model": ErrorMessage, "description": "Queue down."},
    },
)
async def create_experiment(request: Request, session: SessionDep, user: CurrentUser) -> ExperimentCreated:
    """Create an experiment from a spec and queue its first run.

    The body is an `ExperimentCreate` as JSON; or a YAML document (`Content-Type: application/yaml`):
    either the same fields, or a bare spec with name, tags, notes and launch as query parameters;
    or a multipart upload with the YAML in `file`. Nothing is stored unless the run was queued.
    """
    experiment_in = await _read_experiment_in(request)
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
    skip: Annotated[int, Query(ge=0)] = 0,
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


@router.get("/{experiment_id}", response_model=ExperimentDetail)
def get_experiment(experiment_id: int, session: SessionDep) -> ExperimentDetail:
    """One experiment with its runs (newest first)."""
    experiment = crud.get_experiment(session=session, experiment_id=experiment_id)
    runs = session.exec(select(Run).where(Run.experiment_id == experiment_id).order_by(Run.id.desc())).all()
    return ExperimentDetail(
        **ExperimentPublic.model_validate(experiment).model_dump(), runs=[RunPublic.model_validate(r) for r in runs]
    )


@router.patch("/{experiment_id}", response_model=ExperimentPublic)
def update_experiment(
    experiment_id: int, experiment_in: ExperimentUpdate, session: SessionDep, user: CurrentUser
) -> Experiment:
    """Rename an experiment or change its tags or notes (its spec never changes: create a new one)."""
    return experiment_service.update_experiment(
        session=session, experiment_id=experiment_id, experiment_in=experiment_in, user=user
    )


@router.post("/{experiment_id}/runs", status_code=status.HTTP_201_CREATED, response_model=RunPublic)
async def rerun_experiment(experiment_id: int, session: SessionDep, user: CurrentUser) -> Run:
    """Queue a fresh run of the experiment's spec (to continue a stopped run, resume it instead)."""
    rerun = partial(experiment_service.rerun_experiment, session=session, experiment_id=experiment_id, user=user)
    return await to_thread.run_sync(rerun, limiter=SUBMIT_LIMITER)  # it runs the preflight again


# --- request parsing ----------------------------------------------------------------------------
def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def spec_filters_from(request: Request) -> dict[str, Any]:
    """`?spec.lmbda=1.0&spec.teacher=toy:teacher` -> typed values (422 naming an unknown field)."""
    raw = {k[len(SPEC_FILTER_PREFIX) :]: v for k, v in request.query_params.items() if k.startswith(SPEC_FILTER_PREFIX)}
    return crud.parse_spec_filters(raw) if raw else {}


async def _read_experiment_in(request: Request) -> ExperimentCreate:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise invalid(["body", "file"], "a multipart request carries the YAML spec as a 'file' part", "missing")
        document = _yaml_document(_utf8(await upload.read(), ["body", "file"]), ["body", "file"])
        fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
        default_name = PurePath(upload.filename or "experiment").stem
        data = _with_form_fields(document, fields, default_name)
    elif content_type in YAML_TYPES:
        document = _yaml_document(_utf8(await request.body(), ["body"]), ["body"])
        data = _with_form_fields(document, dict(request.query_params), "experiment")
    elif content_type == "application/json":
        data = json_object(await request.body())
    else:
        raise RequestInvalid(
            [{"loc": ["header", "content-type"], "msg": f"unsupported {content_type!r}: send JSON, YAML or multipart",
              "type": "unsupported_media_type"}],
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )  # fmt: skip
    unknown = sorted(set(data) - set(ExperimentCreate.model_fields))
    if unknown:
        raise RequestInvalid([{"loc": ["body", k], "msg": "unknown field", "type": "extra_forbidden"} for k in unknown])
    try:
        return ExperimentCreate.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid(validation_detail(exc)) from None


def _with_form_fields(document: dict[str, Any], fields: dict[str, str], default_name: str) -> dict[str, Any]:
    """A YAML document is either a whole ExperimentCreate (it has `spec:`) or a bare spec, named by the fields."""
    data = dict(document) if "spec" in document else {"spec": document}
    if fields.get("name"):
        data["name"] = fields["name"]
    data.setdefault("name", default_name or "experiment")
    if "tags" in fields:
        data["tags"] = split_list(fields["tags"])
    if "notes" in fields:
        data["notes"] = fields["notes"]
    if "launch" in fields:
        data["launch"] = fields["launch"]
    return data


def _yaml_document(text: str, loc: list[str]) -> dict[str, Any]:
    """The engine's strict YAML: no aliases ("billion laughs"), no key set twice."""
    try:
        document = load_yaml(text)
    except DuplicateKeyError as exc:
        raise invalid(loc, f"invalid YAML: {exc}", "yaml_duplicate_key") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise invalid(loc, f"invalid YAML: {exc}", "yaml_invalid") from None
    if not isinstance(document, dict):
        raise invalid(loc, f"must be a YAML mapping of field: value, got {type(document).__name__}", "type_error")
    return document


def _utf8(raw: bytes, loc: list[str]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(loc, "is not UTF-8 text", "unicode_error") from None
