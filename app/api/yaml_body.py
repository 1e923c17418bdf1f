"""The YAML ways into POST /api/experiments/yaml: a YAML body, or a multipart upload of a YAML file.

A document is either a bare spec (like examples/*.yaml, or GET /api/runs/{id}/spec.yaml) with the
experiment's name, tags, notes and launch as query (or form) fields, or a whole `ExperimentCreate`
(it has `spec:`; what it leaves out, its `name` say, may come from the fields). The engine's strict loader reads it:
no aliases, no key set twice. An empty document is refused: it would silently launch the defaults.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import yaml
from fastapi import Request, status
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.api.errors import RequestInvalid, invalid, validation_detail
from app.models import MAX_TAG_LENGTH, MAX_TAGS, ExperimentCreate
from core_distill.spec import DuplicateKeyError, load_yaml

YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
DEFAULT_NAME = "experiment"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_yaml_experiment(request: Request, fields: dict[str, Any]) -> ExperimentCreate:
    """The ExperimentCreate of a YAML body or upload; `fields` (name, tags, notes, launch; None = not
    given) fill in or override the document's. 415 for another content type, 422 naming what is wrong."""
    kind = media_type(request)
    default_name = DEFAULT_NAME
    if kind == "multipart/form-data":
        text, form_fields, default_name = await _read_upload(request)
        fields = {**form_fields, **{k: v for k, v in fields.items() if v is not None}}
        loc = ["body", "file"]
    elif kind in YAML_TYPES:
        text, loc = _utf8(await request.body(), ["body"]), ["body"]
    else:
        raise RequestInvalid(
            [{"loc": ["header", "content-type"], "type": "unsupported_media_type",
              "msg": f"unsupported {kind or 'no content type'!r}: send YAML (application/yaml) or a multipart upload "
                     "with the YAML in 'file'; JSON goes to POST /api/experiments"}],
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        )  # fmt: skip
    data = _with_fields(_yaml_document(text, loc), fields, default_name)
    try:
        return ExperimentCreate.model_validate(data)
    except ValidationError as exc:
        raise RequestInvalid(validation_detail(exc)) from None


async def _read_upload(request: Request) -> tuple[str, dict[str, Any], str]:
    try:
        form = await request.form(max_files=1, max_fields=10)
    except MultiPartException as exc:
        raise invalid(["body"], f"unreadable multipart body: {exc.message}", "multipart_invalid") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise invalid(["body", "file"], "a multipart request carries the YAML spec as a 'file' part", "missing")
    text = _utf8(await upload.read(), ["body", "file"])
    fields: dict[str, Any] = {
        k: v for k, v in form.items() if k in ("name", "tags", "notes", "launch") and isinstance(v, str)
    }
    if "tags" in fields:
        fields["tags"] = tags_of(fields["tags"], ["body", "tags"])
    if "launch" in fields:  # a form sends text; ExperimentCreate takes a real boolean only
        fields["launch"] = {"true": True, "false": False}.get(fields["launch"].strip().lower(), fields["launch"])
    return text, fields, PurePath(upload.filename or DEFAULT_NAME).stem or DEFAULT_NAME


# `tags=a,b`: at most MAX_TAGS parts of at most MAX_TAG_LENGTH characters each, blank parts dropped
TAGS_TEXT_PATTERN = rf"^[^,\x00]{{0,{MAX_TAG_LENGTH}}}(,[^,\x00]{{0,{MAX_TAG_LENGTH}}}){{0,{MAX_TAGS - 1}}}$"


def tags_of(text: str, loc: list[str]) -> list[str]:
    """The tags of a comma-separated field, with the limits TAGS_TEXT_PATTERN declares (422 at `loc`)."""
    parts = text.split(",")
    if len(parts) > MAX_TAGS or any(len(part) > MAX_TAG_LENGTH for part in parts):
        raise invalid(loc, f"at most {MAX_TAGS} comma-separated tags of at most {MAX_TAG_LENGTH} characters each")
    return [part.strip() for part in parts if part.strip()]


def _with_fields(document: dict[str, Any], fields: dict[str, Any], default_name: str) -> dict[str, Any]:
    """A whole ExperimentCreate (it has `spec:`) or a bare spec; the fields fill in what the document leaves out."""
    data = dict(document) if "spec" in document else {"spec": document}
    for key, value in fields.items():
        if value is not None and value != "":
            data.setdefault(key, value)
    data.setdefault("name", default_name)
    return data


def _yaml_document(text: str, loc: list[str]) -> dict[str, Any]:
    try:
        document = load_yaml(text)
    except DuplicateKeyError as exc:
        raise invalid(loc, f"invalid YAML: {exc}", "yaml_duplicate_key") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise invalid(loc, f"invalid YAML: {exc}", "yaml_invalid") from None
    if document is None or document == {}:
        raise invalid(loc, "is an empty YAML document: give the spec's fields (student, teacher, ...) or an "
                      "experiment with `spec:`; an empty spec would launch every default", "yaml_empty")  # fmt: skip
    if not isinstance(document, dict):
        raise invalid(loc, f"must be a YAML mapping of field: value, got {type(document).__name__}", "type_error")
    return document


def _utf8(raw: bytes, loc: list[str]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(loc, "is not UTF-8 text", "unicode_error") from None
