"""Limits every request's path and query values must keep, checked once for all routes.

Ids, `skip`, `step` and the like are 64-bit integers in the database: a larger number would reach
the driver and fail there (SQLite: OverflowError; PostgreSQL: out of range). NUL cannot be stored
or compared in PostgreSQL text. Both are refused here with a 422 naming the parameter, before the
route runs, so no route (today's or a new one) has to remember them.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from app.api.errors import RequestInvalid

BIGINT_MAX = 2**63 - 1  # the largest id, offset or step a database integer holds


def int_in_range(value: int) -> bool:
    return -BIGINT_MAX - 1 <= value <= BIGINT_MAX


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
            elif name in int_params[kind] and _too_big(value):
                problems.append(
                    _problem(kind, name, f"must be at most {BIGINT_MAX}, got {value[:40]}", "less_than_equal")
                )
    if problems:
        raise RequestInvalid(problems)


def _is_int(annotation: Any) -> bool:
    return annotation is int or int in getattr(annotation, "__args__", ())


def _too_big(text: str) -> bool:
    digits = text.strip().lstrip("+-").lstrip("0")
    if not digits.isdigit():
        return False  # not an integer at all: the route's own validation says so
    return len(digits) > 19 or not int_in_range(int(text.strip()))  # 19 digits: int() stays cheap


def _problem(kind: str, name: str, msg: str, type_: str) -> dict[str, Any]:
    return {"loc": [kind, name.replace("\x00", "\\x00")[:100]], "msg": msg, "type": type_}
