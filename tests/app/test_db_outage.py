"""The API while its database is away (a PostgreSQL server of this module's own, stopped): every route
answers 503 with Retry-After at once, health names the database; all is well again once it is back.
Health also answers in seconds for a database that never answers, and outages are told from bad
statements on real errors."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.helpers.factories import post_experiment, wait_for
from tests.helpers.specs import tiny_spec

ANSWER_WITHIN_SECONDS = 15.0  # generous for a loaded machine; a hung connect would take far longer


@pytest.fixture(scope="module")
def _service_backends(own_backends):
    """service_env and client on this module's own PostgreSQL server."""
    return own_backends


def test_routes_answer_503_while_the_database_is_down_and_200_once_it_is_back(client, own_postgres):
    experiment = post_experiment(client, "before the outage")
    assert client.get("/api/health").status_code == 200

    own_postgres.stop()
    try:
        started = time.monotonic()
        listing = client.get("/api/experiments")
        created = client.post("/api/experiments", json={"name": "during the outage", "spec": tiny_spec()})
        detail = client.get(f"/api/experiments/{experiment['id']}")
        health = client.get("/api/health")
        elapsed = time.monotonic() - started
    finally:
        own_postgres.start()

    for response in (listing, created, detail):
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.headers["retry-after"] == "5"
        assert "database is unavailable" in response.json()["detail"]
    assert health.status_code == 503
    assert health.json()["status"] == "degraded" and health.json()["redis"] == "ok"
    assert health.json()["database"].startswith("error:"), health.json()
    assert elapsed < ANSWER_WITHIN_SECONDS

    wait_for(lambda: client.get("/api/health").status_code == 200, 60, "health to answer 200 again")
    names = [e["name"] for e in client.get("/api/experiments").json()["data"]]
    assert names == ["before the outage"]  # the request made during the outage wrote nothing


def test_health_answers_in_seconds_when_the_database_never_answers(client, monkeypatch):
    from app.db import get_engine
    from app.settings import get_settings

    silent = socket.create_server(("127.0.0.1", 0))  # connects complete in its backlog; nothing ever replies
    monkeypatch.setenv("DISTILL_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/x")
    get_settings.cache_clear()
    get_engine.cache_clear()
    answers: list = []

    def ask() -> None:
        started = time.monotonic()
        answers.append((client.get("/api/health"), time.monotonic() - started))

    asking = threading.Thread(target=ask, daemon=True)  # a hung route must fail this test, not hang it
    try:
        asking.start()
        asking.join(60)
        assert answers, "/api/health did not answer within 60 s"
        health, took = answers[0]
        assert health.status_code == 503 and took < ANSWER_WITHIN_SECONDS, (health.text, took)
        assert "no answer" in health.json()["database"] and health.json()["redis"] == "ok"
    finally:
        silent.close()
        get_engine.cache_clear()


def error_of(engine, statement: str) -> DBAPIError:
    """The real error `statement` raises on `engine` (fresh connection)."""
    with pytest.raises(DBAPIError) as raised, engine.connect() as conn:
        conn.execute(text(statement))
    return raised.value


def test_outages_are_told_from_bad_statements_on_real_errors(own_postgres, tmp_path):
    from app.db_retry import is_db_unavailable

    postgres = create_engine("postgresql+psycopg://" + own_postgres.url.split("://", 1)[1])
    assert not is_db_unavailable(error_of(postgres, "SELECT * FROM no_such_table"))
    # a statement timeout is an OperationalError in psycopg, but the statement's: not an outage to wait out
    assert not is_db_unavailable(error_of(postgres, "SET statement_timeout = 1; SELECT pg_sleep(1)"))
    own_postgres.stop()
    try:
        refused = error_of(postgres, "SELECT 1")
    finally:
        own_postgres.start()
        postgres.dispose()
    assert is_db_unavailable(refused), refused

    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # another process's write: readers wait too (rollback journal)
    sqlite = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        locked = error_of(sqlite, "SELECT x FROM t")
    finally:
        holder.close()
    assert is_db_unavailable(locked), locked
    assert not is_db_unavailable(error_of(sqlite, "SELECT x FROM missing"))
    sqlite.dispose()
