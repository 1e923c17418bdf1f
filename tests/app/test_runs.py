"""Runs through the API: listing with queue positions, cancel, resume, the queue view, spec and samples."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
import torch
import yaml
from sqlmodel import Session

from app import run_state
from app.db import get_engine
from app.models import EvalSamples, utcnow
from core_distill.checkpoint import save_checkpoint
from core_distill.spec import load_yaml
from tests.helpers.factories import post_experiment
from tests.helpers.specs import tiny_spec


def claim(run_id: int, output_dir: str | None = None, worker: str = "gpu0@box") -> None:
    """What a worker does when it takes the run (the real transition, on the real database)."""
    with Session(get_engine()) as session:
        assert run_state.claim_run(session=session, run_id=run_id, worker=worker, gpu="0", output_dir=output_dir)


def write_checkpoint(output_dir, step: int) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    save_checkpoint(output_dir, step, model, optimizer, scheduler)


def test_runs_list_with_queue_positions_and_filters(client):
    first = post_experiment(client, name="a", tags=["t"], spec=tiny_spec(lmbda=1.0))
    second = post_experiment(client, name="b", spec=tiny_spec(lmbda=0.0, objective="sft"))
    third = post_experiment(client, name="c", tags=["t"])
    claim(first["run_id"])
    body = client.get("/api/runs").json()
    assert body["count"] == 3
    by_id = {r["id"]: r for r in body["data"]}
    assert by_id[first["run_id"]]["status"] == "running" and by_id[first["run_id"]]["queue_position"] is None
    assert by_id[second["run_id"]]["queue_position"] == 1 and by_id[third["run_id"]]["queue_position"] == 2
    assert by_id[third["run_id"]]["experiment_name"] == "c" and by_id[third["run_id"]]["tags"] == ["t"]

    def ids(query: str) -> list[int]:
        return [r["id"] for r in client.get(f"/api/runs{query}").json()["data"]]

    assert ids("?status=queued") == [third["run_id"], second["run_id"]]
    assert ids("?status=running,succeeded") == [first["run_id"]]
    assert ids("?tags=t&status=queued") == [third["run_id"]]
    assert ids("?spec.objective=sft") == [second["run_id"]]
    assert ids(f"?experiment_id={first['id']}") == [first["run_id"]]
    assert ids("?limit=1&skip=1") == [second["run_id"]]
    detail = client.get(f"/api/runs/{second['run_id']}").json()
    assert detail["spec"]["objective"] == "sft" and detail["queue_position"] == 1


def test_cancel_a_queued_run(client, service_env):
    created = post_experiment(client)
    response = client.post(f"/api/runs/{created['run_id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"]
    assert client.get("/api/queue").json()["queued"] == []
    again = client.post(f"/api/runs/{created['run_id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    # the live stream says so too
    stream = redis.Redis.from_url(service_env.redis_url, decode_responses=True)
    kinds = [fields["kind"] for _, fields in stream.xrange(f"distill:run:{created['run_id']}:events")]
    assert kinds == ["status"]


def test_cancel_a_running_run_asks_the_worker(client):
    created = post_experiment(client)
    claim(created["run_id"])
    response = client.post(f"/api/runs/{created['run_id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True
    with Session(get_engine()) as session:  # the worker's next heartbeat tells it to stop
        assert run_state.heartbeat(session=session, run_id=created["run_id"], last_step=1) is True


def test_cancel_a_finished_run_is_409(client):
    created = post_experiment(client)
    claim(created["run_id"])
    with Session(get_engine()) as session:
        run_state.finish_run(session=session, run_id=created["run_id"], status="succeeded")
    response = client.post(f"/api/runs/{created['run_id']}/cancel")
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]


def test_resume_a_lost_run_from_its_checkpoint(client, service_env, tmp_path):
    created = post_experiment(client)
    run_id = created["run_id"]
    output_dir = tmp_path / "run"
    claim(run_id, output_dir=str(output_dir))
    response = client.post(f"/api/runs/{run_id}/resume")
    assert response.status_code == 409 and "running" in response.json()["detail"]
    with Session(get_engine()) as session:  # the worker died: the reaper finds its heartbeat old
        reaped = run_state.reap_lost_runs(session=session, now=utcnow() + timedelta(hours=1))
    assert reaped == [run_id]
    no_checkpoint = client.post(f"/api/runs/{run_id}/resume")
    assert no_checkpoint.status_code == 409 and "no checkpoint" in no_checkpoint.json()["detail"]
    write_checkpoint(output_dir, step=2)
    response = client.post(f"/api/runs/{run_id}/resume")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["status"], body["attempt"], body["error"]) == (run_id, "queued", 2, None)
    assert body["output_dir"] == str(output_dir) and body["queue_position"] == 1
    assert redis.Redis.from_url(service_env.redis_url).llen("gpu") == 2  # first attempt + the resume


def test_queue_view(client):
    a = post_experiment(client, name="a")
    b = post_experiment(client, name="b")
    c = post_experiment(client, name="c")
    claim(a["run_id"], worker="gpu1@box")
    queue = client.get("/api/queue").json()
    assert [(q["run_id"], q["position"]) for q in queue["queued"]] == [(b["run_id"], 1), (c["run_id"], 2)]
    assert [(r["run_id"], r["worker"], r["gpu"]) for r in queue["running"]] == [(a["run_id"], "gpu1@box", "0")]


def test_spec_yaml_round_trips(client):
    created = post_experiment(client, spec=tiny_spec(beta=0.75))
    response = client.get(f"/api/runs/{created['run_id']}/spec.yaml")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/yaml")
    spec = yaml.safe_load(response.text)
    assert spec == created["experiment"]["spec"]
    again = client.post(
        "/api/experiments/yaml?name=copy", content=response.text, headers={"Content-Type": "application/yaml"}
    )
    assert again.status_code == 201 and again.json()["experiment"]["spec"] == spec


@pytest.mark.parametrize(
    "name",
    ["x\nevil_key: 1", "x\r\nbeta: 1.0", "x\revil_key: 1", "x\u2028evil_key: 1", "x\x85evil_key: 1", "del\x7f", "a\tb"],
)
def test_spec_yaml_survives_any_name(client, name):
    """The name sits in the file's comment header: no character in it may end the comment or the file."""
    created = post_experiment(client, name=name, notes="notes\n---\nevil: 1\x0c", spec=tiny_spec(beta=0.75))
    assert created["experiment"]["name"] == name  # stored as given
    response = client.get(f"/api/runs/{created['run_id']}/spec.yaml")
    assert response.status_code == 200
    header, body = response.text.split("\n", 1)
    assert header.startswith("# experiment ") and header.isprintable()
    assert load_yaml(response.text) == created["experiment"]["spec"]  # no key from the name got in
    again = client.post(
        "/api/experiments/yaml?name=copy", content=response.text, headers={"Content-Type": "application/yaml"}
    )
    assert again.status_code == 201, again.text
    assert again.json()["experiment"]["spec"] == created["experiment"]["spec"]


def test_nul_in_a_name_or_notes_is_422_and_nothing_is_written(client):
    from tests.helpers.factories import row_counts

    before = row_counts()
    for body, loc in (({"name": "a\x00b"}, ["body", "name"]), ({"name": "n", "notes": "x\x00"}, ["body", "notes"])):
        response = client.post("/api/experiments", json={"spec": tiny_spec(), **body})
        assert response.status_code == 422, response.text
        assert loc in [d["loc"] for d in response.json()["detail"]] and "NUL" in response.text
    assert row_counts() == before
    created = post_experiment(client, name="clean")
    for patch in ({"name": "a\x00"}, {"notes": "\x00"}):
        response = client.patch(f"/api/experiments/{created['id']}", json=patch)
        assert response.status_code == 422, response.text
    assert client.get(f"/api/experiments/{created['id']}").json()["name"] == "clean"


def test_samples_latest_or_at_a_step(client):
    created = post_experiment(client)
    with Session(get_engine()) as session:
        for step in (10, 20, 30):
            sample = {"prompt": "1+1=", "completion": str(step), "tokens": ["2"], "token_div": [0.1], "correct": True}
            session.add(EvalSamples(run_id=created["run_id"], step=step, wall_time=float(step), samples=[sample]))
        session.commit()
    latest = client.get(f"/api/runs/{created['run_id']}/samples?limit=2").json()
    assert [s["step"] for s in latest] == [20, 30]
    at = client.get(f"/api/runs/{created['run_id']}/samples?step=10").json()
    assert len(at) == 1 and at[0]["samples"][0]["completion"] == "10"


def test_schema_presets_and_health(client):
    schema = client.get("/api/spec/schema").json()
    assert schema["properties"]["lmbda"]["maximum"] == 1.0 and schema["properties"]["lmbda"]["group"] == "method"
    presets = {p["name"]: p for p in client.get("/api/presets").json()}
    assert "gkd_on_policy" in presets and presets["gkd_on_policy"]["spec"]["lmbda"] == 1.0
    assert presets["gkd_on_policy"]["description"]
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok", "redis": "ok", "starting": []}
    docs = client.get("/openapi.json").json()
    assert "ExperimentCreate" in docs["components"]["schemas"] and "/api/runs/{run_id}/events" in docs["paths"]
    assert client.get("/docs").status_code == 200


def test_health_reports_a_dead_redis(client, monkeypatch):
    from app.settings import get_settings
    from tests.services import free_port

    monkeypatch.setenv("DISTILL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    response = client.get("/api/health")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["database"] == "ok" and response.json()["redis"].startswith("error")
