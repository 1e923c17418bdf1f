"""Turning errors into responses: every 4xx names what was wrong and where ("loc"), like FastAPI's own 422s."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.services.errors import (
    RETRY_AFTER_SECONDS,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    QueueUnavailableError,
    SweepError,
    SweepTooLarge,
)
from core_distill.spec import DistillSpec, SpecError, unknown_field_message


class BodyTooLarge(Exception):
    """Raised while a body streams in past app.main.MAX_BODY_BYTES; the body-limit middleware answers 413."""


class RequestInvalid(Exception):
    """A request body that could not be read or validated: answered with 422 and `detail`."""

    def __init__(self, detail: list[dict[str, Any]], status_code: int = status.HTTP_422_UNPROCESSABLE_CONTENT):
        self.detail = detail
        self.status_code = status_code


def invalid(loc: list[str | int], msg: str, kind: str = "value_error") -> RequestInvalid:
    return RequestInvalid([{"loc": loc, "msg": msg, "type": kind}])


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object; a 422 at `body` naming what it is instead."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise invalid(["body"], f"invalid JSON: {exc}", "json_invalid") from None
    if not isinstance(data, dict):
        raise invalid(["body"], f"must be a JSON object, got {type(data).__name__}", "type_error")
    return data


def spec_error_detail(exc: SpecError, prefix: tuple[str, ...] = ("body", "spec")) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *field.split(".")], "msg": msg, "type": "spec_error"} for field, msg in exc.errors.items()
    ]


def validation_detail(exc: ValidationError, prefix: tuple[str, ...] = ("body",)) -> list[dict[str, Any]]:
    """pydantic errors without echoing the (possibly huge) input back, with the bad value shortened."""
    return problems([{**err, "loc": (*prefix, *err["loc"])} for err in exc.errors()])


def problems(errors: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's (or FastAPI's) error dicts as `Problem`s: loc, a message naming the bad value, type."""
    detail = []
    for err in errors:
        loc = list(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # DistillSpec's cross-field rules report at the model level as "field: message"
        field, sep, rest = msg.partition(": ")
        kind = err["type"]
        if loc and loc[-1] == "spec" and sep and field in DistillSpec.model_fields:
            loc, msg, kind = [*loc, field], rest, "spec_combination"  # fields valid alone, not together
        elif err["type"] == "extra_forbidden" and len(loc) > 1 and loc[-2] == "spec":
            msg = unknown_field_message(str(loc[-1]))  # a typo names its fix: did you mean 'lmbda'?
        elif "input" in err and err["type"] not in ("missing", "extra_forbidden", "json_invalid"):
            msg = f"{msg}, got {_short(err['input'])}"
        detail.append({"loc": loc, "msg": msg, "type": kind})
    return detail


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):
        text = repr(type(value))
    return text if len(text) <= 120 else text[:120] + f"... ({len(text)} characters)"


def allowed_methods(request: Request) -> str | None:
    """Every method the OpenAPI document lists for the request's path (its ids are digits: app.api.params)."""
    path = request.url.path
    for template, operations in request.app.openapi()["paths"].items():
        parts = ["-?[0-9]+" if part.startswith("{") else re.escape(part) for part in template.split("/")]
        if re.fullmatch("/".join(parts), path):
            methods = {method.upper() for method in operations}
            return ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
    return None


UNREADABLE_BODY = "There was an error parsing the body"  # FastAPI's 400 for a body json.loads could not take


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": problems(exc.errors())}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # A body that is not UTF-8, or nested deeper than the parser's stack, is a 422 at ["body"] like
        # any unreadable body (one declared shape for every bad body), not FastAPI's bare 400.
        if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.detail == UNREADABLE_BODY:
            cause = exc.__cause__
            if isinstance(cause, BodyTooLarge):
                raise cause  # the body-limit middleware's 413
            why = "is not UTF-8 text" if isinstance(cause, UnicodeDecodeError) else "could not be read as JSON"
            if isinstance(cause, RecursionError):
                why = "is nested too deep to read"
            detail = [{"loc": ["body"], "msg": why, "type": "json_invalid"}]
            return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
        # Starlette's Allow names the methods of the first route on the path; a path has several
        # (GET and POST /api/experiments are two routes): name them all, as RFC 9110 asks
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED and (allowed := allowed_methods(request)):
            exc.headers = {**(exc.headers or {}), "Allow": allowed}
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestInvalid)
    async def _invalid(_: Request, exc: RequestInvalid) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(SweepError)  # before SpecError: the more specific class is looked up first
    async def _sweep(_: Request, exc: SweepError) -> JSONResponse:
        kind = "sweep_too_large" if isinstance(exc, SweepTooLarge) else "sweep_error"
        detail = [{"loc": ["body", *loc], "msg": msg, "type": kind} for loc, msg in exc.problems.items()]
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(SpecError)
    async def _spec(_: Request, exc: SpecError) -> JSONResponse:
        return JSONResponse({"detail": spec_error_detail(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(ForbiddenError)
    async def _forbidden(_: Request, exc: ForbiddenError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_403_FORBIDDEN)

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    @app.exception_handler(QueueUnavailableError)
    async def _queue_down(_: Request, exc: QueueUnavailableError) -> JSONResponse:
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers=retry)
