"""Limits every request's path and query values must keep, checked once for all routes.

Ids and steps are INTEGER columns (32-bit in PostgreSQL) and `skip` an OFFSET (64-bit): a larger
number would reach the driver and fail there (SQLite: OverflowError past 64 bits; PostgreSQL: "integer
out of range" past 32). NUL cannot be stored
or compared in PostgreSQL text. Both are refused here with a 422 naming the parameter, before the
route runs, so no route (today's or a new one) has to remember them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Path, Query, Request
from starlette.convertors import Convertor, register_url_convertor

from app.api.errors import RequestInvalid

INTEGER_MAX = 2**31 - 1  # ids and steps: the largest value of an INTEGER column on every database
BIGINT_MAX = 2**63 - 1  # offsets (`skip`)
BIGINT_PARAMS = frozenset({"skip"})
INTEGER_TEXT = re.compile(r"-?[0-9]+(\.0*)?")  # 3.0 is an integer to JSON Schema too


class IdConvertor(Convertor[str]):
    """`{run_id:id}`: a path segment of digits (a sign allowed, so -1 is a 422 naming it, not a 404).

    Anything else is no id, so the route does not match: POST /api/experiments/yaml is never read as
    experiment "yaml", and an undeclared method on it is a 405. The value stays text for FastAPI to validate.
    """

    regex = "-?[0-9]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())

# Ids as the document declares them (generated clients and fuzzers keep to these): 1 to the column's top.
ExperimentId = Annotated[int, Path(ge=1, le=INTEGER_MAX, description="An experiment's id.")]
RunId = Annotated[int, Path(ge=1, le=INTEGER_MAX, description="A run's id.")]
SweepId = Annotated[int, Path(ge=1, le=INTEGER_MAX, description="A sweep's id.")]
Skip = Annotated[int, Query(ge=0, le=BIGINT_MAX, description="Rows to skip (newest first).")]


def split_list(text: str | None) -> list[str]:
    """`a, b,,c` -> ["a", "b", "c"]: the comma-separated values of a query parameter."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def each_comma_separated(values: Any) -> Any:
    """For a list-typed query parameter: `?x=a,b` and `?x=a&x=b` alike."""
    return [part for value in values for part in split_list(value)] if isinstance(values, list) else values


def int_in_range(value: int, limit: int = INTEGER_MAX) -> bool:
    return -limit - 1 <= value <= limit


def check_request_values(request: Request) -> None:
    """Router dependency: 422 for a NUL in any path or query value, or an integer parameter past 64 bits."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    int_params = {
        kind: {p.alias for p in getattr(dependant, f"{kind}_params", []) if _is_int(p.field_info.annotation)}
        for kind in ("path", "query")
    }
    problems: list[dict[str, Any]] = []
    for kind, items in (("path", request.path_params.items()), ("query", request.query_params.multi_items())):
        for name, value in items:
            if not isinstance(value, str):
                continue
            if "\x00" in value or "\x00" in name:
                problems.append(_problem(kind, name, "NUL characters (\\x00) are refused", "string_nul"))
            elif name in int_params[kind] and not INTEGER_TEXT.fullmatch(value):
                # pydantic would read "1\r" or " 1" as 1: an id is digits, as the document says
                problems.append(_problem(kind, name, f"must be an integer, got {value[:40]!r}", "int_parsing"))
            elif name in int_params[kind] and _too_big(value, limit := _limit(name)):
                problems.append(
                    _problem(
                        kind, name, f"must be between {-limit - 1} and {limit}, got {value[:40]}", "less_than_equal"
                    )
                )
    if problems:
        raise RequestInvalid(problems)


def _is_int(annotation: Any) -> bool:
    return annotation is int or int in getattr(annotation, "__args__", ())


def _limit(name: str) -> int:
    return BIGINT_MAX if name in BIGINT_PARAMS else INTEGER_MAX


def _too_big(text: str, limit: int) -> bool:
    digits = text.strip().lstrip("+-").lstrip("0")
    if not (digits.isascii() and digits.isdigit()):
        return False  # not a plain integer ("³", "+-1"): the route's own validation says so
    if len(digits) > 19:
        return True  # past 64 bits, without asking int() to read a huge number
    try:
        return not int_in_range(int(text.strip()), limit)
    except ValueError:
        return False


def _problem(kind: str, name: str, msg: str, type_: str) -> dict[str, Any]:
    return {"loc": [kind, name.replace("\x00", "\\x00")[:100]], "msg": msg, "type": type_}
