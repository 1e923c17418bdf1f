"""The GPU task: take a run booked on this host's GPUs, train it with the engine, record how it ended.

A message on the shared `gpu` queue is a run waiting for GPUs: taking it (app.services.dispatch.take)
runs a scheduling pass and the run trains at once if that pass booked it here. A message on this
host's own queue is a run already booked here. Either way the claim is guarded by the host. A take
the database refuses (locked, away) claims nothing and logs one line; the reconciler re-publishes.

Runs in a fresh prefork child per run (max_tasks_per_child=1). torch is imported here, inside the
task, after CUDA_VISIBLE_DEVICES is set to the run's booked GPUs, so CUDA is never initialised in
the worker's parent. A 1-GPU run trains in this child; a run of N GPUs is launched as N processes
by the torch launcher (worker/rank_main.py) in a process group of its own, supervised from here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

from celery.utils.log import get_task_logger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from app.db import get_engine
from app.db_retry import first_line, with_db_retry
from app.events import redis_client
from app.lifeline import die_with_parent
from app.models import Run, RunStatus
from app.paths_policy import check_spec_policy
from app.run_state import finish_run, mark_lost
from app.services import booking, dispatch
from app.settings import get_settings
from worker.celery_app import RUN_TASK, celery_app
from worker.launch import CPU_LABEL, HOST_ENV
from worker.reporter import DatabaseReporter

log = get_task_logger(__name__)  # configured by the worker (the root logger is left alone)

ERROR_TAIL_LINES = 20
MAX_ERROR_CHARS = 8000
GANG_STOP_GRACE_SECONDS = 30.0  # how long ranks get to stop once the run left this attempt's hands


@celery_app.task(name=RUN_TASK, bind=True, ignore_result=True)
def run_experiment(self, run_id: int) -> str:
    """Execute run `run_id` once if it is (or gets) booked on this host; returns how it ended (for the log)."""
    settings = get_settings()
    engine = get_engine()  # a fresh pool: launch.py disposed the inherited one at worker_process_init
    host = os.environ.get(HOST_ENV) or self.request.hostname or f"pid{os.getpid()}"
    # a suffix: ids can repeat (SQLite reuses a deleted last id) and a fresh run must never resume a stranger's checkpoint
    default_dir = settings.effective_runs_dir / f"{run_id}-{uuid.uuid4().hex[:8]}"
    try:
        with Session(engine) as session:
            taken = dispatch.take(session=session, run_id=run_id, host=host, message_id=self.request.id,
                                  output_dir=str(default_dir))  # fmt: skip
    except DBAPIError as exc:  # nothing claimed, no folder made: the reconciler publishes the run again
        log.warning("run %s not taken: the database did not answer (%s)", run_id, first_line(exc))
        return "not taken"
    if isinstance(taken, str):
        log.info("run %s: %s", run_id, taken)
        return taken

    # the booked GPUs, before anything imports torch (CPU slot: none)
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if taken.labels == [CPU_LABEL] else ",".join(taken.labels)
    try:
        if taken.gpus > 1:
            outcome = run_gang(run_id, attempt=taken.attempt, nproc=taken.gpus, output_dir=taken.output_dir,
                               engine=engine, host=host)  # fmt: skip
        else:
            outcome = run_in_process(run_id, attempt=taken.attempt, spec_data=taken.spec,
                                     output_dir=taken.output_dir, engine=engine, host=host)  # fmt: skip
    finally:
        with contextlib.suppress(Exception), Session(engine) as session:
            dispatch.ended(session=session)  # its GPUs are free now: book the next runs
    return outcome


# --- one process -----------------------------------------------------------------------------------
def run_in_process(run_id: int, *, attempt: int, spec_data: dict, output_dir: str, engine: Engine, host: str) -> str:
    """Train a 1-GPU run in this process and record how it ended."""
    reporter = None
    try:
        spec, reporter = prepare(run_id, attempt=attempt, spec_data=spec_data, engine=engine)
        _on_sigterm(lambda: setattr(reporter, "interrupted", True))
        from worker.trackers import train_tracked

        quiet_model_loading()
        log.info("run %s attempt %s: training into %s", run_id, attempt, output_dir)
        result = train_tracked(spec, run_id=run_id, output_dir=output_dir, reporter=reporter, resume=True, progress=False)
        after_training(spec, result, reporter, run_id=run_id, output_dir=output_dir, engine=engine)
    except BaseException as exc:  # noqa: BLE001  (record every way a run can end, then let Celery log it)
        if reporter is not None:
            close_quietly(reporter)
        error = describe_error(exc)

        def record_failure() -> None:
            with Session(engine) as session:
                finish_run(session=session, run_id=run_id, status=RunStatus.failed, error=error, attempt=attempt)

        with_db_retry(record_failure, what=f"run {run_id}: recording its failure")
        log.exception("run %s failed", run_id)
        return "failed"
    return record_outcome(run_id, attempt=attempt, result=result, reporter=reporter, engine=engine, host=host)


def after_training(spec, result, reporter: DatabaseReporter, *, run_id: int, output_dir: str, engine: Engine) -> None:
    """What a service run does once the engine returned, before its outcome is recorded: the spec's push_to_hub
    (a failure is a warning on the run's page and final/ stays; before `close`, so the heartbeat goes on through
    a long upload), the reporter's last flush, then the run's metrics from the database into its folder
    (metrics.jsonl, metrics.parquet) beside final/, as a CLI run leaves them."""
    from core_distill.hub import push_run_model

    push_run_model(spec, result.model_dir, reporter)
    reporter.close()
    try:
        from app.services.metrics_export import export_to_run_folder

        export_to_run_folder(run_id, output_dir, engine)
    except Exception as exc:  # noqa: BLE001  (the database keeps them; the API exports them too)
        log.warning("run %s: metrics not written to %s (%s)", run_id, output_dir, first_line(exc))


def quiet_model_loading() -> None:
    """No transformers or hub progress bars in this child: Celery turns its stderr into log lines (one
    WARNING/ForkPoolWorker-N per bar refresh), and the run's own progress is on the dashboard."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


def prepare(run_id: int, *, attempt: int, spec_data: dict, engine: Engine):
    """(spec, reporter) for the process that reports: the spec parsed and the server's policy checked again
    here, before the engine loads or connects to anything (paths and teacher URLs may have changed)."""
    from core_distill.spec import DistillSpec

    spec = DistillSpec.parse(spec_data)
    check_spec_policy(spec)
    settings = get_settings()
    reporter = DatabaseReporter(
        run_id,
        engine=engine,
        redis_client=redis_client() if settings.redis_url else None,
        attempt=attempt,
        save_every=spec.save_every,
        max_steps=spec.max_steps,
    )
    return spec, reporter


def record_outcome(run_id: int, *, attempt: int, result, reporter: DatabaseReporter, engine: Engine, host: str) -> str:
    """The engine returned: succeeded, handed back to the queue (worker shutdown) or cancelled. Recorded once
    the database answers (up to `db_retry_seconds`): each transition is guarded, so a retry after a commit
    whose outcome was unknown changes nothing."""

    def record() -> str:
        return _record_outcome(run_id, attempt=attempt, result=result, reporter=reporter, engine=engine, host=host)

    return with_db_retry(record, what=f"run {run_id}: recording how it ended")


def _record_outcome(run_id: int, *, attempt: int, result, reporter: DatabaseReporter, engine: Engine, host: str) -> str:
    with Session(engine) as session:
        if not result.stopped:
            finish_run(session=session, run_id=run_id, status=RunStatus.succeeded, model_dir=str(result.model_dir),
                       last_step=result.step, attempt=attempt)  # fmt: skip
            return "succeeded"
        if reporter.interrupted and not reporter.cancel_requested:
            # the worker is shutting down: hand the run back to the queue, it resumes from this checkpoint
            dispatch.hand_back(session=session, run_id=run_id, attempt=attempt, last_step=result.step, host=host)
            return "requeued"
        # cancelled by the user, or the row left our hands (reaped, re-queued): a no-op in the latter case
        finish_run(session=session, run_id=run_id, status=RunStatus.cancelled, last_step=result.step, attempt=attempt,
                   error=f"cancelled at step {result.step} (checkpoint kept; resume to continue)")  # fmt: skip
        return "cancelled"


# --- several processes (gang) ----------------------------------------------------------------------
def run_gang(run_id: int, *, attempt: int, nproc: int, output_dir: str, engine: Engine, host: str) -> str:
    """Launch the run's `nproc` ranks with the torch launcher in a process group of their own and wait.

    Rank 0 reports and records success, cancel or hand-back itself (worker/rank_main.py). When the
    group ends without that, the run is `failed` with the error of the rank that raised first, or
    `lost` when no rank raised (a rank was killed). The group is killed whole at the end, when this
    worker is killed (PR_SET_PDEATHSIG), and when the run leaves this attempt's hands (reaped as lost)
    while ranks linger: no rank is ever left holding a GPU.
    """
    from core_distill.distributed import launcher_argv

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    error_dir = Path(tempfile.mkdtemp(prefix=f"distill-run{run_id}-ranks-"))
    env = dict(os.environ, DISTILL_RANK_ERROR_DIR=str(error_dir), PYTHONUNBUFFERED="1")
    argv = launcher_argv(nproc, "worker.rank_main", [str(run_id), "--attempt", str(attempt)])
    log_path = folder / f"launcher-attempt{attempt}.log"
    log.info("run %s attempt %s: %d processes on GPUs %s, log %s", run_id, attempt, nproc,
             env.get("CUDA_VISIBLE_DEVICES") or "cpu", log_path)  # fmt: skip
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip
    interrupted = threading.Event()
    _on_sigterm(interrupted.set)
    ranks: set[int] = set()
    code = _supervise(process, run_id=run_id, attempt=attempt, engine=engine, host=host, interrupted=interrupted,
                      ranks=ranks)  # fmt: skip
    for pid in ranks:  # stragglers the launcher left behind (pdeathsig ends them too), if any
        with contextlib.suppress(OSError):
            if b"worker.rank_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
    outcome = _settle_gang(run_id, attempt=attempt, nproc=nproc, code=code, error_dir=error_dir,
                           log_path=log_path, engine=engine)  # fmt: skip
    for path in error_dir.glob("*"):
        path.unlink()
    error_dir.rmdir()
    return outcome


def _supervise(process: subprocess.Popen, *, run_id: int, attempt: int, engine: Engine, host: str,
               interrupted: threading.Event, ranks: set[int]) -> int:  # fmt: skip
    """Wait for the launcher (noting its ranks' pids in `ranks`); forward a shutdown to the ranks; end them
    all if the run is no longer ours."""
    check_every = max(0.5, get_settings().heartbeat_seconds)
    next_check, gone_since, forwarded = 0.0, None, False
    while (code := process.poll()) is None:
        time.sleep(0.2)
        if interrupted.is_set() and not forwarded:
            forwarded = True
            with contextlib.suppress(Exception), Session(engine) as session:
                booking.stop_host(session=session, name=host)  # take no new run here
            # the ranks, not the launcher: rank 0 checkpoints and hands the run back, the others follow it
            for pid in descendants(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        now = time.monotonic()
        if now < next_check:
            continue
        next_check = now + check_every
        ranks.update(descendants(process.pid))
        try:
            with Session(engine) as session:
                row = session.get(Run, run_id)
                ours = row is not None and row.status == RunStatus.running and row.attempt == attempt
        except Exception:  # a database hiccup: look again next time
            continue
        gone_since = None if ours else (gone_since or now)
        if gone_since is not None and now - gone_since > GANG_STOP_GRACE_SECONDS:
            log.warning("run %s left attempt %s's hands but its processes still run: killing them", run_id, attempt)
            kill_tree(process.pid)
    return code


def _settle_gang(run_id: int, *, attempt: int, nproc: int, code: int, error_dir: Path, log_path: Path,
                 engine: Engine) -> str:  # fmt: skip
    """How the group ended, when rank 0 did not record it (the run is still running for this attempt)."""
    with Session(engine) as session:
        row = session.get(Run, run_id)
        if row is None or row.status != RunStatus.running or row.attempt != attempt:
            return str(row.status) if row is not None else "skipped"
        launcher_log = log_path.read_text(errors="replace") if log_path.exists() else ""
        root_rank, root_code = root_cause(launcher_log)
        errors = sorted(error_dir.glob("rank*.txt"), key=lambda p: p.stat().st_mtime_ns)
        by_rank = {p.stem.removeprefix("rank"): p for p in errors}
        killed = root_code is not None and root_code < 0
        if errors and not killed:  # the rank that raised first is the cause; the others died of its absence
            rank = root_rank if root_rank in by_rank else errors[0].stem.removeprefix("rank")
            text = f"rank {rank} of {nproc}: " + by_rank[rank].read_text(errors="replace")
            finish_run(session=session, run_id=run_id, status=RunStatus.failed, error=text[:MAX_ERROR_CHARS],
                       attempt=attempt)  # fmt: skip
            return "failed"
        who = f"rank {root_rank} was killed (exit code {root_code})" if killed else "no rank raised an error"
        tail = "\n".join(launcher_log.splitlines()[-ERROR_TAIL_LINES:])
        error = (f"lost: the run's {nproc} processes stopped (launcher exit code {code}): {who}; resume the run to "
                 f"continue from its last checkpoint\n\n{tail}")  # fmt: skip
        mark_lost(session=session, run_id=run_id, attempt=attempt, error=error[:MAX_ERROR_CHARS])
        return "lost"


def root_cause(launcher_log: str) -> tuple[str | None, int | None]:
    """(rank, exit code) of torchrun's "Root Cause (first observed failure)" block; (None, None) without one.
    A negative exit code is a signal: the rank was killed rather than raising."""
    _, found, block = launcher_log.rpartition("Root Cause (first observed failure):")
    rank = re.search(r"rank\s*:\s*(\d+)", block)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", block)
    if not found or rank is None or code is None:
        return None, None
    return rank.group(1), int(code.group(1))


def descendants(pid: int) -> list[int]:
    """Pids of every process below `pid` (the launcher's ranks and theirs), from /proc. Not the process
    group: torchrun starts each rank in a session of its own."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # stat: pid (comm) state ppid ...
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL the launcher's group and every process below it (no rank left holding a GPU)."""
    victims = descendants(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)


# --- helpers ----------------------------------------------------------------------------------------
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


def _on_sigterm(action) -> None:
    """SIGTERM (worker shutdown) -> `action` (checkpoint at the next step and stop, instead of dying mid-step)."""

    def handler(signum, frame) -> None:
        action()

    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        signal.signal(signal.SIGTERM, handler)


def close_quietly(reporter: DatabaseReporter) -> None:
    try:
        reporter.close()
    except Exception:
        log.exception("run %s: final metrics flush failed", reporter.run_id)
