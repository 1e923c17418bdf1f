"""The shipped build of the countdown task: usable at once on any machine, and reproducible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core_distill.paths import SHIPPED_TOY_DIR
from core_distill.toy.build import ToyConfig, toy_splits, train_toy_model
from core_distill.toy.cli import REBUILD_BAND

SHIPPED = json.loads((SHIPPED_TOY_DIR / "manifest.json").read_text())


def _fresh_env(tmp_path: Path) -> dict[str, str]:
    """A new user's environment: an empty home, no cache, no DISTILL_TOY_DIR, no network for the hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILL_", "XDG_"))}
    env |= {"HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return env


def test_the_shipped_models_are_a_better_teacher_and_a_converged_smaller_student():
    teacher, student = SHIPPED["models"]["teacher"], SHIPPED["models"]["student"]
    assert teacher["test_validity"] > student["test_validity"] + 0.05  # room for distillation to show
    assert student["test_validity"] >= 0.2  # not at the floor: a change in either direction can be seen
    assert teacher["layers"] > student["layers"] and teacher["parameters"] > 1.5 * student["parameters"]
    for info in (teacher, student):  # converged: over the last fifth, eval loss and eval validity are flat
        losses = [loss for _, loss in info["eval_loss_curve"]]
        assert losses[-1] == pytest.approx(losses[-3], rel=0.05), losses
        valid = [share for _, share in info["eval_validity_curve"]]
        assert abs(valid[-1] - valid[-3]) <= 0.1, valid  # 100 sampled walks: a standard error of about 5 points


def test_eval_of_the_shipped_student_works_at_once_and_prints_the_documented_accuracy(tmp_path):
    done = subprocess.run(
        # the manifest's figure is one draw per row from seed 0 (`distill eval` samples 4 per row by default)
        [sys.executable, "-m", "app.cli", "eval", "toy:student", "--data", "test", "--teacher", "toy:teacher", "--json",
         "--samples-per-prompt", "1", "--seeds", "0"],
        env=_fresh_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["examples"] == SHIPPED["sizes"]["test"] and report["metric"] == "countdown"
    # the same weights and draws: at most one row may flip on another machine's float order
    assert report["accuracy"] == pytest.approx(
        SHIPPED["models"]["student"]["test_validity"], abs=1.01 / report["examples"]
    )
    assert not (tmp_path / "home" / ".cache" / "distill").exists()  # nothing was built or downloaded


@pytest.mark.slow
def test_the_first_fifth_of_a_rebuild_lands_within_the_stated_band_of_the_shipped_curves(tmp_path):
    """The recipe, not the shipped weights: each model's first fifth retrained from scratch (same seeds, data and
    schedule; a few minutes, where the whole `distill toy build` takes half an hour on a loaded box) against the
    first two points of the shipped curves."""
    config = ToyConfig(**SHIPPED["config"])
    for split, rows in toy_splits(config).items():  # the data is a pure function of the seed
        shipped_rows = (SHIPPED_TOY_DIR / "data" / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in shipped_rows] == rows, split
    threads = torch.get_num_threads()  # the build trains on one thread; the tests after this keep theirs
    try:
        rebuilt = {name: train_toy_model(name, config, tmp_path, stop_after=shipped["steps"] // 5)
                   for name, shipped in SHIPPED["models"].items()}  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    for name, shipped in SHIPPED["models"].items():
        got = rebuilt[name]
        assert [step for step, _ in got["eval_loss_curve"]] == [step for step, _ in shipped["eval_loss_curve"][:2]]
        for (_, loss), (_, shipped_loss) in zip(got["eval_loss_curve"], shipped["eval_loss_curve"], strict=False):
            assert abs(loss - shipped_loss) <= REBUILD_BAND * shipped_loss, (name, got["eval_loss_curve"])
        for (_, share), (_, shipped_share) in zip(got["eval_validity_curve"], shipped["eval_validity_curve"],
                                                  strict=False):  # fmt: skip
            assert abs(share - shipped_share) <= REBUILD_BAND, (name, got["eval_validity_curve"])
