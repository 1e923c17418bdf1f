"""DISTILL_AUTH=on: every route but health needs a valid token; experiments belong to their creator."""

from __future__ import annotations

import asyncio
import re

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.auth import COOKIE_NAME, auth_dependency, create_token, hash_token, user_for_token
from app.db import get_engine
from app.main import create_app
from app.models import ApiToken
from app.settings import get_settings
from tests.helpers.specs import tiny_spec

OPEN_ROUTES = {"/api/health", "/api/login", "/api/logout"}


@pytest.fixture
def auth_client(service_env, monkeypatch):
    monkeypatch.setenv("DISTILL_AUTH", "on")
    get_settings.cache_clear()
    with Session(get_engine()) as session:
        tokens = {name: create_token(session=session, name=name) for name in ("ada", "bob")}
    app = create_app(ui=False)
    with TestClient(app) as client:
        client.api_paths = app.openapi()["paths"]  # every route of the API, with its methods
        yield client, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_stored_hashed(auth_client):
    _, tokens = auth_client
    with Session(get_engine()) as session:
        rows = session.exec(select(ApiToken)).all()
        assert {r.name for r in rows} == {"ada", "bob"}
        assert {r.token_hash for r in rows} == {hash_token(t) for t in tokens.values()}
        assert all(t not in r.token_hash for r in rows for t in tokens.values())
        assert user_for_token(session=session, token=tokens["ada"]) == "ada"
        assert user_for_token(session=session, token=tokens["ada"] + "x") is None
        assert session.exec(select(ApiToken).where(ApiToken.name == "ada")).one().last_used_at is not None
        with pytest.raises(ValueError, match="exists"):
            create_token(session=session, name="ada")


def test_no_route_answers_without_a_valid_token(auth_client):
    client, tokens = auth_client
    created = client.post(
        "/api/experiments", json={"name": "secret-name", "spec": tiny_spec()}, headers=bearer(tokens["ada"])
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    paths = {path: ops for path, ops in client.api_paths.items() if path.startswith("/api")}
    assert len(paths) >= 20
    checked = 0
    for route_path, operations in paths.items():
        if route_path in OPEN_ROUTES:
            continue
        path = re.sub(r"\{[^}]+\}", str(run_id), route_path)
        if route_path == "/api/compare":
            path += f"?run_ids={run_id}"
        for method in operations:
            for headers in (
                {},
                bearer("not-a-token"),
                {"Authorization": "Basic YWRhOmFkYQ=="},
                {"Cookie": f"{COOKIE_NAME}=nope"},
            ):
                response = client.request(method, path, headers=headers, json={"name": "x", "spec": tiny_spec()})
                assert response.status_code == 401, (method, path, headers, response.text)
                assert "secret-name" not in response.text and "toy:student" not in response.text
                assert response.headers["www-authenticate"] == "Bearer"
                checked += 1
    assert checked >= 4 * 20
    assert client.get("/api/health").status_code == 200


def test_a_valid_token_or_cookie_gets_in(auth_client):
    client, tokens = auth_client
    assert client.get("/api/me", headers=bearer(tokens["bob"])).json() == {"user": "bob", "auth": True}
    assert client.post("/api/login", json={"token": "wrong"}).status_code == 401
    login = client.post("/api/login", json={"token": tokens["ada"]})
    assert login.status_code == 200 and COOKIE_NAME in login.cookies
    assert client.get("/api/me").json() == {"user": "ada", "auth": True}  # the cookie now rides along
    client.post("/api/logout")
    client.cookies.clear()
    assert client.get("/api/me").status_code == 401


def test_owners_alone_change_their_experiments(auth_client):
    client, tokens = auth_client
    created = client.post(
        "/api/experiments", json={"name": "ada's", "spec": tiny_spec()}, headers=bearer(tokens["ada"])
    )
    experiment_id, run_id = created.json()["id"], created.json()["run_id"]
    assert created.json()["experiment"]["owner"] == "ada"
    for method, path, body in [
        ("PATCH", f"/api/experiments/{experiment_id}", {"notes": "bob was here"}),
        ("POST", f"/api/experiments/{experiment_id}/runs", None),
        ("POST", f"/api/runs/{run_id}/cancel", None),
        ("POST", f"/api/runs/{run_id}/resume", None),
    ]:
        response = client.request(method, path, json=body, headers=bearer(tokens["bob"]))
        assert response.status_code == 403, (method, path, response.text)
    # bob can read; nothing changed; ada can act
    assert client.get(f"/api/runs/{run_id}", headers=bearer(tokens["bob"])).json()["status"] == "queued"
    assert client.get(f"/api/experiments/{experiment_id}", headers=bearer(tokens["bob"])).json()["notes"] == ""
    assert client.post(f"/api/runs/{run_id}/cancel", headers=bearer(tokens["ada"])).json()["status"] == "cancelled"
    mine = client.get("/api/experiments?owner=bob", headers=bearer(tokens["bob"])).json()
    assert mine == {"data": [], "count": 0}


def test_gradio_auth_dependency(auth_client):
    client, tokens = auth_client
    from starlette.requests import Request

    def request(headers: dict[str, str]) -> Request:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        return Request({"type": "http", "method": "GET", "path": "/ui", "headers": raw, "query_string": b""})

    def user_of(headers: dict[str, str]) -> str | None:
        return asyncio.run(auth_dependency(request(headers)))  # Gradio awaits it on its event loop

    assert user_of(bearer(tokens["ada"])) == "ada"
    assert user_of({"Cookie": f"{COOKIE_NAME}={tokens['bob']}"}) == "bob"
    assert user_of({}) is None
    assert user_of(bearer("forged")) is None
    assert get_engine().pool.checkedout() == 0  # each check closed its session
