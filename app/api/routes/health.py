"""Liveness of the service's backing stores (no auth: load balancers and `distill up` poll it)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis
from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlmodel import Session

from app.api.schemas import RETRY_AFTER, Health
from app.boot import read_starting
from app.db import get_engine
from app.events import redis_client
from app.services.errors import RETRY_AFTER_SECONDS
from app.settings import get_settings

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 3.0
# checks run here so a store that does not answer (a dead host, a full pool) cannot hold the route;
# a few threads: a check stuck past its timeout keeps one until its driver gives up
_checks = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health-check")


@router.get("/health", response_model=Health, responses={503: {"model": Health, "headers": RETRY_AFTER}})
def health(response: Response) -> Health:
    """`ok` when the database and Redis answer (within a few seconds); 503 and the failing part's error otherwise."""
    database = _state(_ping_database)
    url = get_settings().redis_url
    redis_state = _state(lambda: _ping_redis(url)) if url else "not configured"
    healthy = database == "ok" and redis_state == "ok"
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    starting = read_starting(get_settings().home)  # the workers `distill up` is still starting
    return Health(status="ok" if healthy else "degraded", database=database, redis=redis_state, starting=starting)


def _state(check: Callable[[], None]) -> str:
    """The string "ok", or the check's error (report, do not raise: this route must always answer)."""
    try:
        _checks.submit(check).result(timeout=CHECK_TIMEOUT_SECONDS)
    except FutureTimeout:
        return f"error: no answer within {CHECK_TIMEOUT_SECONDS:g} s"
    except (Exception, redis.RedisError) as exc:
        return f"error: {type(exc).__name__}: {exc}"[:500]
    return "ok"


def _ping_database() -> None:
    with Session(get_engine()) as session:
        session.execute(text("SELECT 1"))


def _ping_redis(url: str) -> None:
    client = redis_client(url)
    try:
        client.ping()
    finally:
        client.close()
