"""Real tracker backends for the report_to tests, and readers of what each one stored.

MLflow: a tracking server started on 127.0.0.1 (its own process group), read back with MlflowClient.
TensorBoard: event files read with tensorboard's EventAccumulator. W&B: an offline run's transaction log
(`run-<id>.wandb`), read record by record with wandb's own protobuf classes. trackio: its local SQLite
store, read with trackio's SQLiteStorage.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

SERVER_START_SECONDS = 300  # mlflow server takes 10-60 s to answer on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (a tracker that is down)."""
    return f"http://127.0.0.1:{free_port()}"


class MlflowServer:
    """`mlflow server` with a SQLite backend store and a local artifact root under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "mlflow-server.log"
        mlflow = Path(sys.executable).with_name("mlflow")
        argv = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "artifacts")]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not self._healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}): {self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"mlflow server did not answer in {SERVER_START_SECONDS} s: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)

    def run(self, experiment: str, run_name: str):
        """The one run named `run_name` in `experiment`."""
        client = self.client()
        found = client.get_experiment_by_name(experiment)
        assert found is not None, f"no MLflow experiment {experiment!r}"
        runs = client.search_runs([found.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
        assert len(runs) == 1, f"{len(runs)} MLflow runs named {run_name!r}"
        return runs[0]

    def history(self, run_id: str, key: str) -> dict[int, float]:
        return {m.step: m.value for m in self.client().get_metric_history(run_id, key)}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)


def jsonl_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """{key: {step: value}} of a run folder's metrics.jsonl (finite values: what trackers get)."""
    out: dict[str, dict[int, float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record["metrics"].items():
            if math.isfinite(value):
                out.setdefault(key, {})[record["step"]] = value
    return out


def tensorboard_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the event files under log_dir, with tensorboard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def tensorboard_texts(log_dir: Path) -> dict[str, dict[int, str]]:
    """{tag: {step: text}} of the text summaries (add_text) under log_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    out: dict[str, dict[int, str]] = {}
    for tag in acc.Tags()["tensors"]:
        if tag.endswith("/text_summary"):
            out[tag.removesuffix("/text_summary")] = {
                e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)
            }
    return out


def wandb_records(run_dir: Path) -> list[Any]:
    """Every record of an offline W&B run's transaction log (LevelDB-style log: 32 KiB blocks of chunks with
    a 7-byte header crc32 / length / type; the payloads are wandb_internal_pb2.Record messages)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_offline_run(records: list[Any]) -> dict[str, Any]:
    """What an offline run holds: its name and project, config, history by step and summary."""
    out: dict[str, Any] = {"config": {}, "history": {}, "summary": {}}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["name"], out["project"], out["id"] = r.run.display_name, r.run.project, r.run.run_id
            out["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            out["history"][int(items["_step"])] = items
        elif kind == "summary":
            out["summary"].update({i.key: json.loads(i.value_json) for i in r.summary.update if i.key})
    return out


@contextlib.contextmanager
def _trackio_store(store: Path):
    """trackio's reader pointed at `store` (trackio reads TRACKIO_DIR once, when it is imported)."""
    from trackio import sqlite_storage

    before = sqlite_storage.TRACKIO_DIR
    sqlite_storage.TRACKIO_DIR = Path(store)
    try:
        yield sqlite_storage.SQLiteStorage
    finally:
        sqlite_storage.TRACKIO_DIR = before


def trackio_logs(store: Path, project: str, run: str) -> list[dict[str, Any]]:
    """A trackio run's log entries from the local store in `store` (a run's TRACKIO_DIR)."""
    with _trackio_store(store) as storage:
        return storage.get_logs(project, run)


def trackio_config(store: Path, project: str, run: str) -> dict[str, Any] | None:
    with _trackio_store(store) as storage:
        return storage.get_run_config(project, run)


def needs(*modules: str):
    """Skip a test (with the extra to install) when a tracker's package is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}: pip install -e '.[trackers]'")
