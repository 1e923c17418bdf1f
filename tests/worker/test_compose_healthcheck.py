"""docker-compose.yml's worker healthcheck, run as the container runs it, against a real `distill worker`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from worker.launch import parse_gpus, worker_name

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_SECONDS = 180.0

pytestmark = pytest.mark.slow


def healthcheck(redis_url: str, node: str) -> subprocess.CompletedProcess[str]:
    """The compose healthcheck's shell line (`$$` unescaped), with the worker container's variables."""
    kind, line = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # this environment's `celery`
    env = {**os.environ, "PATH": path, "DISTILL_REDIS_URL": redis_url, "DISTILL_WORKER_NODE": node}
    return subprocess.run(["sh", "-c", line.replace("$$", "$")], capture_output=True, text=True, env=env, timeout=120)


def test_the_healthcheck_passes_for_a_running_worker_and_fails_for_another_name(worker):
    redis_url = worker.env["DISTILL_REDIS_URL"]
    node = worker_name(parse_gpus("cpu"), f"{worker.prefix}{worker.started}")  # the fixture's --name
    assert node.endswith("@" + socket.gethostname())
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while (done := healthcheck(redis_url, node)).returncode != 0:  # the worker may still be starting
        assert worker.process.poll() is None, worker.log_text()
        assert time.monotonic() < deadline, done.stdout + done.stderr + worker.log_text()
        time.sleep(1)
    assert "pong" in done.stdout
    other = healthcheck(redis_url, "nobody@" + socket.gethostname())
    assert other.returncode != 0 and "No nodes replied" in other.stdout + other.stderr
