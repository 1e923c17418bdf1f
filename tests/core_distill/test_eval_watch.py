"""The warning when a run's first evaluations fall well below its step-0 baseline (issue 22, item 6)."""

from __future__ import annotations

import pytest

from core_distill import metric_keys as mk
from core_distill.eval_watch import MIN_DROP, EvalDropWatch
from core_distill.reporting import JsonlReporter
from core_distill.spec import DistillSpec
from core_distill.train import run


def watch(rows: int = 100) -> EvalDropWatch:
    return EvalDropWatch(rows, learning_rate=1e-3, rows_per_step=16, max_steps=20)


def score(share: float) -> dict[str, float]:
    return {mk.EVAL_EXACT_MATCH: share}


def test_a_drop_beyond_twice_the_sampling_error_warns_once_naming_the_usual_causes():
    w = watch(rows=100)  # baseline 0.6: standard error sqrt(0.24 / 100) = 0.049, threshold 0.098
    assert w.threshold(0.6) == pytest.approx(2 * (0.24 / 100) ** 0.5)
    assert w.check(0, score(0.6)) is None
    assert w.check(10, score(0.51)) is None  # 9 points: within noise on 100 rows
    text = w.check(20, score(0.48))
    assert text is not None and "fell from 60.0% at step 0 to 48.0% at step 20" in text
    assert "learning_rate 0.001 with 16 rows per step" in text and "max_steps 20" in text
    assert w.check(30, score(0.1)) is None  # said once


def test_only_the_first_evaluations_are_watched_and_small_drops_never_count():
    w = watch(rows=100_000)  # a huge split: the sampling error is tiny, the floor MIN_DROP holds
    assert w.threshold(0.5) == MIN_DROP
    w.check(0, score(0.6))
    assert w.check(1, score(0.56)) is None and w.check(2, score(0.58)) is None
    assert w.check(3, score(0.0)) is None  # third evaluation: a run's later course is the user's to judge
    resumed = watch()  # no step-0 evaluation (a resumed run): nothing to compare with
    assert resumed.check(40, score(0.0)) is None
    assert watch().check(0, {}) is None  # no accuracy metric (no graded eval data)


def test_a_run_that_wrecks_the_shipped_student_says_so_and_finishes(tmp_path):
    """The shipped countdown student (about 62 % valid) with a learning rate 300x the preset's: 2 steps later
    it is far below step 0; the warning reaches warnings.txt and the run still ends with its model."""
    spec = DistillSpec.parse({
        "student": "toy:student", "teacher": "", "objective": "sft", "lmbda": 0.0, "train_data": "toy:train",
        "eval_data": "toy:eval", "eval_examples": 24, "eval_metric": "countdown", "eval_temperature": 1.0,
        "max_new_tokens": 48, "learning_rate": 0.3, "max_steps": 2, "batch_size": 8, "eval_every": 1,
        "save_every": 0,
    })  # fmt: skip
    result = run(spec, output_dir=tmp_path, reporter=JsonlReporter(tmp_path))
    assert result.model_dir is not None and result.step == 2
    warnings = (tmp_path / "warnings.txt").read_text().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {mk.EVAL_EXACT_MATCH} fell from ")
    assert "learning_rate 0.3 with 8 rows per step" in warnings[0]
