"""Starting a GPU worker: `distill worker --gpu N` runs one Celery worker bound to one GPU.

    CUDA_VISIBLE_DEVICES=N celery -A worker.celery_app worker -Q gpu -c 1 -P prefork \
        --max-tasks-per-child 1 -n gpuN@%h -E

Prefork with one child, not the solo pool: the parent keeps answering the broker and control
commands while a run trains in the child, and each run gets a fresh child (GPU memory freed).
"""

from __future__ import annotations

import os
import socket

from worker.celery_app import GPU_QUEUE


def worker_name(gpu: str | None, name: str | None = None) -> str:
    """Celery node name: NAME@host, default gpuN@host (cpu@host without a GPU)."""
    node = name or (f"gpu{gpu}" if gpu not in (None, "") else "cpu")
    return node if "@" in node else f"{node}@{socket.gethostname()}"


def worker_argv(gpu: str | None, name: str | None = None, loglevel: str = "INFO") -> list[str]:
    """The argument list of `celery worker` for one GPU (without the program name)."""
    return [
        "worker", "-Q", GPU_QUEUE, "-c", "1", "-P", "prefork", "--max-tasks-per-child", "1",
        "-n", worker_name(gpu, name), "-E", "--loglevel", loglevel, "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def run_worker(gpu: str | None = None, name: str | None = None, loglevel: str = "INFO") -> None:
    """Become a Celery worker for `gpu` (this process never touches CUDA; the task's child does)."""
    from app.db import init_db
    from app.settings import get_settings
    from worker.celery_app import configure

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    elif "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker: never grab a GPU by accident
    settings = get_settings()
    if not settings.redis_url:
        raise SystemExit("DISTILL_REDIS_URL is not set: point it at the team's Redis, or use `distill up`")
    init_db()
    app = configure(settings.redis_url)
    app.worker_main(worker_argv(gpu, name, loglevel))
