"""The GPU task: claim a run, train it with the engine, record how it ended.

Runs in a fresh prefork child per run (max_tasks_per_child=1). torch is imported here, inside the
task, so the worker's parent process never initialises CUDA before forking; the GPU is the one
CUDA_VISIBLE_DEVICES names (set by `distill worker --gpu N`).
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
import uuid

from celery.utils.log import get_task_logger
from sqlmodel import Session

from app.db import get_engine
from app.events import redis_client
from app.models import Experiment, RunStatus
from app.paths_policy import check_spec_policy
from app.queue import enqueue_run
from app.run_state import claim_run, finish_run, release_run
from app.services.errors import QueueUnavailableError
from app.settings import get_settings
from worker.celery_app import RUN_TASK, celery_app
from worker.reporter import DatabaseReporter

log = get_task_logger(__name__)  # configured by the worker (the root logger is left alone)

ERROR_TAIL_LINES = 20
MAX_ERROR_CHARS = 8000


@celery_app.task(name=RUN_TASK, bind=True, ignore_result=True)
def run_experiment(self, run_id: int) -> str:
    """Execute run `run_id` once; returns how it ended (for the worker log)."""
    settings = get_settings()
    engine = get_engine()
    engine.dispose(close=False)  # connections inherited through the fork belong to the parent
    worker_name = self.request.hostname or f"pid{os.getpid()}"
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "") or "cpu"
    # a suffix: ids can repeat (SQLite reuses a deleted last id) and a fresh run must never resume a stranger's checkpoint
    default_dir = settings.effective_runs_dir / f"{run_id}-{uuid.uuid4().hex[:8]}"
    with Session(engine) as session:
        run = claim_run(session=session, run_id=run_id, worker=worker_name, gpu=gpu, output_dir=str(default_dir))
        if run is None:
            log.info("run %s is not queued (cancelled, or already taken): nothing to do", run_id)
            return "skipped"
        experiment = session.get(Experiment, run.experiment_id)
        spec_data, attempt, output_dir = dict(experiment.spec), run.attempt, run.output_dir

    redis = redis_client() if settings.redis_url else None
    reporter = None
    try:
        from core_distill.spec import DistillSpec

        spec = DistillSpec.parse(spec_data)
        # again here, before the engine loads or connects to anything: the server's allowed paths and
        # teacher URLs (DISTILL_ALLOWED_TEACHER_URLS) may have changed since the run was queued
        check_spec_policy(spec)
        reporter = DatabaseReporter(
            run_id,
            engine=engine,
            redis_client=redis,
            attempt=attempt,
            save_every=spec.save_every,
            max_steps=spec.max_steps,
        )
        _stop_on_sigterm(reporter)
        from core_distill.train import run as train

        log.info("run %s attempt %s: training into %s", run_id, attempt, output_dir)
        result = train(spec, output_dir=output_dir, reporter=reporter, resume=True, progress=False)
        reporter.close()
    except BaseException as exc:  # noqa: BLE001  (record every way a run can end, then let Celery log it)
        if reporter is not None:
            _close_quietly(reporter)
        with Session(engine) as session:
            finish_run(
                session=session, run_id=run_id, status=RunStatus.failed, error=describe_error(exc), attempt=attempt
            )
        log.exception("run %s failed", run_id)
        return "failed"

    with Session(engine) as session:
        if not result.stopped:
            finish_run(session=session, run_id=run_id, status=RunStatus.succeeded, model_dir=str(result.model_dir),
                       last_step=result.step, attempt=attempt)  # fmt: skip
            return "succeeded"
        if reporter.interrupted and not reporter.cancel_requested:
            # the worker is shutting down: hand the run back to the queue, it resumes from this checkpoint
            if release_run(session=session, run_id=run_id, attempt=attempt, last_step=result.step) is not None:
                try:
                    enqueue_run(session=session, run_id=run_id)
                except QueueUnavailableError as exc:  # still queued in the database: the reconciler re-publishes it
                    log.warning("run %s handed back but not re-published: %s", run_id, exc)
            return "requeued"
        # cancelled by the user, or the row left our hands (reaped, re-queued): a no-op in the latter case
        finish_run(session=session, run_id=run_id, status=RunStatus.cancelled, last_step=result.step, attempt=attempt,
                   error=f"cancelled at step {result.step} (checkpoint kept; resume to continue)")  # fmt: skip
        return "cancelled"


def describe_error(exc: BaseException) -> str:
    """Exception type and message first (what the run page shows), then the traceback's tail."""
    from core_distill.spec import SpecError

    if isinstance(exc, SpecError):
        head = "SpecError: " + "; ".join(f"{field}: {msg}" for field, msg in exc.errors.items())
    else:
        head = f"{type(exc).__name__}: {exc}"
    tail = "".join(traceback.format_exception(exc)).splitlines()[-ERROR_TAIL_LINES:]
    text = head + "\n\n" + "\n".join(tail)
    return text[:MAX_ERROR_CHARS]


def _stop_on_sigterm(reporter: DatabaseReporter) -> None:
    """SIGTERM (worker shutdown) -> checkpoint at the next step and stop, instead of dying mid-step."""

    def handler(signum, frame) -> None:
        reporter.interrupted = True

    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        signal.signal(signal.SIGTERM, handler)


def _close_quietly(reporter: DatabaseReporter) -> None:
    try:
        reporter.close()
    except Exception:
        log.exception("run %s: final metrics flush failed", reporter.run_id)
