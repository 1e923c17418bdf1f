"""Rows for dashboard tests and benchmarks: experiments, runs, metric curves and eval samples,
written straight into the database (what a worker would have stored)."""

from __future__ import annotations

import math
import random
import time
from typing import Any

from sqlalchemy import insert
from sqlmodel import Session

from app.models import EvalSamples, Experiment, MetricPoint, Run
from core_distill.spec import DistillSpec

CURVE_KEYS = (
    "loss", "loss/kd", "div/fkl", "div/rkl", "div/jsd", "entropy/student", "entropy/teacher",
    "topk/coverage", "perf/tokens_per_sec", "time/generate", "time/teacher", "time/update",
)  # fmt: skip


def curve_value(key: str, step: int, seed: int) -> float:
    """A plausible, deterministic training curve: decays with noise and the occasional spike."""
    rng = random.Random(hash((key, step, seed)) & 0xFFFFFFFF)
    base = 2.0 * math.exp(-step / 3000) + 0.2 + 0.05 * seed
    spike = 5.0 if rng.random() < 0.0005 else 0.0
    if key.startswith("perf/"):
        return 900 + 100 * rng.random()
    if key.startswith("time/"):
        return 0.05 + 0.02 * rng.random()
    if key == "topk/coverage":
        return min(1.0, 0.8 + step / 50_000)
    return base * (0.9 + 0.2 * rng.random()) + spike


def add_run(
    session: Session,
    *,
    name: str = "toy run",
    spec: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    status: str = "succeeded",
    steps: int = 0,
    keys: tuple[str, ...] = CURVE_KEYS,
    seed: int = 0,
    samples: list[dict[str, Any]] | None = None,
    batch: int = 20_000,
) -> Run:
    """One experiment with one run, `steps` points per key, optionally one EvalSamples row."""
    full_spec = DistillSpec.parse(spec or {}).model_dump(mode="json")
    experiment = Experiment(name=name, tags=tags or [], spec=full_spec)
    session.add(experiment)
    session.flush()
    run = Run(experiment_id=experiment.id, status=status, last_step=steps, max_steps=max(steps, full_spec["max_steps"]))
    session.add(run)
    session.commit()
    t0 = time.time() - steps
    rows = [
        {"run_id": run.id, "step": step, "key": key, "value": curve_value(key, step, seed), "wall_time": t0 + step}
        for step in range(1, steps + 1)
        for key in keys
    ]
    for start in range(0, len(rows), batch):
        session.execute(insert(MetricPoint), rows[start : start + batch])
    if samples is not None:
        session.add(EvalSamples(run_id=run.id, step=steps, wall_time=t0 + steps, samples=samples))
    session.commit()
    session.refresh(run)
    session.expunge(run)  # usable after the session closes (ids, status)
    return run


def _rise(t: float) -> float:
    """0.5 at t = 0 to 1 at t = 1, steep first (a learning curve)."""
    return (1 - 0.5 * math.exp(-4 * t)) / (1 - 0.5 * math.exp(-4))


def finish_sweep_run(
    session: Session, run_id: int, finals: dict[str, float], *, status: str = "succeeded", steps: int = 20,
    every: int = 10,
) -> None:  # fmt: skip
    """What a worker leaves of a sweep's run: its status and step, and each key's eval curve rising from
    about half its final value at step 0 to exactly `finals[key]` at `steps` (a point every `every` steps)."""
    run = session.get(Run, run_id)
    run.status, run.last_step, run.max_steps = status, steps, max(run.max_steps, steps)
    session.add(run)
    points = [
        {"run_id": run_id, "step": step, "key": key, "value": value * _rise(step / steps), "wall_time": step}
        for key, value in finals.items()
        for step in range(0, steps + 1, every)
    ]
    if points:
        session.execute(insert(MetricPoint), points)
    session.commit()
