"""The chain task: worked solutions, the grader, disjoint splits, the shipped models, builds through the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from core_distill.evaluation import MATCHERS
from core_distill.paths import SHIPPED_TOY_DIR, resolve_data_path, resolve_model_path
from core_distill.toy.chain import (
    ChainRanges,
    answer,
    is_correct,
    make_splits,
    parse_prompt,
    prompt_text,
    random_chain,
    solution,
)
from core_distill.toy.chain_build import CHAIN_QUICK, ChainConfig, chain_splits, train_chain_model
from core_distill.toy.cli import CHAIN_REBUILD_BAND

SHIPPED_DIR = SHIPPED_TOY_DIR / "chain"
SHIPPED = json.loads((SHIPPED_DIR / "manifest.json").read_text())


def _fresh_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: an empty home, no DISTILL_TOY_DIR, no network for the hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILL_", "XDG_"))}
    return env | {"HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


def _distill(*args: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_a_chain_is_worked_line_by_line_to_its_one_answer():
    chain = (47, (8, -9, 6, -7))
    assert prompt_text(chain) == "47+8-9+6-7=?"
    assert solution(chain) == "47+8=55\n55-9=46\n46+6=52\n52-7=45\n#### 45"  # worked by hand
    assert answer(chain) == 45 and answer((91, (9, -3))) == 97
    # worked as written, though the generator never goes below 0 (next test)
    assert solution((12, (-5, -9, 3))) == "12-5=7\n7-9=-2\n-2+3=1\n#### 1"
    assert parse_prompt("<|user|>47+8-9+6-7=?<|assistant|>") == chain and parse_prompt("S=23 m=6") is None


def test_random_chains_stay_in_their_ranges():
    ranges, rng = ChainRanges(), random.Random(0)
    lengths = set()
    for _ in range(2000):
        start, ops = random_chain(rng, ranges)
        lengths.add(len(ops))
        assert ranges.start_min <= start <= ranges.start_max
        value = start
        for d in ops:
            assert ranges.operand_min <= abs(d) <= ranges.operand_max
            value += d
            assert 0 <= value <= ranges.value_max
        assert parse_prompt(prompt_text((start, ops))) == (start, ops)
    assert lengths == {3, 4, 5, 6}


@pytest.mark.parametrize(
    ("completion", "right"),
    [
        ("47+8=55\n55-9=46\n46+6=52\n52-7=45\n#### 45", True),
        ("47+8=55\n55-9=46\n46+6=52\n52-7=45\n#### 45 ", True),  # trailing whitespace is not an error
        ("47+8=54\n54-9=45\n45+6=51\n51-7=44\n#### 44", False),  # one missed carry, carried to the end
        ("47+8=55\n55-9=46\n46+6=52\n52-7=45\n#### 46", False),
        ("#### 45", True),  # only the final answer is graded
        ("#### 4", False),
        ("#### 450", False),
        ("", False),
    ],
)
def test_the_grader_checks_the_final_answer_against_the_chain(completion, right):
    prompt = "47+8-9+6-7=?"
    assert is_correct(completion, prompt) is right
    reference = solution(parse_prompt(prompt))
    # the specs grade with the existing final_answer matcher against the reference solution: the same verdicts
    assert MATCHERS["final_answer"](completion, reference, prompt) is right
    assert is_correct(completion, "no chain here") is False


def test_splits_never_share_a_prompt_and_are_a_pure_function_of_the_seed():
    config = ChainConfig()
    splits = chain_splits(config)
    prompts = {name: [r["messages"][0]["content"] for r in rows] for name, rows in splits.items()}
    assert len(set(prompts["test"])) == len(prompts["test"]) == 300 and len(set(prompts["eval"])) == 100
    assert len(prompts["train"]) == config.train_rows
    assert not set(prompts["train"]) & set(prompts["test"]) and not set(prompts["train"]) & set(prompts["eval"])
    assert not set(prompts["eval"]) & set(prompts["test"])
    for rows in splits.values():
        for row in rows:
            assert row["messages"][1]["content"] == solution(parse_prompt(row["messages"][0]["content"]))
    assert chain_splits(config) == splits and chain_splits(ChainConfig(seed=1)) != splits
    with pytest.raises(ValueError, match="not enough distinct prompts for split 'test'"):
        make_splits(0, {"test": 50, "train": 10}, ChainRanges(start_min=10, start_max=10, operand_min=2,
                                                               operand_max=2, steps_min=1, steps_max=1))  # fmt: skip


def test_the_shipped_data_is_the_recipe_of_the_manifest():
    splits = chain_splits(ChainConfig(**SHIPPED["config"]))
    for split, rows in splits.items():
        shipped = (SHIPPED_DIR / "data" / f"{split}.jsonl").read_text()
        assert shipped == "".join(json.dumps(r) + "\n" for r in rows), split
    assert SHIPPED["sizes"] == {name: len(rows) for name, rows in splits.items()}
    assert resolve_data_path("toy:chain/test") == SHIPPED_DIR / "data" / "test.jsonl"
    assert resolve_data_path("toy:test") == SHIPPED_TOY_DIR / "data" / "test.jsonl"  # countdown's, as before
    assert resolve_model_path("toy:chain/student") == SHIPPED_DIR / "student"


NO_STUDENT = pytest.mark.skipif(
    "student" not in SHIPPED["models"],
    reason="the chain task ships no student yet: every size tried either stays at the floor or matches the "
    "teacher once it learns the task (docs/engine.md, issue 19)",
)


def _converged(info: dict) -> None:
    """Over the last fifth of training, eval loss and eval accuracy are flat."""
    losses = [loss for _, loss in info["eval_loss_curve"]]
    assert abs(losses[-1] - losses[-3]) <= max(0.1 * losses[-1], 0.002), losses
    accuracies = [share for _, share in info["eval_accuracy_curve"]]
    assert abs(accuracies[-1] - accuracies[-3]) <= 0.1, accuracies  # 100 prompts: a standard error of ~5 points


def test_the_shipped_teacher_is_strong_and_converged():
    teacher = SHIPPED["models"]["teacher"]
    assert teacher["test_accuracy"] >= 0.9
    _converged(teacher)
    assert sum(f.stat().st_size for f in SHIPPED_DIR.rglob("*") if f.is_file()) < 5_000_000


@NO_STUDENT
def test_the_shipped_student_is_converged_and_leaves_room():
    teacher, student = SHIPPED["models"]["teacher"], SHIPPED["models"]["student"]
    assert 0.3 <= student["test_accuracy"] <= 0.7 and teacher["test_accuracy"] > student["test_accuracy"] + 0.2
    assert teacher["parameters"] > 1.5 * student["parameters"]
    _converged(student)


def test_distill_eval_of_the_shipped_models_prints_the_manifest_accuracy(tmp_path):
    for name in SHIPPED["models"]:  # the teacher (and the student, once one is shipped)
        done = _distill("eval", f"toy:chain/{name}", "--data", "toy:chain/test", "--teacher", "toy:chain/teacher",
                        "--json", env=_fresh_env(tmp_path))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout[done.stdout.index("{") :])
        assert (report["metric"], report["temperature"], report["examples"]) == ("final_answer", 0.0, 300)
        # greedy decoding of the same weights: at most one prompt may flip on another machine's float order
        assert report["accuracy"] == pytest.approx(SHIPPED["models"][name]["test_accuracy"], abs=1.01 / 300), name
    assert not (tmp_path / "home" / ".cache" / "distill").exists()  # nothing was built or downloaded


def test_a_quick_build_through_the_cli_is_usable_as_the_toy_folder(tmp_path):
    from core_distill.spec import DistillSpec

    folder = tmp_path / "b"
    done = _distill("toy", "build", str(folder), "--task", "chain", "--quick", env=_fresh_env(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "building the chain task into" in done.stdout and f"DISTILL_TOY_DIR={folder}" in done.stdout
    manifest = json.loads((folder / "chain" / "manifest.json").read_text())
    assert manifest["task"] == "chain" and ChainConfig(**manifest["config"]) == CHAIN_QUICK
    assert manifest["sizes"] == {
        "eval": CHAIN_QUICK.eval_rows,
        "test": CHAIN_QUICK.test_rows,
        "train": CHAIN_QUICK.train_rows,
    }
    for name in ("teacher", "student"):
        info = manifest["models"][name]
        assert (folder / "chain" / name / "config.json").exists() and 0.0 <= info["test_accuracy"] <= 1.0
        assert len(info["eval_loss_curve"]) == len(info["eval_accuracy_curve"]) == 10
    assert "shipped:" not in done.stdout  # another recipe is not set beside the shipped models
    spec = DistillSpec.from_yaml(Path(__file__).parents[3] / "examples" / "chain" / "supervised_kd.yaml")
    env = {"DISTILL_TOY_DIR": str(folder)}
    check = subprocess.run([sys.executable, "-c", "import sys\nfrom core_distill.paths import resolve_data_path as r\n"
                            "print(r('toy:chain/train'))"], env=_fresh_env(tmp_path, **env), capture_output=True, text=True)  # fmt: skip
    assert (
        check.stdout.strip() == str(folder / "chain" / "data" / "train.jsonl") and spec.train_data == "toy:chain/train"
    )
    again = _distill("toy", "build", str(folder), "--task", "chain", "--quick", env=_fresh_env(tmp_path), timeout=300)
    assert again.returncode == 0 and "already holds a build" in again.stdout
    for bad in ("--task", "--set"):
        args = ["--task", "chain", "--set", "operand_maxx=3"] if bad == "--set" else ["--task", "sums"]
        refused = _distill("toy", "build", str(tmp_path / "c"), "--quick", *args, env=_fresh_env(tmp_path))
        assert refused.returncode == 2 and not (tmp_path / "c").exists(), refused.stderr
        assert {"--task": "expected one of countdown, chain, got 'sums'",
                "--set": "did you mean 'operand_max'?"}[bad] in refused.stderr  # fmt: skip
    shipped = _distill("toy", "build", str(SHIPPED_TOY_DIR), "--task", "chain", "--quick", env=_fresh_env(tmp_path))
    assert shipped.returncode == 2 and "is the shipped build" in shipped.stderr


@pytest.mark.slow
def test_the_first_tenth_of_a_rebuild_lands_within_the_stated_band_of_the_shipped_curves(tmp_path):
    """The recipe, not the weights: each model's first tenth retrained from scratch (same seeds, data and
    schedule; minutes, where the whole build takes a quarter of an hour) against the shipped curves' first point."""
    config = ChainConfig(**SHIPPED["config"])
    for name in SHIPPED["models"]:
        shipped = SHIPPED["models"][name]
        got = train_chain_model(name, config, tmp_path, stop_after=shipped["steps"] // 10)
        (step, loss), (_, accuracy) = got["eval_loss_curve"][0], got["eval_accuracy_curve"][0]
        assert step == shipped["eval_loss_curve"][0][0], (name, step)
        assert abs(loss - shipped["eval_loss_curve"][0][1]) <= CHAIN_REBUILD_BAND * shipped["eval_loss_curve"][0][1], (
            name, loss, shipped["eval_loss_curve"][0])  # fmt: skip
        assert abs(accuracy - shipped["eval_accuracy_curve"][0][1]) <= CHAIN_REBUILD_BAND, (name, accuracy)
