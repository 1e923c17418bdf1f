"""Creating, listing, filtering, editing and re-running experiments through the API."""

from __future__ import annotations

import redis
import yaml
from sqlmodel import Session

from app.db import get_engine
from app.models import Experiment, Run
from tests.helpers.factories import post_experiment, row_counts
from tests.helpers.specs import tiny_spec


def queued_messages(settings) -> int:
    """Messages waiting on Celery's `gpu` queue in the real Redis (a list named after the queue)."""
    return redis.Redis.from_url(settings.redis_url).llen("gpu")


def test_post_json_stores_the_experiment_and_queues_a_run(client, service_env):
    created = post_experiment(client, name="on-policy", tags=["sweep", "toy"], notes="first try",
                              spec=tiny_spec(lmbda=1.0, beta=0.25))  # fmt: skip
    assert created["run_id"] is not None and created["run"]["status"] == "queued"
    with Session(get_engine()) as session:
        experiment = session.get(Experiment, created["id"])
        run = session.get(Run, created["run_id"])
        assert experiment.spec["lmbda"] == 1.0 and experiment.spec["beta"] == 0.25
        assert experiment.spec["seed"] == 0  # stored whole: defaults included
        assert experiment.tags == ["sweep", "toy"] and experiment.owner is None
        assert run.experiment_id == experiment.id and run.status == "queued" and run.max_steps == 3
        assert run.celery_task_id
    assert queued_messages(service_env) == 1


def test_launch_false_stores_without_a_run(client, service_env):
    created = post_experiment(client, launch=False)
    assert created["run_id"] is None
    assert row_counts()["run"] == 0 and queued_messages(service_env) == 0


def test_post_yaml_body_bare_spec_with_query_fields(client):
    text = yaml.safe_dump(tiny_spec(beta=0.9))
    response = client.post(
        "/api/experiments/yaml?name=from-yaml&tags=a,b", content=text, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 201, response.text
    experiment = client.get(f"/api/experiments/{response.json()['id']}").json()
    assert experiment["name"] == "from-yaml" and experiment["tags"] == ["a", "b"]
    assert experiment["spec"]["beta"] == 0.9
    assert [r["id"] for r in experiment["runs"]] == [response.json()["run_id"]]


def test_post_yaml_document_with_experiment_fields(client):
    text = yaml.safe_dump({"name": "whole", "notes": "n", "launch": False, "spec": tiny_spec()})
    response = client.post("/api/experiments/yaml", content=text, headers={"Content-Type": "text/yaml"})
    assert response.status_code == 201, response.text
    assert response.json()["experiment"]["name"] == "whole" and response.json()["run_id"] is None


def test_post_uploaded_yaml_file(client):
    text = yaml.safe_dump(tiny_spec(lmbda=0.0, objective="sft"))
    response = client.post(
        "/api/experiments/yaml",
        files={"file": ("sft_baseline.yaml", text, "application/yaml")},
        data={"tags": "baseline", "launch": "true"},
    )
    assert response.status_code == 201, response.text
    experiment = response.json()["experiment"]
    assert experiment["name"] == "sft_baseline" and experiment["tags"] == ["baseline"]
    assert experiment["spec"]["objective"] == "sft"


def test_list_filters_and_pagination(client):
    ids = {}
    ids["a"] = post_experiment(client, name="alpha", tags=["x", "y"], spec=tiny_spec(lmbda=1.0), launch=False)["id"]
    ids["b"] = post_experiment(client, name="beta", tags=["y"], spec=tiny_spec(lmbda=0.5), launch=False)["id"]
    ids["c"] = post_experiment(client, name="Alphabet", tags=[], spec=tiny_spec(lmbda=0.5, seed=7), launch=False)["id"]

    def names(query: str) -> list[str]:
        response = client.get(f"/api/experiments{query}")
        assert response.status_code == 200, response.text
        return [e["name"] for e in response.json()["data"]]

    assert names("") == ["Alphabet", "beta", "alpha"]  # newest first
    assert names("?tags=y") == ["beta", "alpha"]
    assert names("?tags=x,y") == ["alpha"]
    assert names("?name=alpha") == ["Alphabet", "alpha"]
    assert names("?spec.lmbda=0.5") == ["Alphabet", "beta"]
    assert names("?spec.lmbda=0.5&spec.seed=7") == ["Alphabet"]
    assert names("?spec.teacher=toy:teacher&tags=x") == ["alpha"]
    assert names("?spec.lora=false&spec.objective=gkd") == ["Alphabet", "beta", "alpha"]
    page = client.get("/api/experiments?skip=1&limit=1").json()
    assert page["count"] == 3 and [e["id"] for e in page["data"]] == [ids["b"]]
    assert client.get("/api/experiments?skip=5").json() == {"data": [], "count": 3}


def test_patch_changes_name_tags_notes_only(client):
    created = post_experiment(client, name="old", launch=False)
    response = client.patch(f"/api/experiments/{created['id']}", json={"name": "new", "tags": ["k"], "notes": "why"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["tags"], body["notes"]) == ("new", ["k"], "why")
    assert body["spec"] == created["experiment"]["spec"]
    spec_change = client.patch(f"/api/experiments/{created['id']}", json={"spec": {"lmbda": 0.1}})
    assert client.get(f"/api/experiments/{created['id']}").json()["spec"]["lmbda"] == 0.5
    assert spec_change.status_code == 422  # the spec is not a field of an update: refused, naming it
    assert spec_change.json()["detail"][0]["loc"] == ["body", "spec"]


def test_rerun_queues_a_fresh_run(client, service_env):
    created = post_experiment(client)
    response = client.post(f"/api/experiments/{created['id']}/runs")
    assert response.status_code == 201, response.text
    rerun = response.json()
    assert rerun["id"] != created["run_id"] and rerun["attempt"] == 1 and rerun["status"] == "queued"
    assert queued_messages(service_env) == 2


def test_unknown_ids_are_404(client):
    for method, path in [
        ("GET", "/api/experiments/999"),
        ("PATCH", "/api/experiments/999"),
        ("POST", "/api/experiments/999/runs"),
        ("GET", "/api/runs/999"),
        ("POST", "/api/runs/999/cancel"),
        ("POST", "/api/runs/999/resume"),
        ("GET", "/api/runs/999/metrics"),
        ("GET", "/api/runs/999/metrics.csv"),
        ("GET", "/api/runs/999/samples"),
        ("GET", "/api/runs/999/spec.yaml"),
        ("GET", "/api/runs/999/events"),
        ("GET", "/api/compare?run_ids=999"),
    ]:
        response = client.request(method, path, json={"name": "x"} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert "999" in response.json()["detail"]
