"""The built-in arithmetic task: correct answers, disjoint splits, tokenizer, a miniature build."""

from __future__ import annotations

import json
import re

from core_distill.data import encode_rows
from core_distill.evaluation import final_answer
from core_distill.toy.build import QUICK
from core_distill.toy.task import extract_answer, make_splits, worked_solution
from core_distill.toy.tokenizer import build_tokenizer


def test_worked_solutions_add_up_column_by_column():
    text = worked_solution(4729, 8356, 4)
    assert text.splitlines() == ["9+6+0=15", "2+5+1=8", "7+3+0=10", "4+8+1=13", "#### 13085"]
    assert final_answer(text) == "13085"
    assert extract_answer(text) == "13085"
    assert extract_answer("#### 1\n#### 42 ") == "42"
    assert extract_answer("no answer mark") is None


def test_every_generated_answer_is_right_and_splits_never_overlap():
    splits = make_splits(seed=3, digits=3, sizes={"train": 2000, "eval": 100, "test": 200})
    questions = {name: [r["messages"][0]["content"] for r in rows] for name, rows in splits.items()}
    for rows in splits.values():
        for row in rows:
            a, b = map(int, re.fullmatch(r"(\d+)\+(\d+)=", row["messages"][0]["content"]).groups())
            assert final_answer(row["messages"][1]["content"]) == str(a + b)
            assert extract_answer(row["messages"][1]["content"]) == str(a + b)
            assert row["messages"][1]["content"] in row["teacher_prompt"]
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["train"]) & set(questions["eval"])
    assert not set(questions["eval"]) & set(questions["test"])
    assert len(set(questions["train"])) == 2000
    assert make_splits(seed=3, digits=3, sizes={"train": 5}) == {"train": splits["train"][:5]}


def test_tokenizer_round_trips_and_the_prompt_is_a_prefix(tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    row = make_splits(seed=0, digits=4, sizes={"x": 1})["x"][0]
    answer = row["messages"][1]["content"]
    assert tokenizer.decode(tokenizer(answer)["input_ids"]) == answer
    (example,) = encode_rows([row], tokenizer, max_prompt_length=64, max_completion_length=256, source="t")
    assert tokenizer.decode(example.completion_ids) == answer + "<|eos|>"
    assert tokenizer.decode(example.prompt_ids).endswith("<|assistant|>")
    ids = tokenizer(answer)["input_ids"]
    assert len(ids) == len(answer)  # one token per character


def test_chat_template_prompt_is_an_exact_prefix_and_the_turn_ends_with_eos():
    tokenizer = build_tokenizer()
    for row in make_splits(seed=1, digits=4, sizes={"x": 5})["x"]:
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        assert full.startswith(prompt)
        assert full == prompt + messages[-1]["content"] + "<|eos|>"
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        assert full_ids[-1] == tokenizer.eos_token_id


def test_miniature_build_writes_loadable_models_and_a_manifest(quick_toy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp_path, manifest = quick_toy
    for name in ("teacher", "student"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        assert model.config.head_dim == 32
        AutoTokenizer.from_pretrained(tmp_path / name)
        assert 0.0 <= manifest["models"][name]["test_accuracy"] <= 1.0
    assert manifest["models"]["teacher"]["parameters"] > 2 * manifest["models"]["student"]["parameters"]
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 0 and manifest["build_seconds"] > 0
    for split, size in manifest["sizes"].items():
        assert len((tmp_path / "data" / f"{split}.jsonl").read_text().splitlines()) == size
    assert manifest["sizes"]["train"] == QUICK.train_rows
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "teacher")
    generation = json.loads((tmp_path / "teacher" / "generation_config.json").read_text())
    assert (generation["pad_token_id"], generation["eos_token_id"]) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
