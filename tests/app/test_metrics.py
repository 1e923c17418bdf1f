"""Metric reads: SQL downsampling keeps spikes and the budget; exports are complete; compare marks differences."""

from __future__ import annotations

import csv
import io
import math

from sqlalchemy import insert
from sqlmodel import Session

from app.db import get_engine
from app.metrics_query import downsample_series, last_steps, latest_metrics, metric_keys
from app.models import MetricPoint
from tests.helpers.factories import post_experiment
from tests.helpers.specs import tiny_spec

T0 = 1_700_000_000.0


def store(run_id: int, key: str, values: list[float], first_step: int = 1) -> None:
    rows = [
        {"run_id": run_id, "step": first_step + i, "key": key, "value": v, "wall_time": T0 + first_step + i}
        for i, v in enumerate(values)
    ]
    with Session(get_engine()) as session:
        session.execute(insert(MetricPoint), rows)
        session.commit()


def smooth(n: int) -> list[float]:
    return [1.0 + 0.1 * math.sin(i / 50) for i in range(n)]


def test_a_one_step_spike_and_dip_survive_downsampling(client):
    run_id = post_experiment(client)["run_id"]
    values = smooth(20_000)
    values[7_777] = 50.0  # a loss spike at step 7778
    values[12_345] = -3.0  # and a dip
    store(run_id, "loss", values)
    with Session(get_engine()) as session:
        for x in ("step", "wall_time"):
            series = downsample_series(session, run_id, ["loss"], max_points=200, x=x)["loss"]
            assert 100 <= len(series) <= 200
            assert {"step": 7778, "wall_time": T0 + 7778, "value": 50.0} in series
            assert {"step": 12346, "wall_time": T0 + 12346, "value": -3.0} in series
            assert series[0]["step"] == 1 and series[-1]["step"] == 20_000  # first and last are kept
            assert [p["step"] for p in series] == sorted({p["step"] for p in series})
            assert min(p["value"] for p in series) == -3.0 and max(p["value"] for p in series) == 50.0


def test_every_bucket_keeps_its_min_and_max(client):
    run_id = post_experiment(client)["run_id"]
    values = [float((i * 7919) % 1000) for i in range(5_000)]  # jagged: every bucket has its own extremes
    store(run_id, "div/fkl", values)
    max_points = 102  # 50 buckets of 100 steps
    with Session(get_engine()) as session:
        series = downsample_series(session, run_id, ["div/fkl"], max_points=max_points)["div/fkl"]
    assert len(series) <= max_points
    kept = {p["step"]: p["value"] for p in series}
    for bucket in range(50):
        chunk = values[bucket * 100 : (bucket + 1) * 100]
        assert min(chunk) in [kept[s] for s in kept if bucket * 100 < s <= (bucket + 1) * 100]
        assert max(chunk) in [kept[s] for s in kept if bucket * 100 < s <= (bucket + 1) * 100]


def test_short_series_come_back_whole_and_the_endpoint_caps(client):
    run_id = post_experiment(client)["run_id"]
    store(run_id, "loss", [3.0, 2.0, 1.0])
    store(run_id, "eval/exact_match", smooth(3_000))
    response = client.get(f"/api/runs/{run_id}/metrics?keys=loss,eval/exact_match&max_points=300")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["keys"] == ["eval/exact_match", "loss"]
    assert [p["value"] for p in body["series"]["loss"]] == [3.0, 2.0, 1.0]
    assert len(body["series"]["eval/exact_match"]) <= 300
    all_keys = client.get(f"/api/runs/{run_id}/metrics").json()
    assert set(all_keys["series"]) == {"loss", "eval/exact_match"}
    assert client.get(f"/api/runs/{run_id}/metrics?keys=nothing").json()["series"] == {"nothing": []}


def test_latest_values_keys_and_last_steps(client):
    a = post_experiment(client)["run_id"]
    b = post_experiment(client)["run_id"]
    store(a, "loss", [5.0, 4.0, 3.0])
    store(a, "eval/exact_match", [0.25], first_step=2)
    with Session(get_engine()) as session:
        assert metric_keys(session, a) == ["eval/exact_match", "loss"]
        assert latest_metrics(session, [a, b]) == {a: {"eval/exact_match": 0.25, "loss": 3.0}, b: {}}
        assert latest_metrics(session, [a], keys=["loss", "missing"]) == {a: {"loss": 3.0}}
        assert last_steps(session, [a, b]) == {a: 3, b: 0}


def test_csv_and_json_exports_hold_every_point(client):
    run_id = post_experiment(client)["run_id"]
    store(run_id, "loss", smooth(12_000))  # more than one export chunk
    store(run_id, "lr", [1e-3] * 10)
    response = client.get(f"/api/runs/{run_id}/metrics.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 12_010 and rows[0] == {
        "step": "1",
        "key": "loss",
        "value": repr(1.0),
        "wall_time": repr(T0 + 1),
    }
    only_lr = client.get(f"/api/runs/{run_id}/metrics.json?keys=lr").json()
    assert len(only_lr) == 10 and {p["key"] for p in only_lr} == {"lr"} and only_lr[-1]["step"] == 10


def test_compare_marks_the_differing_fields(client):
    a = post_experiment(client, spec=tiny_spec(lmbda=1.0, beta=0.5))["run_id"]
    b = post_experiment(client, spec=tiny_spec(lmbda=0.5, beta=0.5))["run_id"]
    store(a, "loss", [2.0, 1.0])
    store(b, "loss", [3.0, 2.5])
    store(b, "only/b", [1.0])
    response = client.get(f"/api/compare?run_ids={a},{b}")
    assert response.status_code == 200, response.text
    body = response.json()
    fields = {f["name"]: f for f in body["fields"]}
    assert fields["lmbda"]["differs"] is True and fields["lmbda"]["values"] == [1.0, 0.5]
    assert fields["beta"]["differs"] is False and fields["lmbda"]["group"] == "method"
    assert [name for name, f in fields.items() if f["differs"]] == ["lmbda"]
    assert [r["id"] for r in body["runs"]] == [a, b]
    assert set(body["series"][str(a)]) == {"loss"}  # default keys: those every run has
    assert [p["value"] for p in body["series"][str(b)]["loss"]] == [3.0, 2.5]


def test_a_zoomed_range_gets_finer_buckets_and_a_stream_cursor(client):
    from app import events

    run_id = post_experiment(client)["run_id"]
    values = smooth(20_000)
    values[10_050] = 40.0  # a spike at step 10051, inside the zoomed range
    store(run_id, "loss", values)
    events.publish(events.redis_client(), run_id, "metrics", {"points": []})
    whole = client.get(f"/api/runs/{run_id}/metrics", params={"keys": "loss", "max_points": 500})
    zoomed = client.get(f"/api/runs/{run_id}/metrics", params={"keys": "loss", "max_points": 500,
                                                              "step_min": 10_001, "step_max": 10_200})  # fmt: skip
    assert whole.status_code == zoomed.status_code == 200
    steps = [p["step"] for p in zoomed.json()["series"]["loss"]]
    assert steps == list(range(10_001, 10_201))  # every step of the range: 200 fit the budget
    assert max(p["value"] for p in zoomed.json()["series"]["loss"]) == 40.0
    coarse = [p["step"] for p in whole.json()["series"]["loss"] if 10_001 <= p["step"] <= 10_200]
    assert len(coarse) < 20  # the whole run's buckets had only a few points there
    # the stream id the history was read at: the live chart follows the stream from it
    newest = events.redis_client().xrevrange(events.stream_key(run_id), count=1)[0][0]
    assert whole.headers[events.CURSOR_HEADER] == newest
    bad = client.get(f"/api/runs/{run_id}/metrics", params={"step_min": -1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "step_min"]
