"""The Celery app. Every worker host reads the shared `gpu` queue and its own `gpu.<host>` queue,
with one pool process per GPU.

A run's first message goes to `gpu` (a worker taking it runs a scheduling pass); once the
scheduler has booked GPUs for it on a host, it is published on that host's queue.

The run's database row is the state machine; the message only carries the run id. Messages are
acknowledged early (Celery's default): a long run is never re-delivered by Redis's visibility
timeout, and a run whose worker died is found by the reaper (heartbeat) and marked `lost`.
"""

from __future__ import annotations

from celery import Celery

from app.settings import get_settings

RUN_TASK = "worker.tasks.run_experiment"
GPU_QUEUE = "gpu"

celery_app = Celery("distill", include=["worker.tasks"])
celery_app.conf.update(
    task_acks_late=False,
    worker_prefetch_multiplier=1,  # one message per process: no run waits behind a busy one
    # Redis only (Celery 5.6+): take a message only when the child is free. With early ack, a message
    # prefetched behind a running run would otherwise be lost if that worker is killed.
    worker_disable_prefetch=True,
    worker_max_tasks_per_child=1,  # a fresh child per run: GPU memory and CUDA state freed
    task_routes={RUN_TASK: {"queue": GPU_QUEUE}},
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def configure(broker_url: str | None = None) -> Celery:
    """Point the app at the broker named by the settings (read late: `distill up` sets it at start)."""
    celery_app.conf.broker_url = broker_url or get_settings().redis_url
    return celery_app


def host_queue(host: str) -> str:
    """The queue only worker host `host` reads: runs booked on its GPUs (app.services.booking)."""
    return f"{GPU_QUEUE}.{host}"


def enqueue_run(run_id: int, queue: str | None = None) -> str:
    """Queue a run on `queue` (default: the shared `gpu` queue); returns the Celery task id.

    A connection per message, to the broker the settings name now (`distill up` picks Redis's port at
    start, tests move it): no pooled connection to an old broker is ever reused. Runs are queued
    rarely, so the extra connect costs nothing that matters.
    """
    with celery_app.connection_for_write(get_settings().redis_url) as connection:
        return celery_app.send_task(RUN_TASK, args=[run_id], queue=queue or GPU_QUEUE, connection=connection).id
