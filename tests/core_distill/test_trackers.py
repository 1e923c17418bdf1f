"""report_to: a CLI run reaches real trackers (an MLflow server, TensorBoard event files, an offline W&B run,
trackio's local store) with the same metrics as its metrics.jsonl; a tracker that is down never fails it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core_distill.spec import DistillSpec, SpecError
from core_distill.trackers import MODULES, TrackerReporter, normalize_report_to, sample_rows
from core_distill.trackers.thread import TrackerThread
from tests.helpers import trackers as th

ALL = ["mlflow", "tensorboard", "wandb", "trackio"]


def distill_run(spec: DistillSpec, tmp_path: Path, name: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump()))
    out = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "app.cli", "run", str(spec_file), "--output", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.getcwd(), **env})  # fmt: skip
    return done, out


# --- the field -------------------------------------------------------------------------------------
def test_report_to_takes_trls_forms_and_names_an_unknown_tracker():
    assert DistillSpec().report_to == []
    assert DistillSpec.parse({"report_to": "mlflow"}).report_to == ["mlflow"]
    assert DistillSpec.parse({"report_to": "none"}).report_to == []
    assert DistillSpec.parse({"report_to": ["wandb", "TensorBoard", "wandb"]}).report_to == ["wandb", "tensorboard"]
    assert normalize_report_to("mlflow, trackio") == ["mlflow", "trackio"]
    with pytest.raises(SpecError) as err:
        DistillSpec.parse({"report_to": ["mlflow", "neptune"]})
    assert "unknown tracker 'neptune'" in err.value.errors["report_to"]
    assert "mlflow, wandb, tensorboard, trackio" in err.value.errors["report_to"]
    with pytest.raises(SpecError) as err:
        DistillSpec.parse({"report_to": 3})
    assert "tracker name or a list" in err.value.errors["report_to"]
    # the YAML a run folder keeps parses back to the same list
    assert DistillSpec.from_yaml(DistillSpec(report_to=["tensorboard"]).to_yaml()).report_to == ["tensorboard"]


def test_preflight_names_the_extra_to_install_for_a_missing_tracker_package(tiny_workspace, monkeypatch):
    spec = tiny_workspace.spec(report_to=["tensorboard", "wandb"])
    monkeypatch.setitem(MODULES, "wandb", "wandb_is_not_installed_here")  # as on a host without the package
    with pytest.raises(SpecError) as err:
        spec.preflight()
    msg = err.value.errors["report_to"]
    assert msg.startswith("wandb needs the 'wandb_is_not_installed_here' package")
    assert "pip install 'distill-service[trackers]'" in msg and "tensorboard" not in msg


# --- the thread that shields the run ----------------------------------------------------------------
class _Flaky:
    def __init__(self):
        self.logged: list[int] = []

    def log(self, step: int, metrics: dict) -> None:
        if step == 2:
            raise ConnectionError("server went away")
        self.logged.append(step)

    def finish(self, outcome: dict) -> None:
        self.logged.append(-1)


def test_a_failing_tracker_warns_once_and_is_dropped(caplog, tmp_path):
    thread = TrackerThread("flaky", backend := _Flaky(), finish_seconds=30)
    reporter = TrackerReporter([thread], tmp_path / "trackers.json", {})
    with caplog.at_level(logging.WARNING, logger="core_distill.trackers"):
        for step in range(1, 6):
            reporter.log(step, {"loss": 1.0 / step, "bad": float("nan")})
        reporter.finish(model_dir=None, status="finished")
    assert backend.logged == [1]  # step 2 failed: nothing after it was sent, finish included
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["tracker flaky stopped reporting: ConnectionError: server went away; the run goes on without it"]
    assert reporter.should_stop() is False


def test_sample_rows_keep_the_texts_and_the_mean_divergence():
    rows = sample_rows([{"prompt": "1+1=", "completion": "2", "reference": "2", "tokens": [5, 6],
                         "token_div": [0.5, 1.5], "correct": True}])  # fmt: skip
    assert rows == [{"prompt": "1+1=", "completion": "2", "reference": "2", "correct": True, "mean_token_div": 1.0,
                     "tokens": 2}]  # fmt: skip


# --- real backends ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("mlflow", reason="needs mlflow: pip install -e '.[trackers]'")
    server = th.MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.mark.slow
@th.needs(*[MODULES[n] for n in ALL])
def test_a_cli_run_reaches_mlflow_tensorboard_wandb_and_trackio_with_its_metrics(tiny_workspace, tmp_path, mlflow_server):
    spec = tiny_workspace.spec(max_steps=3, eval_every=2, report_to=ALL)
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": "cli-trackers", "WANDB_MODE": "offline",
           "WANDB_PROJECT": "cli-trackers", "TRACKIO_DIR": str(tmp_path / "trackio"), "TRACKIO_PROJECT": "cli-trackers"}  # fmt: skip
    started = time.monotonic()
    done, out = distill_run(spec, tmp_path, "tracked", **env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped reporting" not in done.stderr, done.stderr[-3000:]
    expected = th.jsonl_metrics(out)
    assert {0, 2, 3} <= set(expected["eval/exact_match"]) and set(expected["loss"]) == {1, 2, 3}
    model_dir = str((out / "final").resolve())

    # MLflow: parameters, every metric by step, spec.yaml, one samples table per evaluation, the model's location
    run = mlflow_server.run("cli-trackers", "tracked")
    assert run.info.status == "FINISHED"
    assert run.data.params["beta"] == str(spec.beta) and run.data.params["report_to"] == str(ALL)
    assert run.data.tags["distill.model_dir"].endswith("tracked/final")
    for key, by_step in expected.items():
        assert mlflow_server.history(run.info.run_id, key) == pytest.approx(by_step), key
    client = mlflow_server.client()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "eval_samples"} <= artifacts
    tables = sorted(a.path for a in client.list_artifacts(run.info.run_id, "eval_samples"))
    assert tables == [f"eval_samples/step_{s:06d}.json" for s in sorted(expected["eval/exact_match"])]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, tables[-1], str(tmp_path))).read_text())
    assert table["columns"][:3] == ["prompt", "completion", "reference"] and len(table["data"]) == spec.eval_completions_logged

    # TensorBoard, read with its own reader: the same scalars (stored as float32), the samples, the spec
    scalars = th.tensorboard_scalars(out / "tensorboard")
    for key, by_step in expected.items():
        assert scalars[key] == pytest.approx(by_step, rel=1e-6), key
    texts = th.tensorboard_texts(out / "tensorboard")
    assert set(texts["eval/samples"]) == set(expected["eval/exact_match"])
    assert "beta:" in texts["spec"][0] and texts["final_model"][3] == model_dir

    # W&B offline: the run's transaction log holds the config, every metric by step, the tables, the summary
    (wandb_dir,) = (out / "wandb").glob("offline-run-*")
    wb = th.wandb_offline_run(th.wandb_records(wandb_dir))
    assert wb["name"] == "tracked" and wb["project"] == "cli-trackers" and wb["config"]["beta"] == spec.beta
    for key, by_step in expected.items():
        assert {s: h[key] for s, h in wb["history"].items() if key in h} == pytest.approx(by_step), key
    assert {s for s, h in wb["history"].items() if "eval/samples/_type" in h} == set(expected["eval/exact_match"])
    assert wb["summary"]["model_dir"] == model_dir
    assert json.loads((out / "trackers.json").read_text())["wandb"]["run_id"] == wb["id"]

    # trackio's local store
    logs = th.trackio_logs(tmp_path / "trackio", "cli-trackers", "tracked")
    for key, by_step in expected.items():
        assert {e["step"]: e[key] for e in logs if key in e} == pytest.approx(by_step), key
    assert any(e.get("final_model") == model_dir for e in logs)
    assert sum("eval/samples" in e for e in logs) == len(expected["eval/exact_match"])
    assert th.trackio_config(tmp_path / "trackio", "cli-trackers", "tracked")["beta"] == spec.beta
    print(f"tracked CLI run: {time.monotonic() - started:.1f} s")


@pytest.mark.slow
@th.needs("mlflow", "tensorboard")
def test_a_tracker_that_is_down_warns_once_and_the_run_goes_on(tiny_workspace, tmp_path):
    spec = tiny_workspace.spec(max_steps=3, eval_every=0, report_to=["mlflow", "tensorboard"])
    started = time.monotonic()
    done, out = distill_run(spec, tmp_path, "down", MLFLOW_TRACKING_URI=th.closed_port_url())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("stopped reporting") == 1, done.stderr[-3000:]
    assert "tracker mlflow stopped reporting: ConnectionError: the tracking server at http://127.0.0.1:" in done.stderr
    assert (out / "final" / "config.json").exists()
    assert th.tensorboard_scalars(out / "tensorboard")["loss"].keys() == {1, 2, 3}  # the other tracker went on
    assert time.monotonic() - started < 300


@pytest.mark.slow
@th.needs("mlflow", "tensorboard")
def test_a_resumed_run_continues_its_mlflow_run_and_tensorboard_drops_the_replayed_steps(
    tiny_workspace, tmp_path, mlflow_server
):
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_NAME": "cli-resume"}
    first = tiny_workspace.spec(max_steps=2, eval_every=0, save_every=1, report_to=["mlflow", "tensorboard"])
    done, out = distill_run(first, tmp_path, "resumed", **env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]["run_id"]
    assert mlflow_server.client().get_run(run_id).info.status == "FINISHED"
    # the same folder, two more steps: it resumes from the step-2 checkpoint
    done, _ = distill_run(first.with_overrides({"max_steps": 4}), tmp_path, "resumed", **env)
    assert done.returncode == 0, done.stderr[-3000:]
    run = mlflow_server.run("cli-resume", "resumed")  # one run, not two
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert set(mlflow_server.history(run_id, "loss")) == {1, 2, 3, 4}
    assert run.data.tags["distill.model_dir"].endswith("resumed/final")
    expected = th.jsonl_metrics(out)
    assert th.tensorboard_scalars(out / "tensorboard")["loss"] == pytest.approx(expected["loss"], rel=1e-6)
