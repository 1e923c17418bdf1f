"""The built-in countdown task: valid walks, the rule check, disjoint splits, tokenizer, builds."""

from __future__ import annotations

import json
import math
import random

import pytest

from core_distill.data.batches import encode_rows
from core_distill.evaluation import countdown_valid
from core_distill.toy.build import QUICK, ToyConfig, mixed_training_examples
from core_distill.toy.task import (
    LINE_RE,
    all_prompts,
    allowed_steps,
    diverging_hint,
    hinted_prompt,
    is_valid_walk,
    make_splits,
    parse_prompt,
    random_walk,
    strategy_prompt,
    strategy_walk,
    walk_log_likelihood,
)
from core_distill.toy.tokenizer import build_tokenizer


def test_every_generated_walk_is_valid_and_walks_differ():
    rng = random.Random(0)
    for start, max_step in all_prompts():
        walk = random_walk(start, max_step, rng)
        assert is_valid_walk(walk, start, max_step), (start, max_step, walk)
    walks = {random_walk(29, 9, rng) for _ in range(200)}
    assert len(walks) > 100  # many valid answers per prompt: the teacher's distribution has entropy


@pytest.mark.parametrize(
    ("walk", "why"),
    [
        ("-7=16\n-9=7\n-3=4\n-1=3\n-3=0", None),
        ("-7=16\n-9=7\n-3=4\n-1=3\n-3=1", "does not end at 0"),
        ("-7=16\n-9=8\n-3=5\n-5=0", "wrong subtraction"),
        ("-10=13\n-9=4\n-3=1\n-1=0", "a step above m"),
        ("-7=16\n-9=7\n-3=4\n-5=-1", "overshoots"),
        ("-7=16\n-9=7\n-7=0\n-1=0", "a line after reaching 0"),
        ("-7=16\n-9=7", "stops early"),
        ("-7=16\n-9=7\n-7=0 ", None),  # trailing whitespace is not an error
        ("-7=16\n-9=7\nhello", "not a step"),
        ("", "empty"),
    ],
)
def test_the_rule_check_finds_each_kind_of_error(walk, why):
    assert is_valid_walk(walk, 23, 9) is (why is None), why
    assert countdown_valid(walk, "any reference", "S=23 m=9") is (why is None)


def test_steps_likelihood_and_the_hinted_prompt():
    assert allowed_steps(5, 9) == [1, 2, 3, 4, 5] and allowed_steps(20, 6) == [1, 2, 3, 4, 5, 6]
    assert walk_log_likelihood("-1=0", 1, 9) == 0.0  # one allowed step from 1
    assert walk_log_likelihood("-1=1\n-1=0", 2, 9) == pytest.approx(-math.log(2))
    assert walk_log_likelihood("-2=0", 1, 9) is None
    assert hinted_prompt(23, 9, "-9=14\n-9=5\n-5=0") == "S=23 m=9\nhint:\n-9=14\n-9=5\n-5=0"
    assert parse_prompt("<|user|>S=23 m=9<|assistant|>") == (23, 9) and parse_prompt("3+4=") is None
    assert countdown_valid("-7=16", "", "no prompt here") is False


def test_splits_never_share_a_prompt_and_carry_the_privileged_prompt():
    splits = make_splits(seed=3, sizes={"eval": 50, "test": 80, "train": 2000}, prompt_counts={"eval": 50, "test": 80})
    prompts = {name: {r["messages"][0]["content"] for r in rows} for name, rows in splits.items()}
    assert len(prompts["eval"]) == 50 and len(prompts["test"]) == 80
    assert len(prompts["train"]) == len(all_prompts()) - 130
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["eval"]
    assert not prompts["eval"] & prompts["test"]
    for rows in splits.values():
        for row in rows:
            task = parse_prompt(row["messages"][0]["content"])
            assert is_valid_walk(row["messages"][1]["content"], *task)
            assert row["teacher_prompt"] == hinted_prompt(*task, row["messages"][1]["content"])
    again = make_splits(seed=3, sizes={"eval": 50, "test": 80, "train": 2000}, prompt_counts={"eval": 50, "test": 80})
    assert again == splits  # pure function of the seed: the same data on every machine
    with pytest.raises(ValueError, match="not enough distinct prompts"):
        make_splits(seed=0, sizes={"test": 10, "train": 5}, prompt_counts={"test": len(all_prompts())})


def _steps(walk: str) -> list[int]:
    return [int(LINE_RE.fullmatch(line).group(1)) for line in walk.split("\n")]


def test_a_diverging_hint_is_a_valid_walk_that_follows_the_row_and_then_leaves_it():
    rng = random.Random(0)
    forks = set()
    for _ in range(300):
        start, max_step = rng.choice(all_prompts())
        walk = random_walk(start, max_step, rng)
        hint = diverging_hint(walk, start, max_step, rng)
        assert is_valid_walk(hint, start, max_step), (walk, hint)
        ours, theirs = _steps(walk), _steps(hint)
        if walk == hint:  # only when no line had another allowed step
            assert all(len(allowed_steps(start - sum(ours[:i]), max_step)) == 1 for i in range(len(ours)))
            continue
        fork = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
        forks.add(fork)
    assert len(forks) > 5  # the hint leaves the walk at many different lines, the first included
    assert 0 in forks


def test_only_the_splits_named_in_diverge_get_diverging_hints():
    sizes, counts = {"eval": 30, "test": 30, "train": 400}, {"eval": 30, "test": 30}
    plain = make_splits(seed=1, sizes=sizes, prompt_counts=counts)
    mixed = make_splits(seed=1, sizes=sizes, prompt_counts=counts, diverge={"train": 0.5})
    assert mixed["eval"] == plain["eval"] and mixed["test"] == plain["test"]  # eval/test hints: the row's walk
    left = [r for r in mixed["train"] if r["teacher_prompt"].split("hint:\n")[1] != r["messages"][1]["content"]]
    assert 0.35 < len(left) / len(mixed["train"]) < 0.6
    for row in left:
        task = parse_prompt(row["messages"][0]["content"])
        assert is_valid_walk(row["teacher_prompt"].split("hint:\n")[1], *task)
    assert make_splits(seed=1, sizes=sizes, prompt_counts=counts, diverge={"train": 0.5}) == mixed


def test_the_land_on_tens_walk_borrows_only_from_multiples_of_ten():
    for start, max_step in all_prompts():
        walk = strategy_walk(start, max_step, "land_on_tens")
        assert is_valid_walk(walk, start, max_step), (start, max_step, walk)
        remainder = start
        for line in walk.split("\n"):
            step, result = (int(g) for g in LINE_RE.fullmatch(line).groups())
            if remainder % 10 == 0 or remainder < 10:
                assert step == min(max_step, remainder)
            else:  # no borrow: the units digit of the remainder covers the step
                assert remainder % 10 >= step and (result % 10 == 0 or step == max_step)
            remainder = result
    assert strategy_walk(39, 6, "land_on_tens") == "-6=33\n-3=30\n-6=24\n-4=20\n-6=14\n-4=10\n-6=4\n-4=0"
    with pytest.raises(ValueError, match=r"hint: expected 'walk' or one of \['land_on_tens'\], got 'greedy'"):
        make_splits(seed=0, sizes={"x": 1}, prompt_counts={}, hint="greedy")


def test_a_strategy_hint_is_in_the_teacher_prompt_and_hinted_training_rows_follow_it():
    config = ToyConfig(hint="land_on_tens", hint_share=0.5)
    splits = make_splits(seed=2, sizes={"test": 20, "train": 200}, prompt_counts={"test": 20}, hint="land_on_tens")
    for row in splits["test"] + splits["train"]:
        start, max_step = parse_prompt(row["messages"][0]["content"])
        assert (
            row["teacher_prompt"]
            == strategy_prompt(start, max_step, "land_on_tens")
            == f"S={start} m={max_step}\nhint: land on tens"
        )
        assert is_valid_walk(row["messages"][1]["content"], start, max_step)  # the plain view keeps its random walk
    tokenizer = build_tokenizer()
    examples = encode_rows(splits["train"], tokenizer, max_prompt_length=64, max_completion_length=256, source="t")
    mixed = mixed_training_examples(examples, config, tokenizer)
    hinted = [m for m in mixed if m.prompt_ids == m.teacher_prompt_ids]
    assert 60 < len(hinted) < 140  # about hint_share of the rows
    takeovers = []
    for m, e in zip(mixed, examples, strict=True):
        start, max_step = parse_prompt(tokenizer.decode(e.prompt_ids))
        shown = tokenizer.decode(m.completion_ids, skip_special_tokens=True)
        if m.prompt_ids == m.teacher_prompt_ids:  # the row's walk for some lines, then the strategy from there
            own, lines = e.completion_text.split("\n"), shown.split("\n")
            kept = next(k for k in range(len(lines) + 1) if k == len(own) or lines[k] != own[k])
            remainder = int(LINE_RE.fullmatch(lines[kept - 1]).group(2)) if kept else start
            rest = [strategy_walk(remainder, max_step, "land_on_tens")] if remainder else []  # all kept: it was one
            assert shown == "\n".join(own[:kept] + rest)
            takeovers.append(kept)
        else:
            assert m == e
    assert takeovers.count(0) < len(takeovers) / 2 and max(takeovers) >= 3  # the strategy takes over at many lines


def test_a_build_can_draw_its_prompts_from_other_ranges():
    from core_distill.toy.build import toy_splits

    config = ToyConfig(train_rows=300, eval_prompts=10, eval_rows=10, test_prompts=20, test_rows=20,
                       start_min=20, start_max=49, max_step_min=3, max_step_max=7)  # fmt: skip
    splits = toy_splits(config)
    seen = {parse_prompt(r["messages"][0]["content"]) for rows in splits.values() for r in rows}
    assert seen <= {(s, m) for s in range(20, 50) for m in range(3, 8)} and len(seen) == 150  # 10 + 20 + the rest
    assert any(m == 7 for _, m in seen) and any(s == 49 for s, _ in seen)
    assert toy_splits(ToyConfig(train_rows=300, eval_prompts=10, eval_rows=10, test_prompts=20, test_rows=20)) != splits


def test_tokenizer_round_trips_and_the_prompt_is_a_prefix(tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    row = make_splits(seed=0, sizes={"x": 1}, prompt_counts={})["x"][0]
    answer = row["messages"][1]["content"]
    assert tokenizer.decode(tokenizer(answer)["input_ids"]) == answer
    (example,) = encode_rows([row], tokenizer, max_prompt_length=64, max_completion_length=256, source="t")
    assert tokenizer.decode(example.completion_ids) == answer + "<|eos|>"
    assert tokenizer.decode(example.prompt_ids).endswith("<|assistant|>")
    assert len(tokenizer(answer)["input_ids"]) == len(answer)  # one token per character
    assert tokenizer.decode(example.teacher_prompt_ids).endswith(row["teacher_prompt"] + "<|assistant|>")


def test_miniature_build_writes_loadable_models_and_a_manifest(quick_toy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, manifest = quick_toy
    for name in ("teacher", "student"):
        model = AutoModelForCausalLM.from_pretrained(folder / name)
        assert model.config.head_dim == 32
        AutoTokenizer.from_pretrained(folder / name)
        info = manifest["models"][name]
        assert 0.0 <= info["test_validity"] <= 1.0 and 0.0 <= info["test_validity_with_hint"] <= 1.0
        assert len(info["eval_loss_curve"]) == 10
        assert [s for s, _ in info["eval_validity_curve"]] == [s for s, _ in info["eval_loss_curve"]]
        assert all(0.0 <= v <= 1.0 for _, v in info["eval_validity_curve"])
    assert manifest["models"]["teacher"]["parameters"] > 2 * manifest["models"]["student"]["parameters"]
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 0 and manifest["build_seconds"] > 0 and manifest["task"] == "countdown"
    for split, size in manifest["sizes"].items():
        assert len((folder / "data" / f"{split}.jsonl").read_text().splitlines()) == size
    assert manifest["sizes"]["train"] == QUICK.train_rows
    tokenizer = AutoTokenizer.from_pretrained(folder / "teacher")
    generation = json.loads((folder / "teacher" / "generation_config.json").read_text())
    assert (generation["pad_token_id"], generation["eos_token_id"]) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_toy_build_set_changes_the_recipe_and_refuses_a_bad_field(tmp_path):
    import subprocess
    import sys

    def build(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "app.cli", "toy", "build", str(tmp_path / "b"), "--quick", *args],
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    for bad, message in [
        ("studnet_steps=3", "'studnet_steps' is not a toy build field; did you mean 'student_steps'?"),
        ("student_steps=many", "student_steps: expected int, got 'many'"),
        ("hint=greedy", "hint: expected 'walk' or one of ['land_on_tens'], got 'greedy'"),
    ]:
        done = build("--set", bad)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert not (tmp_path / "b").exists()  # nothing written
    done = build("--set", "hint=land_on_tens", "--set", "student_steps=3", "--set", "start_max=20")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["config"]["hint"] == "land_on_tens" and manifest["models"]["student"]["steps"] == 3
    rows = [json.loads(line) for line in (tmp_path / "b" / "data" / "test.jsonl").read_text().splitlines()]
    assert all(parse_prompt(r["messages"][0]["content"])[0] <= 20 for r in rows)
    assert all(r["teacher_prompt"].endswith("\nhint: land on tens") for r in rows)
    assert "shipped:" not in done.stdout  # another recipe is not set beside the shipped models
