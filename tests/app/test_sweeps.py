"""Sweeps through the API: one queued run per (setting, seed), grouped; all-or-nothing validation; the cap;
ownership; cancel as a whole; the groups' scores and the export. On the session's real database and Redis."""

from __future__ import annotations

import csv
import io
import statistics
import time

import pytest
import redis
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app import run_state
from app.auth import create_token
from app.db import get_engine
from app.main import create_app
from app.models import Experiment, MetricPoint, Run, SweepCreate
from app.services.sweeps import expand_settings
from app.settings import get_settings
from tests.helpers.factories import row_counts
from tests.helpers.specs import tiny_spec

GRID = {"learning_rate": [0.001, 0.01], "beta": [0.0, 0.5]}


def post_sweep(client: TestClient, expect: int = 201, headers: dict | None = None, **body):
    body.setdefault("name", "lr-beta")
    body.setdefault("spec", tiny_spec())
    response = client.post("/api/sweeps", json=body, headers=headers or {})
    assert response.status_code == expect, response.text
    return response.json()


def locs(response) -> list[list]:
    return [problem["loc"] for problem in response.json()["detail"]]


def test_a_grid_times_seeds_queues_one_grouped_run_each(client, service_env):
    sweep = post_sweep(client, grid=GRID, seeds=[0, 7])
    assert sweep["status"] == "queued" and sweep["runs"] == 8 and sweep["counts"]["queued"] == 8
    labels = [g["label"] for g in sweep["groups"]]
    assert labels == ["learning_rate=0.001, beta=0.0", "learning_rate=0.001, beta=0.5",
                      "learning_rate=0.01, beta=0.0", "learning_rate=0.01, beta=0.5"]  # fmt: skip
    assert sweep["groups"][3]["setting"] == {"learning_rate": 0.01, "beta": 0.5}
    assert all([r["seed"] for r in g["runs"]] == [0, 7] for g in sweep["groups"])
    with Session(get_engine()) as session:
        rows = session.exec(select(Run, Experiment).join(Experiment)).all()
        assert len(rows) == 8
        for run, experiment in rows:
            assert experiment.sweep_id == sweep["id"] and run.status == "queued" and run.celery_task_id
            spec = experiment.spec
            assert experiment.sweep_group == f"learning_rate={spec['learning_rate']}, beta={spec['beta']}"
            assert spec["lmbda"] == 0.5 and spec["max_steps"] == 3  # the base spec's own fields
        assert sorted((e.spec["learning_rate"], e.spec["beta"], e.spec["seed"]) for _, e in rows) == sorted(
            (lr, b, s) for lr in GRID["learning_rate"] for b in GRID["beta"] for s in (0, 7)
        )
    assert redis.Redis.from_url(service_env.redis_url).llen("gpu") == 8  # on the shared queue like any run
    # the runs are ordinary runs: listed, with their experiment's tag
    assert client.get(f"/api/runs?tags=sweep:{sweep['id']}").json()["count"] == 8
    assert client.get(f"/api/sweeps/{sweep['id']}").json()["groups"] == sweep["groups"]


def test_explicit_settings_and_a_random_draw_from_a_grid(client):
    sweep = post_sweep(client, settings=[{"lmbda": 0.0}, {"lmbda": 1.0, "beta": 1.0}], seeds=[3])
    assert [g["label"] for g in sweep["groups"]] == ["lmbda=0.0", "lmbda=1.0, beta=1.0"]
    assert sweep["groups"][1]["setting"] == {"lmbda": 1.0, "beta": 1.0} and sweep["runs"] == 2

    grid = {"learning_rate": [0.001, 0.002, 0.003], "beta": [0.0, 0.25, 0.5, 1.0]}
    body = {"name": "r", "spec": tiny_spec(), "grid": grid, "search": "random", "samples": 5, "search_seed": 11}
    drawn = [s.values for s in expand_settings(SweepCreate.model_validate(body))]
    assert drawn == [s.values for s in expand_settings(SweepCreate.model_validate(body))]  # the seed decides
    other = [s.values for s in expand_settings(SweepCreate.model_validate({**body, "search_seed": 12}))]
    every = [{"learning_rate": lr, "beta": b} for lr in grid["learning_rate"] for b in grid["beta"]]
    assert len(drawn) == 5 and all(d in every for d in drawn) and len({str(d) for d in drawn}) == 5
    assert other != drawn
    assert len(expand_settings(SweepCreate.model_validate({**body, "samples": 100}))) == 12  # k >= grid: all of it
    created = post_sweep(client, **body)
    assert [g["setting"] for g in created["groups"]] == drawn


def test_a_bad_field_or_value_anywhere_is_one_422_and_nothing_is_stored(client, service_env):
    before = row_counts()
    for body, loc, words in [
        ({"grid": {"lmbd": [0.0, 1.0]}}, ["body", "grid", "lmbd"], "did you mean 'lmbda'"),
        ({"grid": {"seed": [1, 2]}}, ["body", "grid", "seed"], "seeds"),
        ({"grid": {"beta": []}}, ["body", "grid", "beta"], "at least one"),
        # the second setting's learning rate is out of range: no run of the first is stored either
        ({"grid": {"learning_rate": [0.001, 5.0]}}, ["body", "grid", "learning_rate"], "learning_rate=5.0"),
        ({"settings": [{}, {"learning_rate": -1}]}, ["body", "settings", 1, "learning_rate"], "greater than"),
        ({"settings": [{"lmbda": 0.5}, {"lmbda": 0.5}]}, ["body", "settings", 1], "repeats setting 0"),
        ({"grid": GRID, "settings": [{}]}, ["body", "settings"], "not both"),
        ({"grid": GRID, "search": "random"}, ["body", "samples"], "samples"),
        ({"seeds": [1, 1]}, ["body", "seeds"], "each seed once"),
        ({"spec": tiny_spec(lmbda=2.0)}, ["body", "spec", "lmbda"], "less than or equal"),
        ({"grid": {"student": ["toy:student", "/nowhere/model"]}}, ["body", "grid", "student"], "student=/nowhere"),
        ({"grdi": GRID}, ["body", "grdi"], ""),
    ]:
        response = client.post("/api/sweeps", json={"name": "bad", "spec": tiny_spec(), **body})
        assert response.status_code == 422, (body, response.text)
        problem = next((p for p in response.json()["detail"] if p["loc"] == loc), None)
        assert problem is not None and words in problem["msg"], (body, response.text)
    assert row_counts() == before and redis.Redis.from_url(service_env.redis_url).llen("gpu") == 0


def test_the_cap_on_runs_per_sweep(client, monkeypatch):
    monkeypatch.setenv("DISTILL_SWEEP_MAX_RUNS", "7")
    get_settings.cache_clear()
    before = row_counts()
    response = client.post("/api/sweeps", json={"name": "big", "spec": tiny_spec(), "grid": GRID, "seeds": [0, 1]})
    assert response.status_code == 422 and locs(response) == [["body", "grid"]], response.text
    assert "8 runs (4 settings x 2 seeds)" in response.text and "DISTILL_SWEEP_MAX_RUNS" in response.text
    # a grid of 10^6 combinations is refused without building it
    huge = {name: list(range(1, 11)) for name in ("max_steps", "batch_size", "eval_examples", "max_new_tokens",
                                                  "save_every", "eval_every")}  # fmt: skip
    response = client.post("/api/sweeps", json={"name": "huge", "spec": tiny_spec(), "grid": huge})
    assert response.status_code == 422 and "1000000 runs" in response.text
    assert row_counts() == before
    assert post_sweep(client, grid=GRID, seeds=[0])["runs"] == 4  # under the cap


def test_the_queue_down_is_503_and_nothing_is_stored(client, monkeypatch):
    from tests.services import free_port

    before = row_counts()
    monkeypatch.setenv("DISTILL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    get_settings.cache_clear()
    response = client.post("/api/sweeps", json={"name": "x", "spec": tiny_spec(), "grid": GRID})
    assert response.status_code == 503 and response.headers["retry-after"] == "5", response.text
    assert row_counts() == before


def test_cancel_as_a_whole(client, service_env):
    sweep = post_sweep(client, grid=GRID)
    ids = [r["run_id"] for g in sweep["groups"] for r in g["runs"]]
    with Session(get_engine()) as session:  # one run is training (claimed by a worker), one has finished
        assert run_state.claim_run(session=session, run_id=ids[0], worker="w", gpu="cpu")
        assert run_state.claim_run(session=session, run_id=ids[1], worker="w", gpu="cpu")
        assert run_state.finish_run(session=session, run_id=ids[1], status="succeeded")
    assert client.get(f"/api/sweeps/{sweep['id']}").json()["status"] == "running"
    cancelled = client.post(f"/api/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    statuses = {r["run_id"]: r["status"] for g in cancelled.json()["groups"] for r in g["runs"]}
    assert statuses == {ids[0]: "running", ids[1]: "succeeded", ids[2]: "cancelled", ids[3]: "cancelled"}
    with Session(get_engine()) as session:
        assert session.get(Run, ids[0]).cancel_requested  # stops at its next step
        assert run_state.finish_run(session=session, run_id=ids[0], status="cancelled")
    after = client.get(f"/api/sweeps/{sweep['id']}").json()
    assert after["status"] == "cancelled" and after["counts"] == {
        "queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 3, "lost": 0}  # fmt: skip
    assert client.post(f"/api/sweeps/{sweep['id']}/cancel").status_code == 409  # nothing left
    assert client.post("/api/sweeps/999999/cancel").status_code == 404
    assert client.get("/api/sweeps/999999").status_code == 404


def _log(run_id: int, step: int, values: dict[str, float]) -> None:
    with Session(get_engine()) as session:
        session.add_all(MetricPoint(run_id=run_id, step=step, key=k, value=v, wall_time=time.time())
                        for k, v in values.items())  # fmt: skip
        session.commit()


def test_groups_score_the_last_eval_value_over_seeds_and_export_it(client):
    sweep = post_sweep(client, settings=[{"lmbda": 0.0}, {"lmbda": 1.0}], seeds=[0, 1, 2])
    runs = [r["run_id"] for g in sweep["groups"] for r in g["runs"]]
    # group lmbda=0.0: exact match 0.5, 0.7, 0.6 at the last step (an earlier step's value must not count)
    finals = dict(zip(runs, [0.5, 0.7, 0.6, 0.9, None, None], strict=True))
    with Session(get_engine()) as session:
        for run_id in runs[:4]:
            run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="cpu")
        for run_id in runs[:3]:
            run_state.finish_run(session=session, run_id=run_id, status="succeeded", last_step=3)
    for run_id, value in finals.items():
        if value is not None:
            _log(run_id, 0, {"eval/exact_match": 0.1, "eval/completion_length": 9.0, "loss": 3.0})
            _log(run_id, 3, {"eval/exact_match": value, "eval/completion_length": 10.0 * value, "loss": 1.0})
    view = client.get(f"/api/sweeps/{sweep['id']}").json()
    assert view["metric_keys"] == ["eval/completion_length", "eval/exact_match"]
    first, second = view["groups"]
    exact = first["metrics"]["eval/exact_match"]
    assert exact["n"] == 3 and exact["mean"] == pytest.approx(0.6)
    assert exact["sd"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))  # the sample sd, n - 1
    assert first["metrics"]["eval/completion_length"]["mean"] == pytest.approx(6.0)
    assert second["metrics"] == {}  # its one run with scores is still running: not a final score
    assert second["runs"][0]["finals"] == {"eval/exact_match": 0.9, "eval/completion_length": 9.0}
    assert view["status"] == "running" and view["counts"]["succeeded"] == 3

    exported = client.get(f"/api/sweeps/{sweep['id']}/export?format=json")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/json")
    rows = exported.json()
    assert [(r["group"], r["seed"], r["status"]) for r in rows] == [
        ("lmbda=0.0", 0, "succeeded"), ("lmbda=0.0", 1, "succeeded"), ("lmbda=0.0", 2, "succeeded"),
        ("lmbda=1.0", 0, "running"), ("lmbda=1.0", 1, "queued"), ("lmbda=1.0", 2, "queued"),
    ]  # fmt: skip
    assert [r["eval/exact_match"] for r in rows] == [0.5, 0.7, 0.6, 0.9, None, None]
    as_csv = client.get(f"/api/sweeps/{sweep['id']}/export")
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert f'filename="sweep-{sweep["id"]}.csv"' in as_csv.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["run_id"] for r in table] == [str(r) for r in runs]
    assert [r["eval/exact_match"] for r in table] == ["0.5", "0.7", "0.6", "0.9", "", ""]
    assert client.get(f"/api/sweeps/{sweep['id']}/export?format=xml").status_code == 422


@pytest.fixture
def auth_client(service_env, monkeypatch):
    monkeypatch.setenv("DISTILL_AUTH", "on")
    monkeypatch.setenv("DISTILL_ADMINS", "root")
    get_settings.cache_clear()
    with Session(get_engine()) as session:
        tokens = {name: create_token(session=session, name=name) for name in ("ada", "bob", "root")}
    with TestClient(create_app(ui=False)) as client:
        yield client, {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}


def test_owners_and_admins_alone_cancel_and_the_list_filters_by_owner(auth_client):
    client, as_user = auth_client
    assert client.post("/api/sweeps", json={"name": "x", "spec": tiny_spec()}).status_code == 401
    adas = post_sweep(client, name="ada's", grid=GRID, headers=as_user["ada"])
    bobs = post_sweep(client, name="bob's", seeds=[0, 1], headers=as_user["bob"])
    assert adas["owner"] == "ada" and bobs["owner"] == "bob" and bobs["groups"][0]["label"] == "base"
    with Session(get_engine()) as session:
        owners = {e.owner for e in session.exec(select(Experiment).where(Experiment.sweep_id == adas["id"]))}
        assert owners == {"ada"}  # its runs are ada's too: she alone (or an admin) may cancel one of them

    refused = client.post(f"/api/sweeps/{adas['id']}/cancel", headers=as_user["bob"])
    assert refused.status_code == 403 and "belongs to ada" in refused.text
    assert client.get(f"/api/sweeps/{adas['id']}", headers=as_user["bob"]).json()["counts"]["queued"] == 4

    mine = client.get("/api/sweeps?owner=bob", headers=as_user["bob"]).json()
    assert mine["count"] == 1 and [s["name"] for s in mine["data"]] == ["bob's"]
    everyone = client.get("/api/sweeps", headers=as_user["bob"]).json()
    assert [s["name"] for s in everyone["data"]] == ["bob's", "ada's"]  # newest first
    assert everyone["data"][1]["status"] == "queued" and everyone["data"][1]["runs"] == 4

    assert client.post(f"/api/sweeps/{bobs['id']}/cancel", headers=as_user["root"]).json()["status"] == "cancelled"
    assert client.post(f"/api/sweeps/{adas['id']}/cancel", headers=as_user["ada"]).json()["status"] == "cancelled"
