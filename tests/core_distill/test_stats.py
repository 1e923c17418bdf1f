"""core_distill.compare.stats against independent computations: the closed-form bootstrap variance, and the exact
bootstrap distribution of tiny tables enumerated over every one of the n**n equally likely resamples."""

import itertools
import math
import statistics

import numpy as np
import pytest

from core_distill.compare.stats import (
    MIN_TAIL_RESAMPLES,
    Interval,
    SeedSpread,
    bootstrap_mean,
    bootstrap_p_value,
    claims,
    compare_all,
    merge_seeds,
    model_score,
    paired_difference,
    resampled_scores,
    seed_spread,
    selection_uncertainty,
)


def scores_from_successes(successes, samples=6, prefix="p"):
    """Prompt p0, p1, ... with `k` of `samples` completions valid (1) and the rest 0."""
    return {f"{prefix}{i}": [1.0] * k + [0.0] * (samples - k) for i, k in enumerate(successes)}


def exact_bootstrap(values):
    """Every resample of n prompts out of n (n**n index tuples, equally likely): the sorted resampled means."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    tuples = np.array(list(itertools.product(range(n), repeat=n)))  # (n**n, n)
    return np.sort(values[tuples].mean(axis=1))


def exact_cdf(atoms, x, strict=False):
    """P(mean* < x) when strict, else P(mean* <= x), with float slack around the atoms."""
    return float(np.mean(atoms < x - 1e-12)) if strict else float(np.mean(atoms <= x + 1e-12))


def assert_is_quantile(atoms, q, p, tol):
    """q is a p-quantile of the exact distribution up to `tol` in probability: P(< q) <= p <= P(<= q)."""
    assert exact_cdf(atoms, q, strict=True) <= p + tol, (q, p)
    assert exact_cdf(atoms, q) >= p - tol, (q, p)


def test_model_score_weighs_every_prompt_the_same():
    assert model_score({"easy": [1.0] * 10, "hard": [0.0, 0.0]}) == 0.5  # not 10 / 12
    assert model_score(scores_from_successes([6, 3, 0])) == pytest.approx(0.5)


def test_bootstrap_variance_is_the_closed_form():
    # per-prompt means x; the bootstrap variance of their mean is (1/n) * (1/n) * sum (x_i - mean)^2
    scores = {"a": [1, 1, 0], "b": [0], "c": [1, 0], "d": [1, 1, 1, 1], "e": [0, 0, 1], "f": [1, 0, 0, 0]}
    x = np.array([2 / 3, 0, 1 / 2, 1, 1 / 3, 1 / 4])
    n = len(x)
    closed_form = ((x - x.mean()) ** 2).sum() / n / n
    assert exact_bootstrap(x).var() == pytest.approx(closed_form, rel=1e-12)  # the formula itself, over 6**6 resamples
    boot = resampled_scores(scores, n_resamples=40_000, seed=3)
    assert boot.shape == (40_000,)
    assert boot.mean() == pytest.approx(x.mean(), abs=4 * math.sqrt(closed_form / 40_000))
    # the sample variance of 40,000 draws has a relative standard error near sqrt(2 / 40,000) = 0.7 %
    assert boot.var() == pytest.approx(closed_form, rel=0.04)


def test_interval_percentiles_match_the_exact_distribution():
    # 4 prompts x 6 samples: the exact bootstrap has 4**4 = 256 equally likely resamples
    successes = [1, 2, 4, 6]
    atoms = exact_bootstrap(np.array(successes) / 6)
    interval = bootstrap_mean(scores_from_successes(successes), confidence=0.9, n_resamples=20_000, seed=1)
    assert interval.estimate == pytest.approx(13 / 24)
    assert interval.n_prompts == 4 and interval.n_resamples == 20_000 and interval.confidence == 0.9
    # Monte Carlo error of a tail fraction at 20,000 draws: sd about 0.0015; tolerance 0.006 is 4 sd
    assert_is_quantile(atoms, interval.low, 0.05, tol=0.006)
    assert_is_quantile(atoms, interval.high, 0.95, tol=0.006)


def test_paired_interval_and_p_value_match_the_exact_distribution():
    # A - B per prompt, in sixths: -1, 1, 1, 3, 5; the exact distribution of the mean difference has 5**5 atoms
    a = scores_from_successes([2, 3, 4, 4, 6])
    b = scores_from_successes([3, 2, 3, 1, 1])
    atoms = exact_bootstrap(np.array([-1, 1, 1, 3, 5]) / 6)
    exact_p = 2 * min(exact_cdf(atoms, 0.0), 1 - exact_cdf(atoms, 0.0, strict=True))
    assert exact_p == pytest.approx(2 * 56 / 3125)  # 56 of the 3125 resamples have a mean difference <= 0
    interval = paired_difference(a, b, n_resamples=20_000, seed=2)
    assert interval.estimate == pytest.approx(9 / 30)
    assert_is_quantile(atoms, interval.low, 0.025, tol=0.006)
    assert_is_quantile(atoms, interval.high, 0.975, tol=0.006)
    assert interval.excludes_zero  # exact P(d* <= 0) = 0.018 < 0.025
    assert bootstrap_p_value(a, b, n_resamples=20_000, seed=2) == pytest.approx(exact_p, abs=0.006)
    assert bootstrap_p_value(b, a, n_resamples=20_000, seed=2) == pytest.approx(exact_p, abs=0.006)


def test_a_constant_gain_has_a_zero_width_interval_at_that_gain():
    a = scores_from_successes([0, 1, 2, 3, 2], samples=4)
    b = scores_from_successes([1, 2, 3, 4, 3], samples=4)  # one more valid sample of four on every prompt
    interval = paired_difference(b, a)
    assert interval.estimate == pytest.approx(0.25, abs=1e-12)
    assert interval.low == pytest.approx(0.25, abs=1e-12) and interval.high == pytest.approx(0.25, abs=1e-12)
    assert interval.excludes_zero and bootstrap_p_value(b, a) == 0.0
    same = paired_difference(a, a)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    assert not same.excludes_zero and bootstrap_p_value(a, a) == 1.0


def test_paired_comparisons_refuse_different_prompts():
    a = scores_from_successes([1, 2, 3])
    b = {k: v for k, v in a.items() if k != "p2"} | {"p9": [1.0]}
    with pytest.raises(ValueError, match=r"b: .*1 prompt \('p2'\) missing, 1 prompt \('p9'\) not in a"):
        paired_difference(a, b)
    with pytest.raises(ValueError, match=r"sft: .*'p2'"):
        compare_all({"student": a, "sft": b}, baseline="student")
    with pytest.raises(ValueError, match=r"lr 1e-3: .*'p2'"):
        selection_uncertainty({"lr 3e-4": a, "lr 1e-3": b})
    with pytest.raises(ValueError, match=r"seed 1: .*'p2'"):
        merge_seeds([a, b])


def test_same_seed_same_interval_and_another_seed_another():
    scores = scores_from_successes([0, 1, 3, 5, 6, 2, 4, 4])
    assert bootstrap_mean(scores, seed=7) == bootstrap_mean(dict(reversed(list(scores.items()))), seed=7)
    assert bootstrap_mean(scores, seed=7).low != bootstrap_mean(scores, seed=8).low


def test_bonferroni_on_a_hand_worked_family():
    # Three models, so three comparisons, each at 1 - 0.05 / 3 = 98.33 % (a tail of 0.83 % each side).
    # A - B is the table above: exact P(d* <= 0) = 0.0179 (56 / 3125) and P(d* < 0) = 0.0179, so its
    # 95 % interval excludes 0 (0.0179 < 0.025) and its 98.33 % interval does not (0.0179 > 0.0083).
    a = scores_from_successes([2, 3, 4, 4, 6])
    b = scores_from_successes([3, 2, 3, 1, 1])
    student = scores_from_successes([0, 0, 0, 0, 0])
    atoms = exact_bootstrap(np.array([-1, 1, 1, 3, 5]) / 6)
    assert 0.0083 < exact_cdf(atoms, 0.0, strict=True) <= exact_cdf(atoms, 0.0) < 0.025
    assert paired_difference(a, b).excludes_zero  # alone, at 95 %

    family = compare_all({"student": student, "B": b, "A": a}, baseline="student")
    assert [(c.a, c.b) for c in family] == [("B", "student"), ("A", "student"), ("A", "B")]  # better model first
    for c in family:
        assert c.n_comparisons == 3 and c.family_confidence == 0.95
        assert c.adjusted_confidence == pytest.approx(1 - 0.05 / 3)
        assert c.p_adjusted == min(1.0, 3 * c.p_value)
    b_vs_student, a_vs_student, a_vs_b = family
    assert b_vs_student.shown and a_vs_student.shown and not a_vs_b.shown
    assert a_vs_b.interval.estimate == pytest.approx(0.3)
    assert_is_quantile(atoms, a_vs_b.interval.low, 0.05 / 6, tol=0.005)
    # one rule for the interval and the claim: the same as a single paired interval at the adjusted level
    assert a_vs_b.interval == paired_difference(a, b, confidence=1 - 0.05 / 3)
    assert claims(family) == [
        f"B beats student by {b_vs_student.interval.text()}; 3 comparisons, Bonferroni for 95 % family-wise",
        f"A beats student by {a_vs_student.interval.text()}; 3 comparisons, Bonferroni for 95 % family-wise",
        f"no difference shown between A and B: A - B = {a_vs_b.interval.text()}; "
        "3 comparisons, Bonferroni for 95 % family-wise",
    ]
    assert "(98.33 % CI +" in claims(family)[0]


def test_a_worse_model_is_claimed_as_such_and_without_a_baseline_every_pair_counts():
    student = scores_from_successes([3, 3, 3, 3])
    worse = scores_from_successes([0, 1, 0, 1])
    [c] = compare_all({"student": student, "opsd": worse}, baseline="student")
    assert (c.a, c.b) == ("opsd", "student") and c.interval.high < 0
    assert claims([c])[0].startswith("student beats opsd by +41.7 points (95 % CI +")
    models = {name: scores_from_successes([k, k, k]) for k, name in enumerate("ABCD")}
    family = compare_all(models, baseline=None)
    assert len(family) == 6 and all(c.n_comparisons == 6 for c in family)
    assert all(c.interval.estimate > 0 for c in family)  # the higher-scoring model is A


def test_resamples_are_raised_to_fill_the_adjusted_tails():
    # nine rows (a baseline and eight methods): 36 comparisons at 99.86 %, 50 resamples beyond each tail
    models = {f"m{k}": scores_from_successes([k % 7, (k + 2) % 7, 3]) for k in range(9)}
    family = compare_all(models, baseline="m0")
    assert len(family) == 36
    assert family[0].interval.n_resamples == math.ceil(MIN_TAIL_RESAMPLES / (0.05 / 72)) == 72_000
    assert bootstrap_mean(models["m1"], confidence=0.999).n_resamples == 100_000
    assert bootstrap_mean(models["m1"]).n_resamples == 10_000


def test_interval_text():
    assert Interval(0.063, 0.021, 0.104, 0.95, 50, 10_000).text() == "+6.3 points (95 % CI +2.1 to +10.4)"
    assert Interval(-0.0001, -0.05, 0.04, 1 - 0.05 / 36, 50, 10_000).text() == "+0.0 points (99.86 % CI -5.0 to +4.0)"
    score = Interval(0.617, 0.55, 0.683, 0.95, 50, 10_000)
    assert score.text(unit=" %", signed=False) == "61.7 % (95 % CI 55.0 to 68.3)"
    assert score.text(scale=1, unit="", digits=3) == "+0.617 (95 % CI +0.550 to +0.683)"
    assert score.negated() == Interval(-0.617, -0.683, -0.55, 0.95, 50, 10_000)


def test_selection_shows_whether_the_best_setting_stands_out():
    clear = selection_uncertainty(
        {
            "lr 1e-4": scores_from_successes([0, 1, 0, 1, 0, 1, 0, 1]),
            "lr 1e-3": scores_from_successes([6, 5, 6, 5, 6, 6, 5, 6]),
            "lr 3e-4": scores_from_successes([2, 1, 2, 1, 2, 1, 2, 2]),
        }
    )
    assert clear.best == "lr 1e-3" and clear.runner_up == "lr 3e-4"
    assert list(clear.intervals) == ["lr 1e-3", "lr 3e-4", "lr 1e-4"]
    assert clear.intervals["lr 1e-3"] == bootstrap_mean(scores_from_successes([6, 5, 6, 5, 6, 6, 5, 6]))
    assert clear.n_comparisons == 2 and clear.distinguishable and clear.tied_with_best == []
    assert clear.gaps["lr 3e-4"].confidence == pytest.approx(1 - 0.05 / 2)
    assert clear.text().startswith("lr 1e-3: 93.8 % (95 % CI ")
    assert clear.text().endswith(": distinguishable on 8 prompts")

    noisy = selection_uncertainty(
        {"T 0.3": scores_from_successes([3, 4, 2, 5, 3, 1]), "T 1": scores_from_successes([4, 2, 3, 4, 3, 3])}
    )
    assert noisy.best == "T 1" and not noisy.distinguishable and noisy.tied_with_best == ["T 0.3"]
    assert noisy.gaps["T 0.3"].confidence == 0.95  # one comparison: no adjustment
    assert "not distinguishable on 6 prompts" in noisy.text()

    only = selection_uncertainty({"lr 3e-4": scores_from_successes([1, 2])})
    assert only.runner_up is None and not only.distinguishable and only.gaps == {}


def test_merged_seeds_and_the_spread_between_them():
    seed0 = {"p0": [1.0, 0.0], "p1": [1.0, 1.0]}
    seed1 = {"p1": [0.0, 1.0], "p0": [0.0, 0.0]}
    seed2 = {"p0": [1.0, 1.0], "p1": [1.0, 0.0]}
    merged = merge_seeds([seed0, seed1, seed2])
    assert merged == {"p0": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0], "p1": [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]}
    spread = seed_spread([seed0, seed1, seed2])
    assert spread.per_seed == (0.75, 0.25, 0.75) and spread.n_seeds == 3
    assert spread.mean == pytest.approx(statistics.mean([0.75, 0.25, 0.75]))
    assert spread.sd == pytest.approx(statistics.stdev([0.75, 0.25, 0.75]))
    assert model_score(merged) == pytest.approx(spread.mean)  # equal samples per seed: the same score
    assert spread.text() == "58.3 ± 28.9 % over 3 seeds"
    single = seed_spread([seed0])
    assert math.isnan(single.sd) and single.text() == "75.0 % over 1 seed"
    assert SeedSpread((0.5, 0.7)).mean == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_mean({"p0": [1.0]}, confidence=1.5), "confidence: must be between 0 and 1"),
        (lambda: bootstrap_mean({"p0": [1.0]}, n_resamples=0), "n_resamples: must be a positive integer"),
        (lambda: bootstrap_mean({}), "no prompts"),
        (lambda: bootstrap_mean({"p0": [1.0], "p1": []}), "prompt 'p1' has no samples"),
        (lambda: bootstrap_mean({"p0": [1.0, math.nan]}), "prompt 'p0' has a score that is not a finite number"),
        (lambda: compare_all({"a": {"p": [1.0]}}, baseline=None), "models: compare_all needs at least 2 models"),
        (lambda: compare_all({"a": {"p": [1.0]}, "b": {"p": [0.0]}}, baseline="c"), "baseline: 'c' is not one"),
        (lambda: selection_uncertainty({}), "settings: no settings"),
        (lambda: merge_seeds([]), "per_seed: no seeds"),
        (lambda: seed_spread([]), "per_seed: no seeds"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
