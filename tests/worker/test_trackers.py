"""report_to on the service: a worker fans a run out to the database and the spec's trackers, with the
team-wide defaults of its settings (DISTILL_MLFLOW_TRACKING_URI, DISTILL_TRACKER_PROJECT,
DISTILL_TENSORBOARD_DIR); the same spec run by the CLI lands in the same MLflow server and TensorBoard
with the same metrics."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from sqlmodel import Session, select

from app.db import get_engine
from app.models import MetricPoint, RunStatus
from tests.helpers import trackers as th
from tests.helpers.factories import launch, read_run, wait_for
from tests.helpers.specs import training_spec
from tests.worker.conftest import HEARTBEAT_SECONDS, WorkerProcess

pytestmark = [pytest.mark.slow, th.needs("mlflow", "tensorboard")]

RUN_TIMEOUT = 300
PROJECT = "service-trackers"
# what depends on the machine's speed, not on the training: compared by key only
TIMING_PREFIXES = ("perf/", "time/")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = th.MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tracked_worker(_service_backends, _toy_build, mlflow_server, tmp_path_factory):
    """A worker whose settings send runs to the test's MLflow server and a TensorBoard root."""
    database, redis_server = _service_backends
    home = tmp_path_factory.mktemp("tracked-worker")
    env = dict(
        os.environ, DISTILL_DATABASE_URL=database.url, DISTILL_REDIS_URL=redis_server.url, DISTILL_TOY_DIR=str(_toy_build),
        DISTILL_HOME=str(home), DISTILL_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS, PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", DISTILL_MLFLOW_TRACKING_URI=mlflow_server.url,
        DISTILL_TRACKER_PROJECT=PROJECT, DISTILL_TENSORBOARD_DIR=str(home / "tensorboard"),
    )  # fmt: skip
    for name in ("DISTILL_AUTH", "DISTILL_ALLOWED_PATHS", "DISTILL_RUNS_DIR", "CUDA_VISIBLE_DEVICES",
                 "MLFLOW_TRACKING_URI"):  # fmt: skip
        env.pop(name, None)
    process = WorkerProcess(env, home, prefix="tracked")
    process.start()
    process.tensorboard_root = home / "tensorboard"
    yield process
    process.stop()


def stored_metrics(run_id: int) -> dict[str, dict[int, float]]:
    with Session(get_engine()) as session:
        points = session.exec(select(MetricPoint).where(MetricPoint.run_id == run_id)).all()
    out: dict[str, dict[int, float]] = {}
    for p in points:
        out.setdefault(p.key, {})[p.step] = p.value
    return out


def test_a_service_run_and_a_cli_run_reach_mlflow_and_tensorboard_with_the_same_metrics(
    client, tracked_worker, mlflow_server, tmp_path
):
    spec = training_spec(max_steps=3, eval_data="toy:eval", save_every=0, eval_every=2,
                         report_to=["mlflow", "tensorboard"])  # fmt: skip
    run_id = launch(client, spec, name="tracked")
    run = wait_for(lambda: (r := read_run(run_id)) and RunStatus(r.status).finished and r, RUN_TIMEOUT,
                   f"run {run_id} to finish", tracked_worker)  # fmt: skip
    assert run.status == RunStatus.succeeded, run.error
    stored = stored_metrics(run_id)
    assert set(stored["loss"]) == {1, 2, 3} and set(stored["eval/exact_match"]) == {0, 2, 3}

    # the service run in MLflow (the worker's DISTILL_MLFLOW_TRACKING_URI and DISTILL_TRACKER_PROJECT)
    served = mlflow_server.run(PROJECT, f"run-{run_id}")
    assert served.info.status == "FINISHED"
    assert served.data.tags["distill.run_id"] == str(run_id) and served.data.tags["distill.model_dir"] == run.model_dir
    for key, by_step in stored.items():
        assert mlflow_server.history(served.info.run_id, key) == pytest.approx(by_step), key
    # ... and in TensorBoard under DISTILL_TENSORBOARD_DIR/run-<id>
    scalars = th.tensorboard_scalars(tracked_worker.tensorboard_root / f"run-{run_id}")
    for key, by_step in stored.items():
        assert scalars[key] == pytest.approx(by_step, rel=1e-6), key

    # the same spec through the CLI, sent to the same server: the same keys, and the same numbers for what
    # does not depend on the machine's speed (same seed, same data, same models)
    spec_file = tmp_path / "tracked.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump()))
    out = tmp_path / "cli-tracked"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "MLFLOW_TRACKING_URI": mlflow_server.url,
           "MLFLOW_EXPERIMENT_NAME": PROJECT}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "app.cli", "run", str(spec_file), "--output", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    local = th.jsonl_metrics(out)
    cli_run = mlflow_server.run(PROJECT, "cli-tracked")
    cli_tb = th.tensorboard_scalars(out / "tensorboard")
    assert set(local) == set(stored)
    for key, by_step in local.items():
        in_mlflow = mlflow_server.history(cli_run.info.run_id, key)
        assert in_mlflow == pytest.approx(by_step), key
        assert cli_tb[key] == pytest.approx(by_step, rel=1e-6), key
        if not key.startswith(TIMING_PREFIXES):
            assert in_mlflow == pytest.approx(mlflow_server.history(served.info.run_id, key), rel=1e-5, abs=1e-7), key
