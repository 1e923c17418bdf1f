"""The engine's Reporter inside a worker: metric points into the database, live events onto Redis.

The training loop calls `log` once per step. Points are buffered and written in batches by a
background thread (at most `metrics_flush_seconds` after they were logged), then the same batch
is XADDed to the run's event stream. The same thread touches the run's heartbeat.

Exactly-once metrics across a crash: the engine checkpoints right after `should_stop()` on a
checkpoint step, so `should_stop()` first flushes synchronously on those steps. Every step up to
a checkpoint is therefore stored before the checkpoint exists, and `resumed(step)` deletes what a
killed attempt stored after it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import redis
from sqlalchemy import delete, insert, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app import events
from app.models import EvalSamples, MetricPoint, Run, RunStatus
from app.run_state import heartbeat
from app.settings import get_settings

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.5


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
        self.flush()  # the step's metrics before its samples, as on the stream
        with Session(self.engine) as session:
            session.add(EvalSamples(run_id=self.run_id, step=step, wall_time=time.time(), samples=_finite(samples)))
            session.commit()
        self._publish("samples", {"step": step})

    def should_stop(self) -> bool:
        if self._is_checkpoint_step(self.last_step):
            self.flush()  # the checkpoint about to be written must never be ahead of the stored metrics
        now = time.monotonic()
        if now >= self._next_cancel_poll and not self.cancel_requested:
            self._next_cancel_poll = now + CANCEL_POLL_SECONDS
            self.cancel_requested = self._read_stop_flag()
        stop = self.cancel_requested or self.interrupted
        if stop:
            self.flush()  # the engine checkpoints this step next
        return stop

    def resumed(self, step: int) -> None:
        """Forget what a killed attempt stored after the checkpoint it resumes from."""
        self.flush()
        with Session(self.engine) as session:
            session.execute(delete(MetricPoint).where(MetricPoint.run_id == self.run_id, MetricPoint.step > step))
            session.execute(delete(EvalSamples).where(EvalSamples.run_id == self.run_id, EvalSamples.step > step))
            session.execute(update(Run).where(Run.id == self.run_id).values(last_step=step))
            session.commit()
        self.last_step = step
        self._publish("resumed", {"step": step})

    # --- batching ---------------------------------------------------------------------------------
    def flush(self) -> int:
        """Write buffered points in one transaction (with Run.last_step), then publish them; returns the count."""
        with self._flush_lock:
            with self._buffer_lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return 0
            last_step = max(p["step"] for p in batch)
            with Session(self.engine) as session:
                session.execute(insert(MetricPoint), batch)
                session.execute(
                    update(Run).where(Run.id == self.run_id, Run.last_step < last_step).values(last_step=last_step)
                )
                session.commit()
            points = [{k: p[k] for k in ("step", "key", "value", "wall_time")} for p in batch]
            self._publish("metrics", {"points": points})
            return len(batch)

    def close(self) -> None:
        """Stop the background thread and write what is left (call once the engine returns or raises)."""
        self._stop.set()
        self._thread.join(timeout=30)
        self.flush()

    # --- internals --------------------------------------------------------------------------------
    def _background(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_seconds
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.heartbeat_seconds
                    with Session(self.engine) as session:
                        stop = heartbeat(session=session, run_id=self.run_id, last_step=None, attempt=self.attempt)
                    self.cancel_requested = self.cancel_requested or stop
            except Exception:  # keep beating: a transient DB or Redis error must not end the run
                log.exception("run %s: background flush/heartbeat failed; retrying", self.run_id)

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
