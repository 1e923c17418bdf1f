"""A real Celery worker (`distill worker`, a subprocess) on the test session's database and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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
