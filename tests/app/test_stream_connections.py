"""Open live views hold no database connection (issue 20, item 2): with auth on, 20 SSE streams over a
real server leave the pool (and PostgreSQL) with nothing checked out, and a plain GET still answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import psycopg
import pytest

from app import events
from app.db import get_engine
from app.main import create_app
from tests.helpers.servers import serve_in_thread
from tests.helpers.specs import tiny_spec
from tests.services import POSTGRES_ADMIN_URL

STREAMS = 20
BURST = 120  # concurrent requests: three times the 40 worker threads, past the pool's 50 connections
MOST_CHECKED_OUT = 2  # a request in flight elsewhere (the reaper's loop is off: lifespan="off")
GET_BOUND_SECONDS = 10.0  # generous: the count is the assertion, the time only catches a pool wait


@pytest.fixture
def server(token) -> Iterator[str]:
    with serve_in_thread(create_app(ui=False)) as url:
        yield url


def next_event(lines: Iterator[str]) -> str:
    """The next event's name, read from a stream's lines (one iterator per stream: dropping it closes the stream)."""
    for line in lines:
        if line.startswith("event:"):
            return line.partition(":")[2].strip()
    raise AssertionError("the stream ended")


def stream_sessions(database: str) -> list[tuple[str, str]]:
    """(state, query) of each PostgreSQL backend on the test database, but this one."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state, query FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (database,)
        ).fetchall()
    return [(state or "", query or "") for state, query in rows]


def test_open_streams_hold_no_database_connection(server, token, service_env):
    engine = get_engine()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server, headers=headers, timeout=60) as http, ExitStack() as streams:
        created = http.post("/api/experiments", json={"name": "watched", "spec": tiny_spec()})
        assert created.status_code == 201, created.text
        run_id = created.json()["run_id"]
        events.publish(events.redis_client(service_env.redis_url), run_id, "metrics", {"points": []})
        open_streams: list[Iterator[str]] = []
        for n in range(STREAMS):
            response = streams.enter_context(http.stream("GET", f"/api/runs/{run_id}/events"))
            assert response.status_code == 200, f"stream {n}: {response.status_code} {response.read()!r}"
            open_streams.append(response.iter_lines())
            assert next_event(open_streams[-1]) == "metrics"

        assert engine.pool.checkedout() <= MOST_CHECKED_OUT, engine.pool.status()
        if engine.dialect.name == "postgresql":
            sessions = stream_sessions(engine.url.database)
            assert not [s for s in sessions if s[0].startswith("idle in transaction")], sessions

        started = time.monotonic()
        answer = http.get(f"/api/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < GET_BOUND_SECONDS
        events.publish(events.redis_client(service_env.redis_url), run_id, "samples", {"step": 1})
        assert [next_event(lines) for lines in open_streams] == ["samples"] * STREAMS  # all still open
        assert engine.pool.checkedout() <= MOST_CHECKED_OUT, engine.pool.status()


def test_a_burst_past_the_pool_and_the_threads_all_answer(server, token, service_env):
    """More requests at once than threads and connections: each waits its turn, none times out on the pool.
    (Were every connection held by a request waiting for a thread while every thread waits for a
    connection, they would all wait until the pool's 30 s timeout and answer 500.)"""
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        run_id = http.post("/api/experiments", json={"name": "busy", "spec": tiny_spec()}).json()["run_id"]

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=BURST)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=server, headers=headers, timeout=120, limits=limits) as client:
            responses = await asyncio.gather(*(client.get(f"/api/runs/{run_id}") for _ in range(BURST)))
        return [r.status_code for r in responses]

    started = time.monotonic()
    statuses = asyncio.run(burst())
    assert statuses == [200] * BURST, sorted(set(statuses))
    assert time.monotonic() - started < 30.0  # the pool's timeout: nothing waited for it
