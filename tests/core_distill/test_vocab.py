"""Vocabularies compared by their tokens and special tokens, not their size (core_distill/data/vocab.py).

A pair with one tokenizer and padded heads of two sizes (Qwen2.5-7B into 0.5B) distils on the
tokenizer's ids, exactly as the same pair cut by hand; tokenizers of one size that differ in a token,
or in a special token the teacher's scores depend on, are refused at preflight saying what differs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from core_distill.generation.sampling import HFSampler, sample_completions
from core_distill.model_eval import evaluate_model
from core_distill.models import load_model, load_tokenizer
from core_distill.reporting import JsonlReporter
from core_distill.spec import SpecError
from core_distill.teachers.local import LocalTeacher
from core_distill.train import run
from tests.helpers.vocabularies import (
    build_padded_pair,
    one_token_different,
    remapped_eos,
    save_teacher,
    with_bos,
)

COMPARED = ("loss", "loss/kd", "grad_norm", "div/fkl", "div/rkl", "entropy/student", "entropy/teacher",
            "topk/coverage", "eval/loss/kd", "eval/div/fkl")  # fmt: skip
CUT_LINE = "vocabulary cut from 145 (student head) and 209 (teacher head) to 81"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build_padded_pair(tmp_path_factory.mktemp("padded"))


def metrics_of(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


# --- A: one tokenizer, padded heads of two sizes ---------------------------------------------------------
def test_a_padded_head_pair_passes_preflight(pair):
    pair.spec().preflight()  # main: "vocabulary size 209 differs from the student's 145 ... needs the same tokenizer"


@pytest.mark.parametrize("loss_top_k", [0, 8])
def test_a_padded_pair_trains_exactly_as_the_pair_cut_by_hand(pair, tmp_path, loss_top_k):
    """Both heads cut to the tokenizer's 81 ids: every number of the run (loss, gradient norm,
    divergences, the greedy evaluation) equals that of models saved with only those 81 rows."""
    padded, by_hand = tmp_path / "padded", tmp_path / "by-hand"
    run(pair.spec(loss_top_k=loss_top_k), output_dir=padded, reporter=JsonlReporter(padded))
    run(pair.spec(cut_by_hand=True, loss_top_k=loss_top_k), output_dir=by_hand, reporter=JsonlReporter(by_hand))
    got, expected = metrics_of(padded), metrics_of(by_hand)
    assert [line["step"] for line in got] == [line["step"] for line in expected] == [0, 1, 2, 2]
    for a, b in zip(got, expected, strict=True):
        for key in COMPARED:
            if key in b["metrics"]:
                assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-5, abs=1e-7), key
    assert (padded / "header.txt").read_text().startswith(CUT_LINE)
    assert not (by_hand / "header.txt").exists()  # nothing to cut: no header line


def test_distill_run_says_the_cut_in_its_header(pair, tmp_path):
    spec_file = tmp_path / "padded.yaml"
    spec_file.write_text(yaml.safe_dump(pair.spec(max_steps=2).model_dump()))
    done = subprocess.run([sys.executable, "-m", "app.cli", "run", str(spec_file), "--output", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert CUT_LINE in done.stdout.splitlines()[0]
    assert [line["step"] for line in metrics_of(tmp_path / "run") if "loss" in line["metrics"]] == [1, 2]


def test_sampling_never_emits_a_padding_id(pair):
    """The padding rows are loud (logits near +100): whole heads sample them almost always, cut heads never."""
    from core_distill.models import vocab_width
    from core_distill.teachers.factory import share_vocabulary

    tokenizer = load_tokenizer(str(pair.student))
    student = load_model(str(pair.student), dtype=torch.float32)
    teacher = LocalTeacher(load_model(str(pair.teacher), dtype=torch.float32))
    prompts = [tokenizer.encode(f"{a}+{a}=?") for a in range(8)]
    sample = dict(pad_id=tokenizer.pad_token_id, eos_ids={tokenizer.eos_token_id}, max_new_tokens=6)
    torch.manual_seed(0)
    whole = [t for row in sample_completions(student, prompts, **sample) for t in row]
    assert sum(t >= pair.ids for t in whole) > len(whole) / 2  # the control: the loud rows do dominate

    share_vocabulary(student, teacher, pair.ids)
    assert vocab_width(student) == vocab_width(teacher.model) == pair.ids
    for model in (student, teacher.model):
        for greedy in (False, True):
            torch.manual_seed(0)
            rows = HFSampler(model).sample(prompts, **sample, greedy=greedy)
            assert all(0 <= t < pair.ids for row in rows for t in row), (greedy, rows)


def test_distill_eval_divergences_use_the_shared_vocabulary(pair):
    common = dict(data=str(pair.eval_data), limit=4, metric="exact_match", max_new_tokens=6, n_samples=0)
    padded = evaluate_model(str(pair.student), teacher=str(pair.teacher), **common)
    by_hand = evaluate_model(str(pair.student_cut), teacher=str(pair.teacher_cut), **common)
    assert padded.divergence == pytest.approx(by_hand.divergence, rel=1e-5)


def test_heads_are_cut_only_when_their_sizes_differ():
    from core_distill.data.vocab import shared_width

    assert shared_width(145, 145, 81) == (None, None)  # equal heads stay whole (as TRL uses them)
    assert shared_width(145, 209, 81) == (81, None)
    assert shared_width(81, 209, 81) == (81, None)  # the teacher alone is padded
    width, problem = shared_width(80, 209, 81)
    assert width is None and "student's lm_head has 80 rows, fewer than the tokenizer's 81 ids" in problem


# --- G: tokenizers of one size that differ ---------------------------------------------------------------
def refusal(spec) -> str:
    with pytest.raises(SpecError) as caught:
        spec.preflight()
    assert list(caught.value.errors) == ["teacher"], caught.value.errors
    message = caught.value.errors["teacher"]
    assert "\n" not in message
    return message


def test_a_teacher_whose_tokens_differ_is_refused_naming_the_first_difference(tiny_workspace, tmp_path):
    """Both tokenizers have 81 ids and the heads 81 rows, so a size check passes them: id 7 is '#' in one, '$' in the other."""
    save_teacher(tmp_path / "teacher", one_token_different())
    spec = tiny_workspace.spec(teacher=str(tmp_path / "teacher"))
    message = refusal(spec)
    assert "1 of 81 token ids differ, first: id 7 is '#' in the student, '$' in the teacher" in message
    assert "use a teacher with the student's tokenizer" in message

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump()))
    done = subprocess.run([sys.executable, "-m", "app.cli", "run", str(spec_file), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})  # fmt: skip
    assert done.returncode == 2 and f"error: teacher: {message}" in done.stderr.splitlines()
    assert not (tmp_path / "o").exists()


def test_a_teacher_with_more_tokens_is_refused_naming_the_sizes(tiny_workspace, tmp_path):
    from tests.tiny_models import build_tokenizer

    save_teacher(tmp_path / "teacher", build_tokenizer(extra_chars="äöü"))
    message = refusal(tiny_workspace.spec(teacher=str(tmp_path / "teacher")))
    assert "3 of 84 token ids differ (the student's tokenizer has 81 ids, the teacher's 84)" in message
    assert "first: id 81 is absent in the student, 'ä' in the teacher" in message


@pytest.mark.parametrize(
    ("tokenizer", "expected"),
    [
        (lambda: remapped_eos(), "eos differs: the student ends on '<|eos|>', a token the teacher never ends on "
                                 "(its eos is '<|system|>'"),
        (lambda: with_bos(), "bos differs: None in the student, '<|user|>' in the teacher"),
    ],
    ids=["eos", "bos"],
)  # fmt: skip
def test_a_remapped_special_token_is_refused(tiny_workspace, tmp_path, tokenizer, expected):
    """The same 81 tokens at the same ids, one special token moved: the teacher's scores would mean another thing."""
    save_teacher(tmp_path / "teacher", tokenizer())
    message = refusal(tiny_workspace.spec(teacher=str(tmp_path / "teacher")))
    assert expected in message and "use a teacher with the student's tokenizer and its special tokens" in message


def test_an_eos_the_teacher_still_ends_on_is_accepted(tiny_workspace, tmp_path):
    """An instruct teacher over a base student: its eos differs, but its turns still end on the student's."""
    save_teacher(tmp_path / "teacher", remapped_eos(template_keeps_eos=True))
    tiny_workspace.spec(teacher=str(tmp_path / "teacher")).preflight()
