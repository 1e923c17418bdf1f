"""A real Celery worker (`distill worker`, a subprocess) on the test session's database and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import Session

from app.db import get_engine
from app.models import Run
from core_distill.spec import DistillSpec
from tests.services import signal_group, stop_group

HEARTBEAT_SECONDS = "0.5"


class WorkerProcess:
    """`distill worker` in its own process group, so a test can SIGKILL it with its pool child."""

    def __init__(self, env: dict[str, str], log_dir: Path, args: tuple[str, ...] = (), prefix: str = "test"):
        self.env = env
        self.prefix = prefix  # host names prefix1, prefix2, ...: one per start
        self.log_dir = log_dir
        self.args = args  # e.g. ("--gpus", "0,1"): a simulated 2-GPU host
        self.process: subprocess.Popen | None = None
        self.started = 0

    def start(self) -> None:
        self.started += 1
        log = open(self.log_dir / f"worker-{self.started}.log", "wb")  # noqa: SIM115  (the child keeps it open)
        argv = [sys.executable, "-m", "app.cli", "worker", "--name", f"{self.prefix}{self.started}", "--loglevel", "INFO",
                *self.args]  # fmt: skip
        self.process = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()

    def kill(self) -> None:
        """SIGKILL the worker and its pool child: what a crash or an OOM kill looks like."""
        signal_group(self.process, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_group(self.process, timeout=60)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))


@pytest.fixture(scope="module")
def worker(_service_backends, _toy_build, tmp_path_factory: pytest.TempPathFactory):
    """One worker for the module's tests (restarted by tests that kill it); the same DB and Redis as service_env."""
    database, redis_server = _service_backends
    home = tmp_path_factory.mktemp("worker-home")
    env = dict(
        os.environ, DISTILL_DATABASE_URL=database.url, DISTILL_REDIS_URL=redis_server.url, DISTILL_TOY_DIR=str(_toy_build),
        DISTILL_HOME=str(home), DISTILL_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS, PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
    )  # fmt: skip
    for name in ("DISTILL_AUTH", "DISTILL_ALLOWED_PATHS", "DISTILL_RUNS_DIR", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    process = WorkerProcess(env, home)
    process.start()
    yield process
    process.stop()


def tiny_spec(**overrides) -> DistillSpec:
    """A toy run of a few seconds: tiny models, a few steps, short completions, no evaluation."""
    fields = dict(max_steps=4, batch_size=2, max_new_tokens=8, eval_data="", eval_examples=4, eval_every=0,
                  save_every=2, lmbda=0.5, learning_rate=1e-3)  # fmt: skip
    return DistillSpec.parse(fields | overrides)


@pytest.fixture
def api(service_env):
    """The REST API in-process (without the dashboard), on service_env's database and Redis."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(ui=False)) as client:
        yield client


def launch(api, spec: DistillSpec, name: str = "test") -> int:
    """POST /api/experiments (create and queue); the queued run's id."""
    response = api.post("/api/experiments", json={"name": name, "spec": spec.model_dump(mode="json")})
    assert response.status_code == 201, response.text
    return response.json()["run_id"]


def read_run(run_id: int) -> Run:
    with Session(get_engine()) as session:
        return session.get(Run, run_id)


def wait_for(predicate, timeout: float, what: str, worker: WorkerProcess | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            log = worker.log_text()[-4000:] if worker else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n--- worker log tail ---\n{log}")
        time.sleep(0.2)
