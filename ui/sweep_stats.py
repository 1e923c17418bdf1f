"""What the Sweep view computes from the service's data: intervals over seeds, the chosen setting, and the
groups' mean curves (seeds aligned on the step axis).

The interval of a group's score is the 95 % Student-t interval of the mean over its seeds
(mean ± t(n-1) · sd / √n): with 2 or 3 seeds it is wide, which is the point. No scipy here, so the
t quantiles for 1-30 degrees of freedom are a table and beyond that a Cornish-Fisher expansion.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.models import MetricSummary, RunStatus, SweepGroupView
from core_distill import metric_keys

Band = Literal["ci", "sd"]  # a 95 % interval of the mean over seeds, or ± one sample sd

# t(0.975, df) for df = 1..30 (two-sided 95 %)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
_Z975 = 1.959964


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975  # Cornish-Fisher: exact to 1e-4 beyond 30 degrees of freedom
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def half_width(sd: float | None, n: int, band: Band = "ci") -> float | None:
    """The band's half-width around a mean of `n` values with sample sd `sd`; None below 2 values."""
    if sd is None or n < 2:
        return None
    return sd if band == "sd" else t975(n - 1) * sd / math.sqrt(n)


# besides the shares: more distinct correct completions, and a higher likelihood under the true process
MAXIMISED = frozenset({metric_keys.EVAL_DISTINCT_VALID, metric_keys.EVAL_TRUE_LOG_LIKELIHOOD,
                       metric_keys.PERF_TOKENS_PER_SEC})  # fmt: skip


def higher_is_better(key: str) -> bool:
    """Shares (accuracy, coverage: the catalogue's percent families) and MAXIMISED are maximised; losses,
    divergences and everything else are minimised."""
    return metric_keys.family_of(key).percent or key in MAXIMISED


def scale_of(key: str) -> float:
    return metric_keys.display_scale(key)


def unit_of(key: str) -> str:
    return metric_keys.family_of(key).unit


def group_finished(group: SweepGroupView) -> bool:
    """Every run of the group has ended (none queued, running or about to resume)."""
    return all(RunStatus(run.status).finished for run in group.runs) and bool(group.runs)


@dataclass(frozen=True)
class Chosen:
    label: str
    summary: MetricSummary
    among: int  # finished groups with a score, the candidates


def choose(groups: Sequence[SweepGroupView], key: str) -> Chosen | None:
    """The finished group with the best mean of `key` (highest for shares, else lowest); first on ties.
    None while no finished group has a score."""
    scored = [g for g in groups if group_finished(g) and key in g.metrics]
    if not scored:
        return None
    sign = -1.0 if higher_is_better(key) else 1.0
    best = min(scored, key=lambda g: sign * g.metrics[key].mean)  # min keeps the first of equals
    return Chosen(best.label, best.metrics[key], len(scored))


@dataclass(frozen=True)
class Curve:
    """A group's mean curve: at each step, the mean over the runs that logged up to that step, its band, n."""

    steps: list[int]
    mean: list[float]
    low: list[float | None]
    high: list[float | None]
    n: list[int]


def mean_curve(runs: Sequence[list[dict[str, float]]], band: Band = "ci", max_points: int = 500) -> Curve:
    """Seeds aligned on the step axis. Each run's points (sorted by step) are interpolated linearly onto
    the union of all runs' steps (thinned to `max_points`), but only inside that run's own step range, so
    a run still training counts up to its last step and no further. Eval points every `eval_every` steps
    line up exactly and are not interpolated at all."""
    series = [(np.array([p["step"] for p in r], float), np.array([p["value"] for p in r], float)) for r in runs if r]
    if not series:
        return Curve([], [], [], [], [])
    grid = np.unique(np.concatenate([steps for steps, _ in series]))
    if len(grid) > max_points:
        grid = np.unique(grid[np.linspace(0, len(grid) - 1, max_points).round().astype(int)])
    values = np.full((len(series), len(grid)), np.nan)  # (runs, steps)
    for i, (steps, ys) in enumerate(series):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        values[i, inside] = np.interp(grid[inside], steps, ys)
    curve = Curve([], [], [], [], [])
    for j, step in enumerate(grid):
        column = [float(v) for v in values[:, j] if not np.isnan(v)]
        if not column:
            continue
        mean = statistics.fmean(column)
        sd = statistics.stdev(column) if len(column) > 1 else None
        width = half_width(sd, len(column), band)
        curve.steps.append(int(step))
        curve.mean.append(mean)
        curve.low.append(None if width is None else mean - width)
        curve.high.append(None if width is None else mean + width)
        curve.n.append(len(column))
    return curve
