"""The engine's Reporter inside a worker: metric points into the database, live events onto Redis.

The training loop calls `log` once per step. Points are buffered and written in batches by a
background thread (at most `metrics_flush_seconds` after they were logged), then the same batch
is XADDed to the run's event stream. The same thread touches the run's heartbeat.

Exactly-once metrics across a crash: the engine checkpoints right after `should_stop()` on a
checkpoint step, so `should_stop()` first flushes synchronously on those steps. Every step up to
a checkpoint is therefore stored before the checkpoint exists, and `resumed(step)` deletes what a
killed attempt stored after it.

While the database is away, training goes on: `should_stop()` answers the last flag it read, and points
and samples wait in memory until a write succeeds (the writer backs off meanwhile). A write deletes the
batch's (step, key) pairs before inserting them, in one transaction, so a batch whose commit was cut off
is written again without doubling a point. A worker killed during an outage loses what it held, and a
checkpoint written during one may be ahead of the stored metrics.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import redis
from sqlalchemy import delete, insert, tuple_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app import events
from app.db_retry import Reachability, is_db_unavailable, with_db_retry
from app.models import EvalSamples, MetricPoint, Run, RunEvent, RunEventKind, RunStatus
from app.run_state import heartbeat
from app.settings import get_settings

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.5
WRITE_CHUNK_POINTS = 400  # points per transaction: their (step, key) pairs stay far below SQLite's variable limit


class DatabaseReporter:
    """Implements core_distill.reporting.Reporter for run `run_id` (attempt `attempt`)."""

    def __init__(
        self,
        run_id: int,
        *,
        engine: Engine,
        redis_client: redis.Redis | None = None,
        attempt: int | None = None,
        save_every: int = 0,
        max_steps: int = 0,
        flush_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
    ):
        settings = get_settings()
        self.run_id = run_id
        self.engine = engine
        self.redis = redis_client
        self.attempt = attempt
        self.save_every = save_every
        self.max_steps = max_steps
        self.flush_seconds = flush_seconds or settings.metrics_flush_seconds
        self.heartbeat_seconds = heartbeat_seconds or settings.heartbeat_seconds

        self.last_step = 0  # last step logged by the engine
        self.cancel_requested = False  # the user's cancel (or the row left this attempt's hands)
        self.interrupted = False  # the worker is shutting down (SIGTERM): checkpoint and stop
        self._buffer: list[dict[str, Any]] = []
        self._unwritten: list[dict[str, Any]] = []  # taken from the buffer, not yet committed (under flush_lock)
        self._unwritten_samples: list[dict[str, Any]] = []  # EvalSamples rows not yet committed (under flush_lock)
        self.reach = Reachability(f"run {run_id} reporter")
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time, so batches reach the stream in order
        self._next_cancel_poll = 0.0
        self._dropped_nonfinite = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, name=f"reporter-run-{run_id}", daemon=True)
        self._thread.start()

    # --- the Reporter protocol ------------------------------------------------------------------
    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        points = []
        for key, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):  # NaN/inf fit neither SQLite REAL columns nor JSON
                self._dropped_nonfinite += 1
                if self._dropped_nonfinite <= 5:
                    log.warning("run %s step %s: %s is %s, not stored", self.run_id, step, key, value)
                continue
            points.append({"run_id": self.run_id, "step": step, "key": key[:128], "value": value, "wall_time": now})
        with self._buffer_lock:
            self._buffer.extend(points)
            self.last_step = max(self.last_step, step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        row = {"run_id": self.run_id, "step": step, "wall_time": time.time(), "samples": _finite(samples)}
        with self._flush_lock:
            self._unwritten_samples.append(row)
        self.flush()  # written after the step's metrics, as on the stream

    def should_stop(self) -> bool:
        if self._is_checkpoint_step(self.last_step):
            self.flush()  # the checkpoint about to be written must never be ahead of the stored metrics
        now = time.monotonic()
        if now >= self._next_cancel_poll and not self.cancel_requested and self.reach.due():
            self._next_cancel_poll = now + CANCEL_POLL_SECONDS
            try:
                self.cancel_requested = self._read_stop_flag()
                self.reach.reached()
            except Exception as exc:
                if not is_db_unavailable(exc):
                    raise
                self.reach.failed(exc)  # train on with the last flag read
        stop = self.cancel_requested or self.interrupted
        if stop:
            self.flush()  # the engine checkpoints this step next
        return stop

    def resumed(self, step: int) -> None:
        """Forget what a killed attempt stored after the checkpoint it resumes from."""
        self.flush()

        def forget() -> None:
            with Session(self.engine) as session:
                session.execute(delete(MetricPoint).where(MetricPoint.run_id == self.run_id, MetricPoint.step > step))
                session.execute(delete(EvalSamples).where(EvalSamples.run_id == self.run_id, EvalSamples.step > step))
                session.execute(update(Run).where(Run.id == self.run_id).values(last_step=step))
                session.commit()

        with_db_retry(forget, what=f"run {self.run_id}: forgetting the steps after {step}")
        self.last_step = step
        # the engine calls this at every attempt's start; a run's first attempt starts, it resumes nothing
        if step == 0 and (self.attempt or 1) == 1:
            self._publish("started", {"attempt": 1, "step": 0})
        else:
            self._publish("resumed", {"step": step, "attempt": self.attempt})

    def header(self, lines: list[str]) -> None:
        """The engine's header of this attempt, as a `header` event of the run's history (the run views show
        it); not repeated when a resumed attempt says the same as the last one."""
        note = "\n".join(lines)[:500]

        def write() -> None:
            with Session(self.engine) as session:
                last = session.execute(
                    select(RunEvent.note).where(RunEvent.run_id == self.run_id, RunEvent.kind == RunEventKind.header)
                    .order_by(col(RunEvent.id).desc()).limit(1)
                ).scalar()  # fmt: skip
                run = session.get(Run, self.run_id)
                if last == note or run is None:
                    return
                session.add(RunEvent(run_id=self.run_id, kind=RunEventKind.header, attempt=run.attempt,
                                     step=run.last_step, note=note))  # fmt: skip
                session.commit()

        with_db_retry(write, what=f"run {self.run_id}: its header")

    def warning(self, text: str) -> None:
        """The engine's warning about the run's course, as a `warning` event of the run's history."""

        def write() -> None:
            with Session(self.engine) as session:
                run = session.get(Run, self.run_id)
                if run is None:
                    return
                session.add(RunEvent(run_id=self.run_id, kind=RunEventKind.warning, attempt=run.attempt,
                                     step=run.last_step, note=text[:500]))  # fmt: skip
                session.commit()

        with_db_retry(write, what=f"run {self.run_id}: a warning")

    # --- batching ---------------------------------------------------------------------------------
    def flush(self) -> int:
        """Write buffered points (with Run.last_step) and samples, then publish them; the points written.

        While the database is unavailable nothing is lost: what was not committed stays for the next
        flush, tried once the backoff delay has passed. Other errors are raised."""
        with self._flush_lock:
            self._take_buffer()
            if not self.reach.due():
                return 0
            try:
                written = self._write_unwritten()
            except Exception as exc:
                if not is_db_unavailable(exc):
                    raise
                self.reach.failed(exc)
                return 0
            self.reach.reached()
            return written

    def close(self) -> None:
        """Stop the background thread and write what is left (call once the engine returns or raises),
        waiting up to `db_retry_seconds` for an unavailable database."""
        self._stop.set()
        self._thread.join(timeout=30)

        def write_all() -> int:
            with self._flush_lock:
                self._take_buffer()
                self._beat()  # first: once the database is back the reaper sees the run alive at once
                return self._write_unwritten()

        with_db_retry(write_all, what=f"run {self.run_id}: its last metrics")
        self.reach.reached()

    # --- writing ------------------------------------------------------------------------------------
    def _take_buffer(self) -> None:
        with self._buffer_lock:
            self._unwritten += self._buffer
            self._buffer = []

    def _write_unwritten(self) -> int:
        """Commit the unwritten points in chunks, then the samples, publishing each once committed."""
        written = 0
        while self._unwritten:
            chunk = self._unwritten[:WRITE_CHUNK_POINTS]
            self._write_points(chunk)
            del self._unwritten[: len(chunk)]
            written += len(chunk)
            self._publish(
                "metrics", {"points": [{k: p[k] for k in ("step", "key", "value", "wall_time")} for p in chunk]}
            )
        while self._unwritten_samples:
            row = self._unwritten_samples[0]
            with Session(self.engine) as session:  # one evaluation per step: its row replaces any earlier copy
                session.execute(
                    delete(EvalSamples).where(EvalSamples.run_id == self.run_id, EvalSamples.step == row["step"])
                )
                session.add(EvalSamples(**row))
                session.commit()
            del self._unwritten_samples[0]
            self._publish("samples", {"step": row["step"]})
        return written

    def _write_points(self, points: list[dict[str, Any]]) -> None:
        """One transaction: the points' (step, key) pairs deleted, the points inserted, Run.last_step raised.
        A chunk written twice (its first commit's outcome unknown) is therefore stored once."""
        pairs = sorted({(p["step"], p["key"]) for p in points})
        last_step = max(p["step"] for p in points)
        with Session(self.engine) as session:
            session.execute(
                delete(MetricPoint).where(
                    MetricPoint.run_id == self.run_id, tuple_(MetricPoint.step, MetricPoint.key).in_(pairs)
                )
            )
            session.execute(insert(MetricPoint), points)
            session.execute(
                update(Run).where(Run.id == self.run_id, Run.last_step < last_step).values(last_step=last_step)
            )
            session.commit()

    # --- internals --------------------------------------------------------------------------------
    def _background(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_seconds
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
                if time.monotonic() >= next_beat and self.reach.due():
                    next_beat = time.monotonic() + self.heartbeat_seconds
                    self._beat()
                    self.reach.reached()
            except Exception as exc:  # keep beating: a transient DB or Redis error must not end the run
                if not self.reach.noted(exc):  # an outage is logged once
                    log.exception("run %s: background flush/heartbeat failed; retrying", self.run_id)

    def _beat(self) -> None:
        with Session(self.engine) as session:
            stop = heartbeat(session=session, run_id=self.run_id, last_step=None, attempt=self.attempt)
        self.cancel_requested = self.cancel_requested or stop

    def _read_stop_flag(self) -> bool:
        with Session(self.engine) as session:
            row = session.execute(
                select(Run.cancel_requested, Run.status, Run.attempt).where(Run.id == self.run_id)
            ).one_or_none()
        if row is None:
            return True
        cancel, status, attempt = row
        return bool(cancel) or status != RunStatus.running or (self.attempt is not None and attempt != self.attempt)

    def _is_checkpoint_step(self, step: int) -> bool:
        if step <= 0:
            return False
        return step == self.max_steps or bool(self.save_every and step % self.save_every == 0)

    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        if self.redis is None:
            return
        try:
            events.publish(self.redis, self.run_id, kind, data)
        except redis.RedisError as exc:  # the DB has it; live views re-read on reconnect
            log.warning("run %s: could not publish %s event: %s", self.run_id, kind, exc)


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (PostgreSQL JSON rejects NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
