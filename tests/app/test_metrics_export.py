"""A service run's metrics as the files a CLI run leaves: `metrics.jsonl` (the JsonlReporter's format, line for
line) and a Parquet table, through the API (`/api/runs/{id}/metrics.jsonl|.parquet`) and into the run folder."""

from __future__ import annotations

import io
import json
import sys

import pytest
from sqlmodel import Session, select

from app.db import get_engine
from app.models import MetricPoint
from app.services import metrics_export
from core_distill import metric_keys as mk
from core_distill.reporting import FanoutReporter, JsonlReporter
from tests.helpers.factories import post_experiment
from tests.helpers.trackers import jsonl_metrics
from worker.reporter import DatabaseReporter


def log_a_run(run_id: int, folder) -> JsonlReporter:
    """The same log calls to a DatabaseReporter (what a worker stores) and a JsonlReporter (what a CLI run writes)."""
    jsonl = JsonlReporter(folder)
    database = DatabaseReporter(run_id, engine=get_engine(), flush_seconds=0.1, heartbeat_seconds=60)
    reporter = FanoutReporter(jsonl, database)
    reporter.log(0, {mk.EVAL_EXACT_MATCH: 0.25, mk.EVAL_DIV_FKL: 1.5})
    for step in range(1, 7):
        reporter.log(
            step, {mk.LOSS: 2.0 / step, mk.DIV_FKL: 1.0 / step, mk.LR: 1e-3, mk.PERF_TOKENS_PER_SEC: 100.0 + step}
        )
        if step % 3 == 0:  # an evaluation: a second log call at the same step
            reporter.log(step, {mk.EVAL_EXACT_MATCH: 0.25 + step / 24, mk.EVAL_DIV_FKL: 1.5 - step / 10})
    database.close()
    return jsonl


def test_jsonl_export_is_the_cli_runs_metrics_jsonl_line_for_line(client, tmp_path):
    run_id = post_experiment(client)["run_id"]
    jsonl = log_a_run(run_id, tmp_path / "cli")
    response = client.get(f"/api/runs/{run_id}/metrics.jsonl")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/jsonl")
    exported = [json.loads(line) for line in response.text.splitlines()]
    written = [json.loads(line) for line in jsonl.metrics_path.read_text().splitlines()]
    assert [(r["step"], r["metrics"]) for r in exported] == [(r["step"], r["metrics"]) for r in written]
    assert all(abs(a["time"] - b["time"]) < 5 for a, b in zip(exported, written, strict=True))
    only = [json.loads(line) for line in client.get(f"/api/runs/{run_id}/metrics.jsonl?keys=loss").text.splitlines()]
    assert [r["metrics"] for r in only] == [{"loss": 2.0 / step} for step in range(1, 7)]

    # into a run folder (what the worker does at the end of a service run): the tracker tests' reader agrees
    folder = tmp_path / "service-run"
    written_paths = metrics_export.export_to_run_folder(run_id, folder)
    assert [p.name for p in written_paths] == ["metrics.jsonl", "metrics.parquet"]
    assert jsonl_metrics(folder) == jsonl_metrics(tmp_path / "cli")


def test_parquet_export_holds_every_point(client, tmp_path):
    import pyarrow.parquet as pq

    run_id = post_experiment(client)["run_id"]
    log_a_run(run_id, tmp_path / "cli")
    response = client.get(f"/api/runs/{run_id}/metrics.parquet")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(response.content))
    assert table.schema.names == ["step", "key", "value", "wall_time"]
    with Session(get_engine()) as session:
        stored = session.exec(select(MetricPoint).where(MetricPoint.run_id == run_id).order_by(MetricPoint.id)).all()
    assert table.to_pylist() == [
        {"step": p.step, "key": p.key, "value": p.value, "wall_time": p.wall_time} for p in stored
    ]
    assert len(stored) == 2 + 6 * 4 + 2 * 2
    only = pq.read_table(io.BytesIO(client.get(f"/api/runs/{run_id}/metrics.parquet?keys=lr").content))
    assert only.column("key").to_pylist() == ["lr"] * 6
    assert client.get("/api/runs/999999/metrics.parquet").status_code == 404
    assert client.get("/api/runs/999999/metrics.jsonl").status_code == 404


def test_parquet_is_optional_without_pyarrow(client, tmp_path, monkeypatch):
    run_id = post_experiment(client)["run_id"]
    log_a_run(run_id, tmp_path / "cli")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed: `import pyarrow` fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    response = client.get(f"/api/runs/{run_id}/metrics.parquet")
    assert response.status_code == 501 and "needs pyarrow" in response.json()["detail"]
    folder = tmp_path / "service-run"
    assert [p.name for p in metrics_export.export_to_run_folder(run_id, folder)] == ["metrics.jsonl"]
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.jsonl"]
    with pytest.raises(ImportError, match="needs pyarrow"):
        metrics_export.write_parquet(run_id, folder / "x.parquet")


def test_an_empty_run_exports_empty_files(client, tmp_path):
    import pyarrow.parquet as pq

    run_id = post_experiment(client)["run_id"]
    assert client.get(f"/api/runs/{run_id}/metrics.jsonl").text == ""
    assert pq.read_table(io.BytesIO(client.get(f"/api/runs/{run_id}/metrics.parquet").content)).num_rows == 0
    metrics_export.export_to_run_folder(run_id, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == ""
