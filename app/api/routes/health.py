"""Liveness of the service's backing stores (no auth: load balancers and `distill up` poll it)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlmodel import Session

from app.api.schemas import Health
from app.boot import read_starting
from app.db import get_engine
from app.events import redis_client
from app.settings import get_settings

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(response: Response) -> Health:
    """`ok` when the database and Redis answer; 503 and the failing part's error otherwise."""
    try:
        with Session(get_engine()) as session:
            session.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # report, do not raise: this route must always answer
        database = f"error: {type(exc).__name__}: {exc}"[:500]
    url = get_settings().redis_url
    if not url:
        redis_state = "not configured"
    else:
        try:
            client = redis_client(url)
            client.ping()
            client.close()
            redis_state = "ok"
        except (redis.RedisError, OSError) as exc:
            redis_state = f"error: {type(exc).__name__}: {exc}"[:500]
    healthy = database == "ok" and redis_state == "ok"
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    starting = read_starting(get_settings().home)  # the workers `distill up` is still starting
    return Health(status="ok" if healthy else "degraded", database=database, redis=redis_state, starting=starting)
