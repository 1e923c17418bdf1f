"""A padded-head pair (one tokenizer, heads of 145 and 209 rows over 81 ids) through the service: the API
accepts it, a real worker trains it with the numbers of the same run on the command line's path, and
the run's page and its API record say the vocabulary was cut."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select

from app.db import get_engine
from app.models import MetricPoint, RunStatus
from core_distill.reporting import JsonlReporter
from core_distill.train import run
from tests.helpers.factories import launch, read_run, wait_for
from tests.helpers.vocabularies import build_padded_pair

pytestmark = pytest.mark.slow

CUT_LINE = "vocabulary cut from 145 (student head) and 209 (teacher head) to 81"


def test_a_padded_pair_distils_from_the_service_as_on_the_command_line(client, worker, tmp_path):
    pair = build_padded_pair(tmp_path / "pair")
    spec = pair.spec(max_steps=3)
    run_id = launch(client, spec, name="padded")  # main: 422, "needs the same tokenizer"
    finished = wait_for(lambda: (r := read_run(run_id)) and RunStatus(r.status).finished and r, 240,
                        f"run {run_id} to finish", worker)  # fmt: skip
    assert finished.status == RunStatus.succeeded, finished.error

    local = tmp_path / "local"
    run(spec, output_dir=local, reporter=JsonlReporter(local))
    expected = {(x["step"], key): value for x in map(json.loads, (local / "metrics.jsonl").read_text().splitlines())
                for key, value in x["metrics"].items() if not key.startswith(("time/", "perf/"))}  # fmt: skip
    with Session(get_engine()) as session:
        stored = {
            (p.step, p.key): p.value for p in session.exec(select(MetricPoint).where(MetricPoint.run_id == run_id))
        }
    assert {k for k in stored if not k[1].startswith(("time/", "perf/"))} == set(expected)
    for key, value in expected.items():
        assert stored[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key

    detail = client.get(f"/api/runs/{run_id}").json()
    assert [(e["kind"], e["attempt"]) for e in detail["history"]] == [("header", 1)]
    assert detail["history"][0]["note"].startswith(CUT_LINE)
    from ui.live import run_header
    from ui.runs import run_summary

    assert CUT_LINE in run_header(run_id) and CUT_LINE in run_summary(run_id)  # the dashboard's run page and side panel
