"""A warning when a run's first evaluations fall well below its step-0 baseline.

A run that makes the student worse than it started within its first evaluations is almost always
misconfigured, not unlucky: a learning rate too high for its batch, or a schedule squeezed into too few
steps (e.g. `--set max_steps=20` on a preset tuned for 200). The run goes on; the warning says so once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from core_distill import metric_keys as mk

WATCHED_EVALUATIONS = 2  # the first evaluations after step 0 that are compared with the baseline
MIN_DROP = 0.05  # an absolute drop below this is never flagged, whatever the eval split's size


@dataclass
class EvalDropWatch:
    """Holds the step-0 score and says, once, when a following evaluation falls well below it."""

    rows: int  # eval rows scored each time (the sampling error of a score shrinks with them)
    learning_rate: float
    rows_per_step: int
    max_steps: int
    key: str = mk.EVAL_EXACT_MATCH
    baseline: float | None = None
    seen: int = 0
    warned: bool = field(default=False, init=False)

    def threshold(self, baseline: float) -> float:
        """The drop that counts: twice the binomial standard error of a score near the baseline, at least MIN_DROP."""
        se = math.sqrt(max(baseline * (1 - baseline), 0.01) / max(self.rows, 1))
        return max(MIN_DROP, 2 * se)

    def check(self, step: int, metrics: dict[str, float]) -> str | None:
        """Record an evaluation; the warning text the first time one falls well below step 0, else None."""
        score = metrics.get(self.key)
        if score is None:
            return None
        if step == 0:
            self.baseline = score
            return None
        self.seen += 1
        if self.warned or self.baseline is None or self.seen > WATCHED_EVALUATIONS:
            return None
        drop = self.baseline - score
        if drop < self.threshold(self.baseline):
            return None
        self.warned = True
        return (
            f"warning: {self.key} fell from {self.baseline:.1%} at step 0 to {score:.1%} at step {step} "
            f"({self.rows} eval rows; more than twice its sampling error). This usually means the learning rate is "
            f"too high for the batch (learning_rate {self.learning_rate:g} with {self.rows_per_step} rows per step) "
            f"or too few steps for the schedule (max_steps {self.max_steps}): try a lower learning_rate or more "
            "max_steps. The run goes on."
        )
