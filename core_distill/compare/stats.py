"""Confidence intervals for comparing models on per-prompt scores (numpy and the standard library only).

A model's scores are `Scores`: prompt key -> the score of every sampled completion of that prompt (0/1
validity, or any finite number), over every evaluation draw. The samples of one prompt are correlated
(an easy prompt is easy for every draw), so the unit of resampling is the prompt: a percentile
bootstrap that draws prompts with replacement and keeps each prompt's samples whole. A model's score
is the mean over prompts of the per-prompt mean, so every prompt weighs the same whatever its count
of samples.

Several comparisons at once (`compare_all`) are Bonferroni-adjusted intervals: with m comparisons
each interval is at confidence 1 - (1 - confidence) / m, so all m cover their true differences
together with probability >= `confidence` whatever the dependence between them (they share models),
and a claim is made exactly when its adjusted interval excludes 0. Holm's step-down method rejects
more often but gives no interval at a stated level that agrees with its decisions, and the page
shows intervals: a claim beside an interval that contains 0 would not survive review.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

Scores = Mapping[str, Sequence[float]]

DEFAULT_RESAMPLES = 10_000
# Monte Carlo floor: at least this many resamples beyond each end of an interval, so a tail quantile of
# a strict (Bonferroni) level is not read off a handful of draws. 0.95 needs 2,000; 1 - 0.05/36 needs 72,000.
MIN_TAIL_RESAMPLES = 50
_BLOCK = 4096  # resamples drawn at a time: memory stays (4096, n_prompts) whatever n_resamples is


@dataclass(frozen=True)
class Interval:
    """A score or a difference of scores with its percentile-bootstrap interval (fractions, not %)."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_prompts: int
    n_resamples: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def negated(self) -> Interval:
        """The same interval for B - A."""
        return Interval(-self.estimate, -self.high, -self.low, self.confidence, self.n_prompts, self.n_resamples)

    def text(self, scale: float = 100, unit: str = " points", *, digits: int = 1, signed: bool = True) -> str:
        """'+6.3 points (95 % CI +2.1 to +10.4)'; for a score: text(unit=" %", signed=False)."""

        def num(value: float) -> str:
            rounded = round(value * scale, digits) + 0.0  # + 0.0 turns -0.0 into 0.0
            return f"{rounded:+.{digits}f}" if signed else f"{rounded:.{digits}f}"

        return f"{num(self.estimate)}{unit} ({_percent(self.confidence)} CI {num(self.low)} to {num(self.high)})"


@dataclass(frozen=True)
class Comparison:
    """A - B on the same prompts, at the Bonferroni-adjusted confidence of its family."""

    a: str
    b: str
    interval: Interval  # A - B, at `adjusted_confidence`
    p_value: float  # two-sided bootstrap p-value of A - B = 0, unadjusted
    n_comparisons: int  # the size of the family this comparison was adjusted for
    family_confidence: float  # all n_comparisons intervals cover together with at least this probability

    @property
    def adjusted_confidence(self) -> float:
        return self.interval.confidence

    @property
    def p_adjusted(self) -> float:
        """Bonferroni: min(1, m * p); below 1 - family_confidence about when the interval excludes 0."""
        return min(1.0, self.n_comparisons * self.p_value)

    @property
    def shown(self) -> bool:
        """Whether the data support a claim that A and B differ (the adjusted interval excludes 0)."""
        return self.interval.excludes_zero


@dataclass(frozen=True)
class Selection:
    """The settings of one method on the eval split: each one's interval, and whether the best one is
    distinguishable from the others (best - other, Bonferroni-adjusted over the k - 1 comparisons)."""

    intervals: dict[str, Interval]  # every setting's score, at `confidence`, best first
    best: str
    runner_up: str | None
    gaps: dict[str, Interval]  # best - setting, at the adjusted confidence, for every other setting
    confidence: float

    @property
    def n_comparisons(self) -> int:
        return len(self.gaps)

    @property
    def distinguishable(self) -> bool:
        """True when the best setting beats the runner-up (and so every other) beyond the adjusted interval."""
        return self.runner_up is not None and self.gaps[self.runner_up].low > 0

    @property
    def tied_with_best(self) -> list[str]:
        """The other settings the data cannot tell apart from the best (their gap interval contains 0)."""
        return [name for name, gap in self.gaps.items() if gap.low <= 0]

    def text(self, scale: float = 100, unit: str = " points") -> str:
        best = f"{self.best}: {self.intervals[self.best].text(scale, ' %', signed=False)}"
        if self.runner_up is None:
            return f"{best} (the only setting)"
        gap = self.gaps[self.runner_up].text(scale, unit)
        verdict = "distinguishable" if self.distinguishable else "not distinguishable"
        n = self.intervals[self.best].n_prompts
        return f"{best}; over the runner-up {self.runner_up} {gap}: {verdict} on {n} prompts"


@dataclass(frozen=True)
class SeedSpread:
    """The model score of each training seed, and their mean and sample standard deviation."""

    per_seed: tuple[float, ...]
    mean: float = field(init=False)
    sd: float = field(init=False)  # ddof 1; nan for a single seed

    def __post_init__(self) -> None:
        values = np.asarray(self.per_seed, dtype=float)
        object.__setattr__(self, "mean", float(values.mean()))
        object.__setattr__(self, "sd", float(values.std(ddof=1)) if len(values) > 1 else math.nan)

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    def text(self, scale: float = 100, unit: str = " %", *, digits: int = 1) -> str:
        """'63.0 ± 1.2 % over 3 seeds'."""
        spread = "" if math.isnan(self.sd) else f" ± {self.sd * scale:.{digits}f}"
        seeds = "seed" if self.n_seeds == 1 else "seeds"
        return f"{self.mean * scale:.{digits}f}{spread}{unit} over {self.n_seeds} {seeds}"


def model_score(scores: Scores) -> float:
    """The mean over prompts of the per-prompt mean."""
    return float(_prompt_means({"scores": scores})[1].mean())


def resampled_scores(scores: Scores, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """The bootstrap distribution of the model score, shape (n_resamples,): prompts drawn with replacement."""
    _, values = _prompt_means({"scores": scores})
    return _resample(values, _checked_resamples(n_resamples), seed)[:, 0]


def bootstrap_mean(
    scores: Scores, *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """The model score with its percentile-bootstrap interval over prompts."""
    _, values = _prompt_means({"scores": scores})
    return _interval(values[:, 0], confidence, n_resamples, seed)


def paired_difference(
    a: Scores, b: Scores, *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Interval:
    """Score of A - score of B, resampling the same prompts for both (a ValueError when their prompts differ)."""
    _, values = _prompt_means({"a": a, "b": b})
    return _interval(values[:, 0] - values[:, 1], confidence, n_resamples, seed)


def bootstrap_p_value(a: Scores, b: Scores, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of A - B = 0: 2 * min(P*(d* <= 0), P*(d* >= 0)), capped at 1."""
    _, values = _prompt_means({"a": a, "b": b})
    boot = _resample((values[:, 0] - values[:, 1])[:, None], _checked_resamples(n_resamples), seed)[:, 0]
    return _p_value(boot)


def compare_all(
    models: Mapping[str, Scores],
    *,
    baseline: str | None,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[Comparison]:
    """Every pair of `models`, Bonferroni-adjusted for the whole family of C(k, 2) comparisons.

    `baseline` (a key of `models`, e.g. the student before training) is compared first, as
    model - baseline for each other model; the other pairs follow, the higher-scoring model as A.
    All comparisons use one set of resampled prompts, so every model must have the same prompts.
    n_resamples is a floor: it is raised to leave MIN_TAIL_RESAMPLES beyond each adjusted tail."""
    _check_confidence(confidence)
    if len(models) < 2:
        raise ValueError(f"models: compare_all needs at least 2 models, got {len(models)}")
    if baseline is not None and baseline not in models:
        raise ValueError(f"baseline: {baseline!r} is not one of the models ({', '.join(map(repr, models))})")
    names = list(models)
    _, values = _prompt_means(models)  # (n_prompts, k), columns in the order of names
    pairs = list(_pairs(names, baseline, values.mean(axis=0)))
    m = len(pairs)
    adjusted = 1 - (1 - confidence) / m
    column = {name: i for i, name in enumerate(names)}
    diffs = np.stack([values[:, column[a]] - values[:, column[b]] for a, b in pairs], axis=1)  # (n_prompts, m)
    boot = _resample(diffs, _enough_resamples(n_resamples, adjusted), seed)  # (resamples, m), the same prompts
    comparisons = []
    for j, (a, b) in enumerate(pairs):
        interval = _from_distribution(float(diffs[:, j].mean()), boot[:, j], adjusted, len(diffs))
        comparisons.append(Comparison(a, b, interval, _p_value(boot[:, j]), m, confidence))
    return comparisons


def claims(comparisons: Sequence[Comparison], *, scale: float = 100, unit: str = " points") -> list[str]:
    """One sentence per comparison: 'A beats B by ...' only where the adjusted interval excludes 0."""
    lines = []
    for c in comparisons:
        family = f"{c.n_comparisons} comparisons, Bonferroni for {_percent(c.family_confidence)} family-wise"
        if c.shown:
            winner, loser, interval = (c.a, c.b, c.interval) if c.interval.low > 0 else (c.b, c.a, c.interval.negated())
            lines.append(f"{winner} beats {loser} by {interval.text(scale, unit)}; {family}")
        else:
            difference = f"{c.a} - {c.b} = {c.interval.text(scale, unit)}"
            lines.append(f"no difference shown between {c.a} and {c.b}: {difference}; {family}")
    return lines


def selection_uncertainty(
    settings: Mapping[str, Scores],
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Selection:
    """Eval-split scores of several settings of one method: each setting's interval (at `confidence`) and
    the best one against every other (Bonferroni over the k - 1 comparisons, since the best is picked
    from the same data). All settings must have the same prompts."""
    _check_confidence(confidence)
    if not settings:
        raise ValueError("settings: no settings to choose from")
    names = list(settings)
    _, values = _prompt_means(settings)  # (n_prompts, k)
    order = sorted(range(len(names)), key=lambda i: -values[:, i].mean())  # stable: ties keep the given order
    best = order[0]
    intervals = {names[i]: _interval(values[:, i], confidence, n_resamples, seed) for i in order}
    gaps: dict[str, Interval] = {}
    if len(names) > 1:
        adjusted = 1 - (1 - confidence) / (len(names) - 1)
        diffs = values[:, [best]] - values[:, order[1:]]  # (n_prompts, k - 1): best - each other setting
        boot = _resample(diffs, _enough_resamples(n_resamples, adjusted), seed)
        for j, i in enumerate(order[1:]):
            gaps[names[i]] = _from_distribution(float(diffs[:, j].mean()), boot[:, j], adjusted, len(diffs))
    runner_up = names[order[1]] if len(names) > 1 else None
    return Selection(intervals, names[best], runner_up, gaps, confidence)


def merge_seeds(per_seed: Sequence[Scores]) -> dict[str, list[float]]:
    """Several training seeds' scores of one method as one Scores: per prompt, the seeds' samples in turn.
    Bootstrapping the merged scores resamples prompts with the seeds held fixed; `seed_spread` shows the
    variation between seeds beside it."""
    if not per_seed:
        raise ValueError("per_seed: no seeds to merge")
    keys, _ = _prompt_means({f"seed {i}": s for i, s in enumerate(per_seed)})
    return {key: [float(v) for scores in per_seed for v in scores[key]] for key in keys}


def seed_spread(per_seed: Sequence[Scores]) -> SeedSpread:
    """The model score of each training seed, with their mean ± sample standard deviation."""
    if not per_seed:
        raise ValueError("per_seed: no seeds")
    _, values = _prompt_means({f"seed {i}": s for i, s in enumerate(per_seed)})
    return SeedSpread(tuple(float(v) for v in values.mean(axis=0)))


# -- internals ---------------------------------------------------------------------------------------


def _percent(confidence: float) -> str:
    return f"{confidence * 100:.4g} %"


def _prompt_means(named: Mapping[str, Scores]) -> tuple[list[str], np.ndarray]:
    """The sorted prompt keys and the per-prompt means, shape (n_prompts, len(named)); a ValueError that
    names the missing prompts when the models do not all have the same prompts."""
    items = list(named.items())
    first_name, first = items[0]
    keys = sorted(first)
    if not keys:
        raise ValueError(f"{first_name}: no prompts")
    for name, scores in items[1:]:
        missing, extra = sorted(set(first) - set(scores)), sorted(set(scores) - set(first))
        if missing or extra:
            raise ValueError(
                f"{name}: a paired comparison needs the same prompts as {first_name}; "
                f"{_listed(missing)} missing, {_listed(extra)} not in {first_name}"
            )
    values = np.empty((len(keys), len(items)))
    for j, (name, scores) in enumerate(items):
        for i, key in enumerate(keys):
            samples = np.asarray(scores[key], dtype=float)
            if samples.ndim != 1 or samples.size == 0:
                raise ValueError(f"{name}: prompt {key!r} has no samples (expected a list of scores)")
            if not np.isfinite(samples).all():
                raise ValueError(f"{name}: prompt {key!r} has a score that is not a finite number")
            values[i, j] = samples.mean()
    return keys, values


def _listed(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    shown = ", ".join(map(repr, keys[:limit]))
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} prompt{'s' if len(keys) > 1 else ''} ({shown}{more})"


def _pairs(names: list[str], baseline: str | None, means: np.ndarray) -> Iterator[tuple[str, str]]:
    """(A, B) for every pair: model - baseline first, then the others with the higher mean as A."""
    mean = dict(zip(names, means, strict=True))
    others = [n for n in names if n != baseline]
    if baseline is not None:
        yield from ((name, baseline) for name in others)
    for x, y in combinations(others, 2):
        yield (y, x) if mean[y] > mean[x] else (x, y)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must be between 0 and 1 (e.g. 0.95), got {confidence}")


def _checked_resamples(n_resamples: int) -> int:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer) or n_resamples < 1:
        raise ValueError(f"n_resamples: must be a positive integer, got {n_resamples!r}")
    return int(n_resamples)


def _enough_resamples(n_resamples: int, confidence: float) -> int:
    _check_confidence(confidence)
    tail = (1 - confidence) / 2
    return max(_checked_resamples(n_resamples), math.ceil(MIN_TAIL_RESAMPLES / tail - 1e-9))


def _resample(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """values (n_prompts, k) -> (n_resamples, k): each column's mean over n_prompts prompts drawn with
    replacement, the same draws for every column (paired). Drawn as an (n_resamples, n_prompts) index
    matrix from default_rng(seed), a block of rows at a time, turned into counts per prompt."""
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty((n_resamples, values.shape[1]))
    for start in range(0, n_resamples, _BLOCK):
        rows = min(_BLOCK, n_resamples - start)
        index = rng.integers(0, n, size=(rows, n))  # (rows, n): the prompts of each resample
        offsets = (index + n * np.arange(rows)[:, None]).ravel()
        counts = np.bincount(offsets, minlength=rows * n).reshape(rows, n)  # times each prompt was drawn
        out[start : start + rows] = counts @ values / n
    return out


def _interval(values: np.ndarray, confidence: float, n_resamples: int, seed: int) -> Interval:
    """values (n_prompts,): the per-prompt means (or paired differences) of one model."""
    resamples = _enough_resamples(n_resamples, confidence)
    boot = _resample(values[:, None], resamples, seed)[:, 0]
    return _from_distribution(float(values.mean()), boot, confidence, len(values))


def _from_distribution(estimate: float, boot: np.ndarray, confidence: float, n_prompts: int) -> Interval:
    tail = (1 - confidence) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), confidence, n_prompts, len(boot))


def _p_value(boot: np.ndarray) -> float:
    return float(min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0))))
