"""A real `distill up` started by a test, and what it leaves: every process below it, held as psutil
handles so they still name the same processes after `up` dies. Not worker.tasks.descendants: importing
worker.tasks into the test process made a later test's fresh worker answer 'waiting for GPUs' (94775ee)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from tests.helpers.factories import wait_for
from tests.services import free_port


def start_up(
    tmp_path: Path, toy_dir: Path, extra_env: dict[str, str] | None = None, timeout: float = 240
) -> tuple[subprocess.Popen, Path, str]:
    """A real `distill up` (embedded Redis, SQLite in tmp_path/home, one CPU worker) on a free port, its URL
    printed; (process, its log, base URL). Its environment is its own: nothing of it is set in this process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
    env |= {"DISTILL_HOME": str(tmp_path / "home"), "DISTILL_TOY_DIR": str(toy_dir), "PYTHONUNBUFFERED": "1"}
    env |= extra_env or {}
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port), "--gpus", "0"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for(
            lambda: "distill is up" in log_path.read_text() or up.poll() is not None, timeout, "distill up to start"
        )
        assert up.poll() is None, log_path.read_text()
    except BaseException:
        kill_all(up)
        raise
    return up, log_path, f"http://127.0.0.1:{port}"


def redis_port_of(log_path: Path) -> int:
    return int(log_path.read_text().split("redis: redis://127.0.0.1:", 1)[1].split("/", 1)[0])


def processes_below(pid: int) -> list[psutil.Process]:
    """Every live process below `pid`, as psutil handles: they still name the same processes after `pid`
    dies and they are re-parented (a signal to a handle whose pid was reused raises instead)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_all(up: subprocess.Popen, seen: Sequence[psutil.Process] = ()) -> None:
    """At a test's end: SIGKILL `distill up` and every process below it now or `seen` below it before (its
    children live in sessions of their own: killing its group alone would not reach them)."""
    processes = [*seen, *processes_below(up.pid)]
    if up.poll() is None:
        up.kill()
        up.wait()
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def wait_until_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in processes if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
