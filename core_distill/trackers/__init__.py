"""Experiment trackers a run reports to besides its own folder or database: `report_to` (TRL's name and values).

`open_trackers(spec, output_dir)` gives a `TrackerReporter` (a `core_distill.reporting.Reporter`) for the
spec's `report_to`, or None when it names none. Each tracker runs on a thread of its own, so a slow or
unreachable server never slows a step; a tracker that fails (down, refused, misconfigured) logs one
warning and is dropped, and the run goes on. The CLI fans out to its JSONL reporter and these; the worker
to its database reporter and these. The caller ends them with `finish(model_dir=..., status=...)`, which
records the final model's location and waits (bounded) for what is still queued.

Where each tracker sends its runs comes from `TrackerOptions`: the standard variables of each tool
(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT, WANDB_MODE, WANDB_DIR, TRACKIO_PROJECT,
TRACKIO_DIR, ...) and the service's team-wide defaults (`DISTILL_MLFLOW_TRACKING_URI`,
`DISTILL_TRACKER_PROJECT`, `DISTILL_TENSORBOARD_DIR`, `DISTILL_WANDB_MODE`, `DISTILL_TRACKER_FINISH_SECONDS`).
docs/trackers.md says how.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core_distill.trackers.names import (  # noqa: F401  (the package's face: names the tests and callers use)
    INSTALL_HINT,
    MODULES,
    TRACKERS,
    TrackerName,
    missing_packages,
    normalize_report_to,
)
from core_distill.trackers.thread import TrackerThread

if TYPE_CHECKING:
    from core_distill.reporting import Reporter

log = logging.getLogger("core_distill.trackers")

STATE_FILE = "trackers.json"  # in the run folder: each tracker's run id, so a resumed run continues the same run
DEFAULT_PROJECT = "distill"


@dataclass
class TrackerOptions:
    """Where runs go. Empty fields leave the choice to each tool's own variables and defaults."""

    project: str = ""  # MLflow experiment, W&B project, trackio project (default: each tool's variable, else distill)
    mlflow_tracking_uri: str = ""  # else MLFLOW_TRACKING_URI, else MLflow's default (./mlruns)
    tensorboard_dir: str = ""  # a root: runs go to ROOT/<run name>; else <run folder>/tensorboard
    wandb_mode: str = ""  # online / offline / disabled; else WANDB_MODE
    finish_seconds: float = 120.0  # longest `finish` waits for a tracker's queue before giving up on it
    tags: dict[str, str] = field(default_factory=dict)  # recorded with the run where the tool has tags

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> TrackerOptions:
        """The team-wide DISTILL_* defaults of the environment (the standard variables are read by each tool)."""
        env = os.environ if env is None else env
        return cls(
            project=env.get("DISTILL_TRACKER_PROJECT", ""),
            mlflow_tracking_uri=env.get("DISTILL_MLFLOW_TRACKING_URI", ""),
            tensorboard_dir=env.get("DISTILL_TENSORBOARD_DIR", ""),
            wandb_mode=env.get("DISTILL_WANDB_MODE", ""),
            finish_seconds=_seconds(env.get("DISTILL_TRACKER_FINISH_SECONDS", "")),
        )

    def project_for(self, variable: str) -> str:
        return self.project or os.environ.get(variable) or DEFAULT_PROJECT


def _seconds(text: str, default: float = 120.0) -> float:
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not value > 0:
        log.warning("trackers: DISTILL_TRACKER_FINISH_SECONDS=%r is not a positive number; using %s", text, default)
        return default
    return value


@dataclass
class TrackerRun:
    """What every tracker is told about the run when it starts."""

    name: str
    output_dir: Path
    config: dict[str, Any]  # the spec, every field
    spec_yaml: str
    options: TrackerOptions
    state: dict[str, Any]  # this tracker's ids from an earlier attempt of the run (trackers.json), updated in place


class TrackerReporter:
    """A Reporter over the spec's trackers; never stops a run and never raises into it."""

    def __init__(self, threads: list[TrackerThread], state_path: Path, state: dict[str, dict[str, Any]]):
        self.threads = threads
        self.state_path = state_path
        self._state = state

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.threads]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}  # as the database keeps them
        for t in self.threads:
            t.call("log", step, finite)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        rows = sample_rows(samples)
        for t in self.threads:
            t.call("log_samples", step, rows)

    def header(self, lines: list[str]) -> None:
        for t in self.threads:
            t.call("header", list(lines))

    def should_stop(self) -> bool:
        return False

    def resumed(self, step: int) -> None:
        for t in self.threads:
            t.call("resumed", step)

    def finish(self, *, model_dir: str | Path | None, status: str = "finished", step: int | None = None) -> None:
        """The run ended (`status`: finished, stopped, failed): record the final model's location, close each
        tracker, wait for them (at most `finish_seconds` each) and keep their run ids for a resume."""
        outcome = {"model_dir": str(model_dir) if model_dir else "", "status": status, "step": step}
        for t in self.threads:
            t.call("finish", outcome)
        for t in self.threads:
            t.close()
        self._save_state()

    def _save_state(self) -> None:
        try:
            self.state_path.write_text(json.dumps(self._state, indent=1, sort_keys=True))
        except OSError as exc:
            log.warning("trackers: could not write %s (%s); a resumed run starts new tracker runs", self.state_path, exc)


def sample_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The eval samples as table rows: the texts, whether it was right and the mean per-token divergence."""
    rows = []
    for s in samples:
        div = [float(d) for d in s.get("token_div") or [] if d is not None and math.isfinite(float(d))]
        rows.append({
            "prompt": str(s.get("prompt", "")),
            "completion": str(s.get("completion", "")),
            "reference": str(s.get("reference", "")),
            "correct": None if s.get("correct") is None else bool(s.get("correct")),
            "mean_token_div": sum(div) / len(div) if div else None,
            "tokens": len(s.get("tokens") or []),
        })  # fmt: skip
    return rows


def open_trackers(
    spec,  # a DistillSpec (not imported: the spec imports trackers.names)
    output_dir: str | Path,
    *,
    run_name: str | None = None,
    options: TrackerOptions | None = None,
) -> TrackerReporter | None:
    """Start the spec's `report_to` trackers for a run in `output_dir`; None when it names none.

    A tracker whose package is missing or that fails to start is warned about once and left out.
    """
    names = list(spec.report_to)
    if not names:
        return None
    from core_distill.trackers.backends import BACKENDS

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    options = options or TrackerOptions.from_env()
    state_path = output_dir / STATE_FILE
    state: dict[str, dict[str, Any]] = {}
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = {}
    name = run_name or output_dir.resolve().name
    config = spec.model_dump(mode="json")
    threads = []
    for tracker in names:
        missing = missing_packages([tracker])
        if missing:
            log.warning("tracker %s: %s; the run goes on without it", tracker, missing[tracker])
            continue
        own = state.setdefault(tracker, {})
        run = TrackerRun(name, output_dir, config, spec.to_yaml(), options, own)
        thread = TrackerThread(tracker, BACKENDS[tracker](), finish_seconds=options.finish_seconds)
        thread.call("start", run)
        threads.append(thread)
    return TrackerReporter(threads, state_path, state)


def run_with_trackers(
    spec,  # a DistillSpec (not imported: the spec imports trackers.names)
    output_dir: str | Path,
    reporter: Reporter,
    train: Callable[[Reporter], Any],
    *,
    run_name: str | None = None,
    options: TrackerOptions | None = None,
) -> Any:
    """`train(reporter)` with the spec's trackers beside `reporter`, finished with the run's outcome (the final
    model's location; `failed` when train raises, and the exception goes on). `train` returns a RunResult."""
    trackers = open_trackers(spec, output_dir, run_name=run_name, options=options)
    if trackers is None:
        return train(reporter)
    from core_distill.reporting import FanoutReporter

    try:
        result = train(FanoutReporter(reporter, trackers))
    except BaseException:
        trackers.finish(model_dir=None, status="failed")
        raise
    trackers.finish(model_dir=result.model_dir, status="stopped" if result.stopped else "finished", step=result.step)
    return result
