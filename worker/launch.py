"""Starting a worker host: `distill worker [--gpus 0,1]` runs one Celery worker for this machine's GPUs.

    celery -A worker.celery_app worker -Q gpu,gpu.<name> -c <GPUs> -P prefork \
        --max-tasks-per-child 1 -n <name> -E

The host announces itself and its GPUs in the database (app.services.booking) and keeps a
heartbeat there from a process of its own (worker/host_beat.py); the scheduler books runs on its GPUs
and publishes them on `gpu.<name>` (app.services.dispatch). One pool process per GPU: a run of N GPUs occupies one pool process
(which launches its N ranks), so there are never more runs than pool processes. Prefork, not the
solo pool: the parent keeps answering the broker while runs train in children, and each run gets
a fresh child (GPU memory freed). The parent never touches CUDA; each child sets
CUDA_VISIBLE_DEVICES to the GPUs booked for its run.

The pool processes die with the worker even when it is SIGKILLed: Celery sets PR_SET_PDEATHSIG
(SIGKILL) in each (celery.concurrency.prefork.process_initializer; tests/worker/test_up.py checks it).

No fork with live connections or threads: the parent runs no thread that touches the database (the
heartbeat is a process), closes its pooled connections after each use of its own (`_parent_session`),
and each child drops whatever pool it inherited at `worker_process_init`, before its first query.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from worker.celery_app import GPU_QUEUE, host_queue

if TYPE_CHECKING:
    from sqlmodel import Session

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


def worker_argv(labels: list[str], name: str, loglevel: str = "INFO", quiet: bool = False) -> list[str]:
    """The argument list of `celery worker` for one host (without the program name); `quiet`: no start banner."""
    return ["--quiet"] * quiet + [
        "worker", "-Q", f"{GPU_QUEUE},{host_queue(name)}", "-c", str(len(labels)), "-P", "prefork",
        "--max-tasks-per-child", "1", "-n", name, "-E", "--loglevel", loglevel, "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def run_worker(gpus: str | None = None, name: str | None = None, loglevel: str = "INFO", quiet: bool = False) -> None:
    """Become the Celery worker of this host's GPUs (this process never touches CUDA; the tasks' children do)."""
    from celery.signals import worker_process_init, worker_ready, worker_shutting_down

    from app.db import init_db
    from app.services import booking, dispatch
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
    with _parent_session() as session:
        booking.announce_host(session=session, name=host, labels=labels, queue=host_queue(host))
    beat = start_host_heartbeat(host, labels)

    @worker_process_init.connect(weak=False)
    def _fresh_pool(**_) -> None:  # in each child: the parent's pool is not ours (SQLAlchemy: dispose(close=False))
        from app.db import get_engine

        get_engine().dispose(close=False)

    @worker_ready.connect(weak=False)
    def _ready(**_) -> None:  # place waiting runs now that this host listens
        with contextlib.suppress(Exception), _parent_session() as session:
            dispatch.dispatch_waiting(session=session)

    @worker_shutting_down.connect(weak=False)
    def _shutting_down(**_) -> None:  # take no new run while the running ones hand themselves back
        stop_host_heartbeat(beat)
        with contextlib.suppress(Exception), _parent_session() as session:
            booking.stop_host(session=session, name=host)

    try:
        app.worker_main(worker_argv(labels, host, loglevel, quiet))
    finally:
        stop_host_heartbeat(beat)
        with contextlib.suppress(Exception), _parent_session() as session:
            booking.stop_host(session=session, name=host)


@contextlib.contextmanager
def _parent_session() -> Iterator[Session]:
    """A session of the worker's parent; its connections are closed afterwards, so no pool child the parent
    forks later inherits an open SQLite or PostgreSQL connection."""
    from sqlmodel import Session

    from app.db import get_engine

    engine = get_engine()
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def start_host_heartbeat(host: str, labels: list[str]) -> subprocess.Popen:
    """The host heartbeat (worker/host_beat.py) as a process of its own; it ends with this one."""
    argv = [sys.executable, "-m", "worker.host_beat", host, ",".join(labels), str(os.getpid())]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def stop_host_heartbeat(beat: subprocess.Popen) -> None:
    """SIGTERM the heartbeat and wait for it, so it cannot announce the host again after stop_host."""
    if beat.poll() is None:
        beat.terminate()
        try:
            beat.wait(10)
        except subprocess.TimeoutExpired:
            beat.kill()
            beat.wait()
