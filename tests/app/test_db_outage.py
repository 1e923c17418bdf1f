"""The API while its database is away (a PostgreSQL server of this module's own, stopped): every route
answers 503 with Retry-After at once, health names the database; all is well again once it is back."""

from __future__ import annotations

import time

import pytest

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
