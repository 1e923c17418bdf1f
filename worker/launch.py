"""Starting a worker host: `distill worker [--gpus 0,1]` runs one Celery worker for this machine's GPUs.

    celery -A worker.celery_app worker -Q gpu,gpu.<name> -c <GPUs> -P prefork \
        --max-tasks-per-child 1 -n <name> -E

The host announces itself and its GPUs in the database (app.services.scheduling) and keeps a
heartbeat there from a thread of this (parent) process; the scheduler books runs on its GPUs and
publishes them on `gpu.<name>`. One pool process per GPU: a run of N GPUs occupies one pool process
(which launches its N ranks), so there are never more runs than pool processes. Prefork, not the
solo pool: the parent keeps answering the broker while runs train in children, and each run gets
a fresh child (GPU memory freed). The parent never touches CUDA; each child sets
CUDA_VISIBLE_DEVICES to the GPUs booked for its run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading

from worker.celery_app import GPU_QUEUE, host_queue

HOST_ENV = "DISTILL_WORKER_HOST"  # the host's name, for the pool's children
CPU_LABEL = "cpu"


def visible_gpus() -> list[str]:
    """This machine's GPUs as CUDA indices, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in listing.splitlines() if ln.startswith("GPU "))]


def parse_gpus(gpus: str | None) -> list[str]:
    """`--gpus 0,1` -> ["0", "1"]; `cpu` -> ["cpu"] (one CPU slot); None -> every visible GPU, else one CPU slot.

    On a CPU-only machine `--gpus 0,1` simulates a 2-GPU host: runs get CUDA_VISIBLE_DEVICES=0,1,
    which CPU torch ignores, and a 2-GPU run trains as 2 gloo processes."""
    if gpus is None:
        return visible_gpus() or [CPU_LABEL]
    labels = [g.strip() for g in gpus.split(",") if g.strip()]
    if labels == [CPU_LABEL]:
        return labels
    if not labels or not all(label.isdigit() for label in labels) or len(set(labels)) != len(labels):
        raise ValueError(f"--gpus takes distinct GPU indices like 0,1 (or 'cpu'), got {gpus!r}")
    return labels


def worker_name(labels: list[str], name: str | None = None) -> str:
    """Celery node name and host name: NAME@machine, default gpu0-1@machine (cpu@machine without a GPU)."""
    node = name or ("cpu" if labels == [CPU_LABEL] else "gpu" + "-".join(labels))
    return node if "@" in node else f"{node}@{socket.gethostname()}"


def worker_argv(labels: list[str], name: str, loglevel: str = "INFO") -> list[str]:
    """The argument list of `celery worker` for one host (without the program name)."""
    return [
        "worker", "-Q", f"{GPU_QUEUE},{host_queue(name)}", "-c", str(len(labels)), "-P", "prefork",
        "--max-tasks-per-child", "1", "-n", name, "-E", "--loglevel", loglevel, "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def run_worker(gpus: str | None = None, name: str | None = None, loglevel: str = "INFO") -> None:
    """Become the Celery worker of this host's GPUs (this process never touches CUDA; the tasks' children do)."""
    from sqlmodel import Session

    from app.db import get_engine, init_db
    from app.services import scheduling
    from app.settings import get_settings
    from worker.celery_app import configure

    try:
        labels = parse_gpus(gpus)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    settings = get_settings()
    if not settings.redis_url:
        raise SystemExit("DISTILL_REDIS_URL is not set: point it at the team's Redis, or use `distill up`")
    host = worker_name(labels, name)
    os.environ[HOST_ENV] = host
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # each run's child sets its own GPUs
    init_db()
    app = configure(settings.redis_url)
    with Session(get_engine()) as session:
        scheduling.announce_host(session=session, name=host, labels=labels, queue=host_queue(host))
    stop = threading.Event()
    beat = threading.Thread(target=_host_heartbeat, args=(host, labels, stop), name="host-heartbeat", daemon=True)
    beat.start()

    from celery.signals import worker_ready, worker_shutting_down

    @worker_ready.connect(weak=False)
    def _ready(**_) -> None:  # place waiting runs now that this host listens
        with contextlib.suppress(Exception), Session(get_engine()) as session:
            scheduling.schedule(session=session)

    @worker_shutting_down.connect(weak=False)
    def _shutting_down(**_) -> None:  # take no new run while the running ones hand themselves back
        stop.set()
        with contextlib.suppress(Exception), Session(get_engine()) as session:
            scheduling.stop_host(session=session, name=host)

    try:
        app.worker_main(worker_argv(labels, host, loglevel))
    finally:
        stop.set()
        with contextlib.suppress(Exception), Session(get_engine()) as session:
            scheduling.stop_host(session=session, name=host)


def _host_heartbeat(host: str, labels: list[str], stop: threading.Event) -> None:
    """Every DISTILL_HEARTBEAT_SECONDS: the host is alive (announce again if its row was stopped or removed)."""
    import logging

    from sqlmodel import Session

    from app.db import get_engine
    from app.services import scheduling
    from app.settings import get_settings
    from worker.celery_app import host_queue as queue_of

    log = logging.getLogger(__name__)
    while not stop.wait(get_settings().heartbeat_seconds):
        try:
            with Session(get_engine()) as session:
                if not scheduling.host_heartbeat(session=session, name=host) and not stop.is_set():
                    scheduling.announce_host(session=session, name=host, labels=labels, queue=queue_of(host))
        except Exception as exc:  # a database hiccup must not end the heartbeat
            log.warning("host heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)
