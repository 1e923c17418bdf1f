"""Malformed and hostile input: a 4xx naming what was wrong, and not one row or message written."""

from __future__ import annotations

import json

import pytest
import redis

from app.settings import get_settings
from tests.helpers.factories import row_counts
from tests.helpers.specs import tiny_spec


@pytest.fixture
def unchanged(client, service_env):
    """Asserts after the test that no table gained a row and no run message reached the queue."""
    before = row_counts()
    yield
    assert row_counts() == before
    assert redis.Redis.from_url(service_env.redis_url).llen("gpu") == 0


def post(client, body, **kwargs):
    return client.post("/api/experiments", json=body, **kwargs)


def locs(response) -> list[list]:
    return [d["loc"] for d in response.json()["detail"]]


@pytest.mark.parametrize(
    ("spec_change", "field"),
    [
        ({"lmbda": 2.0}, "lmbda"),
        ({"beta": -0.1}, "beta"),
        ({"max_steps": 0}, "max_steps"),
        ({"batch_size": "four"}, "batch_size"),
        ({"learning_rate": 1e9}, "learning_rate"),
        ({"objective": "dpo"}, "objective"),
        ({"temperature": float("nan")}, "temperature"),
        ({"student": "x" * 5000}, "student"),
        ({"not_a_field": 1}, "not_a_field"),
        ({"objective": "minillm", "lmbda": 0.5}, "lmbda"),  # a cross-field rule names its field
    ],
)
def test_bad_spec_fields_are_422_naming_the_field(client, unchanged, spec_change, field):
    body = json.dumps({"name": "bad", "spec": tiny_spec(**spec_change)})  # NaN goes out as the JSON extension
    response = client.post("/api/experiments", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert ["body", "spec", field] in locs(response)
    assert len(response.text) < 2000  # a huge bad value is not echoed back


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "", "spec": tiny_spec()}, ["body", "name"]),
        ({"name": "n" * 201, "spec": tiny_spec()}, ["body", "name"]),
        ({"name": "ok", "notes": "n" * 10_001, "spec": tiny_spec()}, ["body", "notes"]),
        ({"name": "ok", "tags": ["t"] * 33, "spec": tiny_spec()}, ["body", "tags"]),
        ({"name": "ok", "tags": ["t" * 65], "spec": tiny_spec()}, ["body", "tags"]),
        ({"name": "ok"}, ["body", "spec"]),
        ({"name": "ok", "spec": "lmbda: 1"}, ["body", "spec"]),
        ({"name": "ok", "spec": tiny_spec(), "owner": "mallory"}, ["body", "owner"]),
    ],
)
def test_bad_experiment_fields_are_422(client, unchanged, body, loc):
    response = post(client, body)
    assert response.status_code == 422, response.text
    assert loc in locs(response)


@pytest.mark.parametrize(
    ("path", "content", "content_type", "status"),
    [
        ("", b'{"name": "x", "spec": {', "application/json", 422),
        ("", b"[1, 2, 3]", "application/json", 422),
        ("", b'{"name": "\xff\xfe"}', "application/json", 422),  # not UTF-8: 422 at body, not a bare 400
        ("/yaml", b"\xff\xfe not utf-8", "application/yaml", 422),
        ("/yaml", b"a: [unclosed", "application/yaml", 422),
        ("/yaml", b"- just\n- a list\n", "application/yaml", 422),
        ("/yaml", b"base: &a [1, 2]\nlmbda: *a\n", "application/yaml", 422),  # aliases: the billion-laughs door
        ("/yaml", b"{}", "application/yaml", 422),  # an empty document would launch every default
        ("/yaml", b"", "application/yaml", 422),
        ("/yaml", b"# only a comment\n", "text/yaml", 422),
        ("", b"[" * 100_000 + b"]" * 100_000, "application/json", 422),  # nesting deeper than the parser's stack
        ("", b"name=x", "application/x-www-form-urlencoded", 415),
        ("", b"student: toy:student\n", "application/yaml", 415),  # YAML has its own route, which the 415 names
        ("/yaml", b'{"name": "x"}', "application/json", 415),
    ],
)
def test_unreadable_bodies(client, unchanged, path, content, content_type, status):
    response = client.post(f"/api/experiments{path}", content=content, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["msg"]
    if content == b"{}":
        assert "empty" in response.json()["detail"][0]["msg"]
    if content_type == "application/yaml" and status == 415:
        assert "/api/experiments/yaml" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("content", "files"),
    [
        ("batch_size: 16\nbeta: 0.5\nbatch_size: 8\n", None),  # a bare spec
        ("name: x\nspec:\n  batch_size: 16\n  batch_size: 8\n", None),  # inside an ExperimentCreate
        (None, {"file": ("twice.yaml", b"batch_size: 16\nbatch_size: 8\n", "application/yaml")}),  # an upload
    ],
)
def test_yaml_keys_set_twice_are_422_naming_the_key(client, unchanged, content, files):
    if files:
        response = client.post("/api/experiments/yaml", files=files)
    else:
        response = client.post("/api/experiments/yaml", content=content, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert "'batch_size' is set twice" in detail["msg"] and detail["type"] == "yaml_duplicate_key"


def test_bodies_over_a_mebibyte_are_413(client, unchanged):
    big = {"name": "big", "notes": "x" * (1024 * 1024), "spec": tiny_spec()}
    assert post(client, big).status_code == 413

    def chunks():  # no Content-Length: the limit is counted while the body streams in
        yield b'{"name": "big", "notes": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}'

    response = client.post("/api/experiments", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text


def test_paths_outside_the_allowed_roots_are_refused(client, unchanged, service_env, toy_dir, tmp_path, monkeypatch):
    allowed = tmp_path / "models"
    allowed.mkdir()
    outside = tmp_path / "elsewhere"
    (outside / "data").mkdir(parents=True)
    (outside / "data" / "train.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n')
    (allowed / "sneaky").symlink_to(outside)  # a symlink inside the root pointing out of it
    monkeypatch.setenv("DISTILL_ALLOWED_PATHS", str(allowed))
    get_settings.cache_clear()
    cases = {
        "train_data": str(outside / "data" / "train.jsonl"),
        "eval_data": str(allowed / ".." / "elsewhere" / "data" / "train.jsonl"),
    }
    for field, value in cases.items():
        response = post(client, {"name": "x", "spec": tiny_spec(**{field: value})})
        assert response.status_code == 422, response.text
        assert ["body", "spec", field] in locs(response) and "outside the allowed roots" in response.text
    response = post(client, {"name": "x", "spec": tiny_spec(student=str(allowed / "sneaky" / "data"))})
    assert response.status_code == 422 and ["body", "spec", "student"] in locs(response)
    response = post(client, {"name": "x", "spec": tiny_spec(train_data="toy:../../../etc/passwd")})
    assert response.status_code == 422 and "leaves the toy folder" in response.text
    response = post(client, {"name": "x", "spec": tiny_spec(train_data="/etc/passwd")})
    assert response.status_code == 422 and ["body", "spec", "train_data"] in locs(response)


def test_paths_that_do_not_exist_are_named(client, unchanged, tmp_path):
    response = post(client, {"name": "x", "spec": tiny_spec(student=str(tmp_path / "nope"))})
    assert response.status_code == 422
    assert locs(response) == [["body", "spec", "student"]] and "no model directory" in response.text


def test_remote_code_needs_the_servers_permission(client, service_env, monkeypatch):
    before = row_counts()
    response = post(client, {"name": "x", "spec": tiny_spec(trust_remote_code=True)})
    assert response.status_code == 422 and ["body", "spec", "trust_remote_code"] in locs(response)
    assert row_counts() == before
    monkeypatch.setenv("DISTILL_ALLOW_REMOTE_CODE", "true")
    get_settings.cache_clear()
    assert post(client, {"name": "x", "spec": tiny_spec(trust_remote_code=True)}).status_code == 201


def test_queue_down_is_503_and_nothing_is_stored(client, service_env, monkeypatch):
    before = row_counts()
    from tests.services import free_port

    monkeypatch.setenv("DISTILL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    get_settings.cache_clear()
    response = post(client, {"name": "x", "spec": tiny_spec()})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert "queue" in response.json()["detail"] and row_counts() == before


def test_bad_queries_are_422(client, unchanged):
    for path, loc in [
        ("/api/experiments?spec.nope=1", ["body", "spec", "nope"]),
        ("/api/runs?spec.lmbda=high", ["body", "spec", "lmbda"]),
        ("/api/experiments?limit=100000", ["query", "limit"]),
        ("/api/experiments?skip=-1", ["query", "skip"]),
        ("/api/runs?status=queued,sleeping", ["query", "status", 1]),  # names the bad one
        ("/api/compare?run_ids=1,x", ["query", "run_ids", 1]),
        ("/api/compare?run_ids=" + ",".join(str(i) for i in range(1, 31)), ["query", "run_ids"]),
    ]:
        response = client.get(path)
        assert response.status_code == 422, (path, response.text)
        assert loc in locs(response), (path, response.text)


def test_metrics_max_points_is_capped(client, unchanged):
    assert client.get("/api/runs/1/metrics?max_points=100000").status_code == 422
    assert client.get("/api/runs/1/metrics?max_points=1").status_code == 422
    assert client.get("/api/runs/1/metrics?x=epoch").status_code == 422
