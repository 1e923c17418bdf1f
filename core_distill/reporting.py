"""How the engine reports progress, without knowing who listens.

The engine calls a `Reporter`; the CLI writes JSON lines, the worker writes database rows and
publishes them for the live stream. Metric keys are snake_case with slash prefixes
(`loss/kd`, `div/fkl`, `eval/exact_match`) so charts group by prefix.

A reporter may also have `header(lines)`: called once per attempt, before the first step, with what
the run decided while loading that its numbers depend on ("vocabulary cut from 960 (student head) and
1152 (teacher head) to 896 ..."). Likewise `warning(text)`: the run's course looks wrong (its first
evaluations fell well below step 0, core_distill/eval_watch.py); the run goes on. The engine calls
them only where they exist.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Called once per optimizer step (and once per evaluation) with scalar metrics."""

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """Sampled eval completions: {prompt, completion, reference, tokens, token_div, correct}."""

    def should_stop(self) -> bool:
        """Polled every step; True makes the run checkpoint and stop cleanly."""

    def resumed(self, step: int) -> None:
        """The run continues from a checkpoint at `step`: forget anything logged after it."""


class NullReporter:
    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def resumed(self, step: int) -> None:
        pass


class JsonlReporter:
    """Appends metrics to `metrics.jsonl` and samples to `samples.jsonl` in the run folder."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.samples_path = self.output_dir / "samples.jsonl"
        self.header_path = self.output_dir / "header.txt"
        self.warnings_path = self.output_dir / "warnings.txt"

    def header(self, lines: list[str]) -> None:
        """The run's header, one line each, in `header.txt` (this attempt's: a resume writes it again)."""
        self.header_path.write_text("".join(line + "\n" for line in lines))

    def warning(self, text: str) -> None:
        """A warning about the run's course, one line in `warnings.txt`."""
        with self.warnings_path.open("a") as f:
            f.write(text + "\n")

    def resumed(self, step: int) -> None:
        """Drop lines logged after `step`, so a resumed run does not log a step twice."""
        for path in (self.metrics_path, self.samples_path):
            if path.exists():
                kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
                path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._append(self.metrics_path, {"step": step, "time": time.time(), "metrics": metrics})

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        self._append(self.samples_path, {"step": step, "time": time.time(), "samples": samples})

    def should_stop(self) -> bool:
        return False

    @staticmethod
    def _append(path: Path, record: dict[str, Any]) -> None:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class FanoutReporter:
    """Sends every call to several reporters; stops when any of them asks."""

    def __init__(self, *reporters: Reporter):
        self.reporters = reporters

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for r in self.reporters:
            r.log(step, metrics)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        for r in self.reporters:
            r.log_samples(step, samples)

    def should_stop(self) -> bool:
        return any(r.should_stop() for r in self.reporters)

    def header(self, lines: list[str]) -> None:
        for r in self.reporters:
            if hasattr(r, "header"):
                r.header(lines)

    def warning(self, text: str) -> None:
        for r in self.reporters:
            if hasattr(r, "warning"):
                r.warning(text)

    def resumed(self, step: int) -> None:
        for r in self.reporters:
            r.resumed(step)
