"""Which teacher servers a spec may name (issue 11, finding 2: runs pointed at http://127.0.0.1:6379 made
the worker send HTTP requests to the box's Redis). DISTILL_ALLOWED_TEACHER_URLS holds URL prefixes.

An allowed URL must also answer as a teacher server at submit (the preflight's probe, issue 22): the
allowed cases use `answering_teacher_url`, a local server that answers the probe."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.auth import create_token
from app.db import get_engine
from app.main import create_app
from app.models import Run
from app.settings import get_settings
from core_distill.checks.preflight import teacher_url_allowed
from tests.helpers.factories import row_counts
from tests.helpers.servers import answering_teacher_url
from tests.helpers.specs import tiny_spec

REDIS_URL = "http://127.0.0.1:6379"


def remote(url: str, api: str = "distill") -> dict:
    return tiny_spec(teacher_server_url=url, teacher_server_api=api, loss_top_k=4)


def allow(monkeypatch, prefixes: str | None = None, auth: str = "off") -> None:
    monkeypatch.setenv("DISTILL_AUTH", auth)
    if prefixes is None:
        monkeypatch.delenv("DISTILL_ALLOWED_TEACHER_URLS", raising=False)
    else:
        monkeypatch.setenv("DISTILL_ALLOWED_TEACHER_URLS", prefixes)
    get_settings.cache_clear()


def refused(response) -> bool:
    return response.status_code == 422 and ["body", "spec", "teacher_server_url"] in [
        d["loc"] for d in response.json()["detail"]
    ]


def test_prefixes_match_at_a_url_boundary():
    prefixes = ["http://teacher.lan:8001", "https://vllm.example.org/v1/"]
    assert teacher_url_allowed("http://teacher.lan:8001", prefixes)
    assert teacher_url_allowed("http://teacher.lan:8001/score", prefixes)
    assert teacher_url_allowed("https://vllm.example.org/v1/completions", prefixes)
    assert not teacher_url_allowed("http://teacher.lan:80015", prefixes)
    assert not teacher_url_allowed("http://teacher.lan:8001@127.0.0.1:6379/", prefixes)
    assert not teacher_url_allowed("https://vllm.example.org/v2/", prefixes)
    assert not teacher_url_allowed(REDIS_URL, prefixes)
    assert not teacher_url_allowed(REDIS_URL, [])
    assert teacher_url_allowed(REDIS_URL, None)


@pytest.fixture
def teacher_url() -> Iterator[str]:
    with answering_teacher_url() as (url, _):
        yield url


@pytest.fixture
def auth_client(service_env, monkeypatch) -> Iterator[TestClient]:
    allow(monkeypatch, auth="on")
    with Session(get_engine()) as session:
        token = create_token(session=session, name="ada")
    with TestClient(create_app(ui=False), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


@pytest.mark.parametrize("api", ["distill", "vllm"])
def test_with_auth_on_an_empty_list_allows_no_remote_teacher(auth_client, monkeypatch, api, teacher_url):
    before = row_counts()
    response = auth_client.post("/api/experiments", json={"name": "x", "spec": remote(REDIS_URL, api)})
    assert refused(response), response.text
    assert "DISTILL_ALLOWED_TEACHER_URLS" in response.text
    allow(monkeypatch, f"{teacher_url}/", auth="on")
    assert refused(auth_client.post("/api/experiments", json={"name": "x", "spec": remote(REDIS_URL, api)}))
    assert row_counts() == before
    ok = auth_client.post("/api/experiments", json={"name": "x", "spec": remote(f"{teacher_url}/", api)})
    assert ok.status_code == 201, ok.text


def test_with_auth_off_any_url_unless_a_list_is_set(client, monkeypatch, teacher_url):
    allow(monkeypatch)
    assert client.post("/api/experiments", json={"name": "x", "spec": remote(teacher_url)}).status_code == 201
    allow(monkeypatch, "http://teacher.lan:8001/")
    refusal = client.post("/api/experiments", json={"name": "x", "spec": remote(teacher_url)})
    assert refused(refusal) and "not an allowed teacher server" in refusal.text, refusal.text


def test_the_worker_checks_again_before_connecting(client, monkeypatch):
    """A run queued while the URL was allowed, then the list changed: the worker fails it and never connects."""
    from app.services.booking import announce_host
    from worker.launch import HOST_ENV
    from worker.tasks import run_experiment

    monkeypatch.setenv(HOST_ENV, "cpu@teacher-urls-test")  # this process plays a one-slot CPU worker host
    with Session(get_engine()) as session:
        announce_host(session=session, name="cpu@teacher-urls-test", labels=["cpu"], queue="gpu.cpu@teacher-urls-test")
    with answering_teacher_url() as (url, requested):
        allow(monkeypatch)
        created = client.post("/api/experiments", json={"name": "x", "spec": remote(url)})
        assert created.status_code == 201, created.text
        assert requested == ["/info"]  # the submit's preflight probed it once
        allow(monkeypatch, "http://teacher.lan:8001/")
        run_experiment.apply(args=(created.json()["run_id"],))  # the worker's task, in this process
        with Session(get_engine()) as session:
            run = session.get(Run, created.json()["run_id"])
            assert run.status == "failed" and "teacher_server_url" in run.error, (run.status, run.error)
        assert requested == ["/info"]  # the worker never knocked
