"""A client generated from /openapi.json by openapi-python-client drives a real server: create, poll,
metrics, cancel, and the typed errors. What a team that never read this code would do first.

The generator runs on the document of an app with auth on (bearer tokens), the package it writes is
imported, and every call goes over HTTP to uvicorn on the session's database and Redis.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.db import get_engine
from app.main import create_app
from tests.helpers.factories import wait_for
from tests.helpers.servers import serve_in_thread
from tests.helpers.specs import tiny_spec
from worker.reporter import DatabaseReporter

PACKAGE = "distill_client"  # openapi-python-client's name for a document titled "distill"


def generator() -> str:
    found = shutil.which("openapi-python-client") or Path(sys.executable).with_name("openapi-python-client")
    assert Path(found).exists(), "openapi-python-client is missing: pip install -e '.[test]'"
    return str(found)


@pytest.fixture
def generated(token, tmp_path, monkeypatch):
    """The generated package, imported (and forgotten again after the test)."""
    app = create_app(ui=False)
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(app.openapi()))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "post_hooks": [],  # no formatter run on the output: not what is tested
        # the metrics files' types, as docs/api.md tells a user to map them (the generator knows neither)
        "content_type_overrides": {"application/jsonl": "text/plain",
                                   "application/vnd.apache.parquet": "application/octet-stream"},
    }))  # fmt: skip
    result = subprocess.run(
        [generator(), "generate", "--path", str(document), "--meta", "none", "--config", str(config),
         "--output-path", str(tmp_path / PACKAGE)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    monkeypatch.syspath_prepend(str(tmp_path))
    package = importlib.import_module(PACKAGE)
    for module in pkgutil.walk_packages(package.__path__, f"{PACKAGE}."):
        importlib.import_module(module.name)  # every module imports (a body in two content types did not: Unset)
    # the one thing it may skip: the YAML route (its only content type is YAML, which it does not speak)
    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING parsing POST /api/experiments/yaml within experiments. Endpoint will not be generated."
    ], output
    assert "Unsupported content type application/yaml" in output
    yield app
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def test_a_generated_client_creates_polls_reads_metrics_and_cancels(generated, token):
    client_module = importlib.import_module(f"{PACKAGE}.client")
    models = importlib.import_module(f"{PACKAGE}.models")
    api = f"{PACKAGE}.api"
    create = importlib.import_module(f"{api}.experiments.experiments_create_experiment")
    get_run = importlib.import_module(f"{api}.runs.runs_get_run")
    list_runs = importlib.import_module(f"{api}.runs.runs_list_runs")
    run_metrics = importlib.import_module(f"{api}.metrics.metrics_run_metrics")
    cancel = importlib.import_module(f"{api}.runs.runs_cancel_run")
    me = importlib.import_module(f"{api}.auth.auth_me")

    with serve_in_thread(generated) as url:
        anonymous = client_module.AuthenticatedClient(
            base_url=url, token="not-a-token", raise_on_unexpected_status=True
        )
        assert me.sync_detailed(client=anonymous).status_code == 401
        client = client_module.AuthenticatedClient(base_url=url, token=token, raise_on_unexpected_status=True)
        assert me.sync(client=client).user == "ada"

        # a bad spec: a typed 422 naming the field
        bad = models.ExperimentCreate.from_dict({"name": "bad", "spec": tiny_spec(lmbda=2.0)})
        problems = create.sync(client=client, body=bad)
        assert isinstance(problems, models.Problems)
        assert ["body", "spec", "lmbda"] in [p.loc for p in problems.detail]

        body = models.ExperimentCreate.from_dict({"name": "generated", "tags": ["client"], "spec": tiny_spec()})
        created = create.sync(client=client, body=body)
        assert isinstance(created, models.ExperimentCreated), created
        run_id = created.run_id
        assert created.run.status is models.RunStatus.QUEUED

        detail = get_run.sync(run_id, client=client)
        assert isinstance(detail, models.RunDetail) and detail.owner == "ada"
        assert isinstance(detail.spec, models.DistillSpec) and detail.spec.lmbda == 0.5  # the spec, typed
        listed = list_runs.sync(client=client, status=[models.RunStatus.QUEUED, models.RunStatus.RUNNING])
        assert [r.id for r in listed.data] == [run_id]

        # the metrics a worker writes, read back through the client with integer steps
        reporter = DatabaseReporter(run_id, engine=get_engine(), attempt=1, flush_seconds=0.1, heartbeat_seconds=60)
        for step in (1, 2, 3):
            reporter.log(step, {"loss": 1.0 / step})
        reporter.close()
        series = wait_for(
            lambda: (s := run_metrics.sync(run_id, client=client, keys="loss")) and len(s.series["loss"]) == 3 and s,
            30, "three loss points",
        )  # fmt: skip
        points = series.series["loss"]
        assert [p.step for p in points] == [1, 2, 3] and all(type(p.step) is int for p in points)
        assert points[1].value == pytest.approx(0.5)

        cancelled = cancel.sync(run_id, client=client)
        assert cancelled.status is models.RunStatus.CANCELLED
        again = cancel.sync_detailed(run_id, client=client)  # cancelling a finished run: the declared 409
        assert again.status_code == 409 and isinstance(again.parsed, models.ErrorMessage)
        missing = get_run.sync_detailed(2**31 - 1, client=client)
        assert missing.status_code == 404 and isinstance(missing.parsed, models.ErrorMessage)
