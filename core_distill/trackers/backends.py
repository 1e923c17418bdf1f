"""The trackers' clients: MLflow, Weights & Biases, TensorBoard and trackio.

Each is called from its own thread (core_distill/trackers/thread.py) in this order: `start(run)`,
`resumed(step)`, then `log` / `log_samples` / `header` as the run goes, and `finish(outcome)`. Each gets the
spec (as parameters or config, and spec.yaml where the tool keeps files), every metric by step, each
evaluation's samples as a table and the final model's location. Imports are inside the methods: only
the trackers a run names are imported, and only on their thread.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

SAMPLE_COLUMNS = ("prompt", "completion", "reference", "correct", "mean_token_div", "tokens")
PROBE_SECONDS = 5.0  # an http tracking server that does not answer its health check within this is down
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        text = "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in SAMPLE_COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


class MlflowTracker:
    """A run in an MLflow experiment (the project): spec fields as parameters, spec.yaml and header.txt as
    artifacts, metrics by step, each evaluation's samples as a table artifact (`eval_samples/step_N.json`),
    the final model's location as the tag `distill.model_dir`."""

    def start(self, run) -> None:
        # a server that went away mid-run should cost a few retries, not MLflow's default of minutes per call
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = run.options.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri.startswith(("http://", "https://")):
            _probe(uri.rstrip("/") + "/health")
        self.client = MlflowClient(tracking_uri=uri or None)
        experiment = run.options.project_for("MLFLOW_EXPERIMENT_NAME")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = run.state.get("run_id")
        if self.run_id:  # an earlier attempt of this run: continue it
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {"distill.output_dir": str(run.output_dir.resolve()), **run.options.tags}
        self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
        run.state["run_id"] = self.run_id
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in flatten(run.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_text(self.run_id, run.spec_yaml, "spec.yaml")

    def resumed(self, step: int) -> None:
        pass  # MLflow keeps every point; a resumed step logged again is a second point at that step

    def header(self, lines: list[str]) -> None:
        self.client.log_text(self.run_id, "".join(line + "\n" for line in lines), "header.txt")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(key, value, now, step) for key, value in metrics.items()]
        for i in range(0, len(points), 1000):
            self.client.log_batch(self.run_id, metrics=points[i : i + 1000])

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        columns = {c: [r[c] for r in rows] for c in SAMPLE_COLUMNS}
        self.client.log_table(self.run_id, data=columns, artifact_file=f"eval_samples/step_{step:06d}.json")

    def finish(self, outcome: dict[str, Any]) -> None:
        if outcome["model_dir"]:
            self.client.set_tag(self.run_id, "distill.model_dir", outcome["model_dir"])
        status = {"finished": "FINISHED", "stopped": "KILLED"}.get(outcome["status"], "FAILED")
        self.client.set_terminated(self.run_id, status=status)


class TensorboardTracker:
    """Event files in <run folder>/tensorboard (or DISTILL_TENSORBOARD_DIR/<run name>): scalars by step, the
    spec, the header and each evaluation's samples as text, the final model's location as text."""

    def start(self, run) -> None:
        root = run.options.tensorboard_dir
        self.log_dir = Path(root) / run.name if root else run.output_dir / "tensorboard"
        self.run = run
        self.writer = None

    def resumed(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run hides the points an earlier attempt logged after its checkpoint
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1 if step > 0 else None, flush_secs=10)
        if step == 0:
            self.writer.add_text("spec", "    " + self.run.spec_yaml.replace("\n", "\n    "), 0)

    def _writer(self):
        if self.writer is None:
            self.resumed(0)
        return self.writer

    def header(self, lines: list[str]) -> None:
        self._writer().add_text("header", "\n\n".join(lines), 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        writer = self._writer()
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        self._writer().add_text("eval/samples", _markdown_table(rows), step)

    def finish(self, outcome: dict[str, Any]) -> None:
        writer = self._writer()
        if outcome["model_dir"]:
            writer.add_text("final_model", outcome["model_dir"], outcome["step"] or 0)
        writer.close()


class WandbTracker:
    """A W&B run (project: DISTILL_TRACKER_PROJECT, else WANDB_PROJECT, else distill; mode: WANDB_MODE, e.g.
    offline): the spec as config, metrics by step, each evaluation's samples as the table `eval/samples`,
    the final model's location in the summary (`model_dir`)."""

    def start(self, run) -> None:
        import wandb

        self.wandb = wandb
        run_id = run.state.setdefault("run_id", uuid.uuid4().hex[:8])
        mode = run.options.wandb_mode or None  # None: WANDB_MODE, else online
        directory = os.environ.get("WANDB_DIR") or str(run.output_dir)  # wandb/ inside the run folder
        self.run = wandb.init(project=run.options.project_for("WANDB_PROJECT"), name=run.name, id=run_id,
                              resume="allow", config=run.config, dir=directory, mode=mode, tags=None,
                              settings=wandb.Settings(console="off", silent=True))  # fmt: skip
        self.run.summary["output_dir"] = str(run.output_dir.resolve())

    def resumed(self, step: int) -> None:
        pass  # W&B ignores steps below the last one it has

    def header(self, lines: list[str]) -> None:
        self.run.summary["header"] = "\n".join(lines)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        table = self.wandb.Table(columns=list(SAMPLE_COLUMNS), data=[[r[c] for c in SAMPLE_COLUMNS] for r in rows])
        self.run.log({"eval/samples": table}, step=step)

    def finish(self, outcome: dict[str, Any]) -> None:
        if outcome["model_dir"]:
            self.run.summary["model_dir"] = outcome["model_dir"]
        self.run.finish(exit_code=0 if outcome["status"] == "finished" else 1)


class TrackioTracker:
    """A trackio run in its local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio) or on the Space /
    server its variables name: the spec as config, metrics by step, samples as the table `eval/samples`, the
    final model's location as the log entry `final_model`."""

    def start(self, run) -> None:
        import trackio

        self.trackio = trackio
        self.spec_run = run
        self.run = trackio.init(project=run.options.project_for("TRACKIO_PROJECT"), name=run.name, config=run.config,
                                resume="allow", embed=False, auto_log_cpu=False, auto_log_gpu=False)  # fmt: skip
        self.step = 0

    def resumed(self, step: int) -> None:
        pass

    def header(self, lines: list[str]) -> None:
        pass  # no text kind in trackio; the header is in the run folder and the other trackers

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.step = max(self.step, step)
        self.run.log(dict(metrics), step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        table = self.trackio.Table(columns=list(SAMPLE_COLUMNS), data=[[r[c] for c in SAMPLE_COLUMNS] for r in rows])
        self.run.log({"eval/samples": table}, step=step)

    def finish(self, outcome: dict[str, Any]) -> None:
        if outcome["model_dir"]:
            self.run.log({"final_model": outcome["model_dir"]}, step=outcome["step"] or self.step)
        self.run.finish()


def _probe(url: str) -> None:
    """Raise ConnectionError when the tracking server does not answer its health check."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_SECONDS) as response:  # noqa: S310  (the user's own URL)
            response.read(64)
    except urllib.error.HTTPError:
        pass  # it answered (a proxy in front may not route /health): the client's own calls will tell
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(f"the tracking server at {url} does not answer ({exc})") from None


BACKENDS = {"mlflow": MlflowTracker, "tensorboard": TensorboardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}
