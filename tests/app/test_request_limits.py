"""Values past what the database or the file system can hold: a 4xx naming the field, nothing written,
and the connection stays usable (issue 11, finding 5 and the smaller ones of finding 9)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from datetime import datetime

import pytest
import redis

from app.main import create_app
from tests.helpers.factories import post_experiment, row_counts
from tests.helpers.servers import address_of, serve_in_thread
from tests.helpers.specs import tiny_spec

BIG = 2**63  # one past the largest 64-bit integer (SQLite's limit; PostgreSQL's INTEGER ends at 2**31 - 1)


@pytest.fixture
def unchanged(client, service_env):
    """No table gains a row and no run message reaches the queue."""
    before = row_counts()
    yield
    assert row_counts() == before
    assert redis.Redis.from_url(service_env.redis_url).llen("gpu") == 0


def locs(response) -> list[list]:
    return [d["loc"] for d in response.json()["detail"]]


@pytest.mark.parametrize(
    ("method", "path", "loc"),
    [
        ("GET", f"/api/experiments/{BIG}", ["path", "experiment_id"]),
        ("PATCH", f"/api/experiments/{BIG}", ["path", "experiment_id"]),
        ("POST", f"/api/experiments/{BIG}/runs", ["path", "experiment_id"]),
        ("GET", f"/api/runs/{BIG}", ["path", "run_id"]),
        ("POST", f"/api/runs/{BIG}/cancel", ["path", "run_id"]),
        ("POST", f"/api/runs/{BIG}/resume", ["path", "run_id"]),
        ("GET", f"/api/runs/{BIG}/spec.yaml", ["path", "run_id"]),
        ("GET", f"/api/runs/{BIG}/metrics", ["path", "run_id"]),
        ("GET", f"/api/runs/{BIG}/metrics.csv", ["path", "run_id"]),
        ("GET", f"/api/runs/{-BIG - 1}/samples", ["path", "run_id"]),
        ("GET", f"/api/runs/1/samples?step={BIG}", ["query", "step"]),
        ("GET", f"/api/experiments?skip={BIG}", ["query", "skip"]),
        ("GET", f"/api/runs?skip={BIG}", ["query", "skip"]),
        ("GET", f"/api/runs?experiment_id={BIG}", ["query", "experiment_id"]),
        ("GET", f"/api/compare?run_ids=1,{BIG}", ["query", "run_ids", 1]),
        # ids and steps are INTEGER columns: 32 bits in PostgreSQL
        ("GET", f"/api/experiments/{2**31}", ["path", "experiment_id"]),
        ("GET", f"/api/runs/{2**31}/metrics.json", ["path", "run_id"]),
        ("GET", f"/api/runs?experiment_id={2**31}", ["query", "experiment_id"]),
        ("GET", f"/api/runs/1/samples?step={-(2**31) - 1}", ["query", "step"]),
        ("GET", f"/api/compare?run_ids={2**31}", ["query", "run_ids", 0]),
    ],
)
def test_integers_past_64_bits_are_422(client, unchanged, method, path, loc):
    response = client.request(method, path, json={"name": "x"} if method == "PATCH" else None)
    assert response.status_code == 422, response.text
    assert loc in locs(response)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "a\x00b", "spec": tiny_spec()}, ["body", "name"]),
        ({"name": "ok", "notes": "a\x00b", "spec": tiny_spec()}, ["body", "notes"]),
        ({"name": "ok", "tags": ["a\x00b"], "spec": tiny_spec()}, ["body", "tags"]),
        ({"name": "ok", "spec": tiny_spec(student="toy:stu\x00dent")}, ["body", "spec", "student"]),
        ({"name": "ok", "spec": tiny_spec(teacher="toy:teach\x00er")}, ["body", "spec", "teacher"]),
        ({"name": "ok", "spec": tiny_spec(train_data="toy:tr\x00ain")}, ["body", "spec", "train_data"]),
        ({"name": "ok", "spec": tiny_spec(eval_data="toy:ev\x00al")}, ["body", "spec", "eval_data"]),
        (
            {"name": "ok", "spec": tiny_spec(train_data="/tmp/" + "a" * 256 + "/x.jsonl")},
            ["body", "spec", "train_data"],
        ),
        ({"name": "ok", "spec": tiny_spec(student="/tmp/" + "m" * 300)}, ["body", "spec", "student"]),
        ({"name": "ok", "spec": tiny_spec(lmbda=True)}, ["body", "spec", "lmbda"]),
        ({"name": "ok", "spec": tiny_spec(max_steps=True)}, ["body", "spec", "max_steps"]),
        ({"name": "ok", "spec": tiny_spec(save_every=10**30)}, ["body", "spec", "save_every"]),
        ({"name": "ok", "spec": tiny_spec(eval_every=10**12)}, ["body", "spec", "eval_every"]),
    ],
)
def test_hostile_bodies_are_422_naming_the_field(client, unchanged, body, loc):
    response = client.post("/api/experiments", json=body)
    assert response.status_code == 422, response.text
    assert loc in locs(response)
    if "\x00" in json.dumps(body):
        assert "NUL" in response.text


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("/api/experiments?name=a%00b", ["query", "name"]),
        ("/api/experiments?tags=a%00b", ["query", "tags"]),
        ("/api/experiments?owner=a%00b", ["query", "owner"]),
        ("/api/experiments?spec.teacher=a%00b", ["query", "spec.teacher"]),
        ("/api/runs?spec.student=toy%00", ["query", "spec.student"]),
        ("/api/runs?tags=x%00", ["query", "tags"]),
        ("/api/runs/1/metrics?keys=loss%00", ["query", "keys"]),
    ],
)
def test_nul_in_filters_is_422(client, unchanged, query, loc):
    response = client.get(query)
    assert response.status_code == 422, response.text
    assert loc in locs(response) and "NUL" in response.text


def test_patch_refuses_unknown_fields_and_nul(client, service_env):
    experiment = post_experiment(client, name="kept")["experiment"]
    url = f"/api/experiments/{experiment['id']}"
    response = client.patch(url, json={"nmae": "typo", "notes": "n"})
    assert response.status_code == 422, response.text
    assert ["body", "nmae"] in locs(response)
    response = client.patch(url, json={"notes": "a\x00b"})
    assert response.status_code == 422 and ["body", "notes"] in locs(response)
    stored = client.get(url).json()
    assert (stored["name"], stored["notes"]) == ("kept", "")


def test_error_responses_are_declared_in_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    open_routes = {"/api/health", "/api/login", "/api/logout"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            declared = operation["responses"]
            where = f"{method.upper()} {path}"
            if path not in open_routes:
                assert "401" in declared, (where, sorted(declared))
            if "{" in path:
                assert {"403", "404", "409"} <= set(declared), (where, sorted(declared))
            if "parameters" in operation or "requestBody" in operation:
                schema = declared["422"]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problems"}, (where, schema)


def test_timestamps_carry_their_offset(client, service_env):
    created = post_experiment(client)
    run = client.get(f"/api/runs/{created['run_id']}").json()
    experiment = client.get(f"/api/experiments/{created['id']}").json()
    queue = client.get("/api/queue").json()
    stamps = [run["created_at"], run["queued_at"], experiment["created_at"], queue["queued"][0]["queued_at"]]
    for stamp in stamps:
        assert datetime.fromisoformat(stamp).utcoffset() is not None, stamp


# --- over a real server: a refused request leaves the keep-alive connection usable --------------------
@pytest.fixture
def server(service_env) -> Iterator[tuple[str, int]]:
    with serve_in_thread(create_app(ui=False), log_level="critical") as url:
        yield address_of(url)


def test_a_path_component_over_255_characters_is_422(service_env):
    from fastapi.testclient import TestClient

    with TestClient(create_app(ui=True)) as client:  # the dashboard's static files would hit the file system
        for path in ("/ui/assets/", "/ui/static/", "/api/runs/", "/api/experiments/1/"):
            response = client.get(path + "a" * 256)
            assert response.status_code == 422, (path, response.text)
            assert locs(response) == [["path"]] and "255" in response.text


def test_an_unexpected_error_is_a_500_that_keeps_the_connection(service_env):
    def broken() -> None:
        raise RuntimeError("a bug")

    app = create_app(ui=False)
    app.add_api_route("/api/broken", broken)
    with serve_in_thread(app, log_level="critical") as url:
        connection = http.client.HTTPConnection(*address_of(url), timeout=60)
        connection.request("GET", "/api/broken")
        response = connection.getresponse()
        assert response.status == 500 and b"a bug" not in response.read()  # logged, not shown
        connection.request("GET", "/api/health")
        assert connection.getresponse().status == 200
        connection.close()


def test_the_connection_survives_hostile_requests(server):
    connection = http.client.HTTPConnection(*server, timeout=60)
    hostile = [
        ("GET", f"/api/runs/{BIG}", None),
        ("GET", f"/api/experiments?skip={BIG}", None),
        ("GET", "/api/experiments?name=a%00b", None),
        ("POST", "/api/experiments", {"name": "x", "spec": tiny_spec(student="toy:a\x00")}),
        ("POST", "/api/experiments", {"name": "x", "spec": tiny_spec(train_data="/" + "d" * 300)}),
    ]
    for method, path, body in hostile:
        payload = json.dumps(body) if body is not None else None
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        assert 400 <= response.status < 500, (path, response.status)
        connection.request("GET", "/api/health")  # the same connection, right after
        follow = connection.getresponse()
        assert follow.status == 200, follow.read()
        follow.read()
    connection.close()
