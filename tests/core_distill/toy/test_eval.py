"""`distill eval` on the miniature toy build (`distill compare`: test_compare.py)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from core_distill.cli import engine_cli
from core_distill.model_eval import EvalError, evaluate_model, resolve_model_name
from core_distill.toy.task import is_valid_walk, parse_prompt

runner = CliRunner()


def test_eval_json_has_accuracy_divergence_and_samples(toy_env):
    done = runner.invoke(engine_cli, ["eval", "toy:student", "--json", "--limit", "8", "--max-new-tokens", "12",
                                      "--samples", "2"])  # fmt: skip
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["model"] == "toy:student" and report["data"] == "toy:test" and report["examples"] == 8
    assert 0.0 <= report["accuracy"] <= 1.0
    assert report["teacher"] == "toy:teacher"
    assert set(report["divergence"]) == {"fkl", "rkl", "jsd"}
    assert report["divergence"]["fkl"] > 1e-3  # a different, smaller model
    assert len(report["samples"]) == 2
    assert report["metric"] == "countdown"  # auto: the toy splits are graded by the task's rules
    first = report["samples"][0]
    task = parse_prompt(first["prompt"])
    assert task is not None and is_valid_walk(first["reference"], *task)
    assert first["correct"] is is_valid_walk(first["completion"], *task)

    readable = runner.invoke(engine_cli, ["eval", "toy:student", "--limit", "4", "--max-new-tokens", "8"])
    assert readable.exit_code == 0, readable.output
    assert (
        re.search(r"^accuracy +\d+\.\d%", readable.stdout, re.M) and "forward KL(teacher || model)" in readable.stdout
    )


def test_the_teacher_has_zero_divergence_to_itself(toy_env):
    report = evaluate_model("toy:teacher", "test", limit=8, max_new_tokens=8, n_samples=0)
    assert report.divergence["fkl"] == pytest.approx(0.0, abs=1e-5)
    assert report.divergence["rkl"] == pytest.approx(0.0, abs=1e-5)
    no_teacher = evaluate_model("toy:teacher", "test", teacher=None, limit=8, max_new_tokens=8, n_samples=0)
    assert no_teacher.divergence is None and no_teacher.accuracy == report.accuracy


def test_accuracy_is_one_on_the_models_own_answers_and_zero_on_others(toy_env, tmp_path):
    """References equal to the model's greedy completions are all right; altered ones all wrong."""
    produced = evaluate_model("toy:student", "test", teacher=None, limit=6, metric="exact_match", max_new_tokens=10,
                              n_samples=6).samples  # fmt: skip

    def rows(suffix: str) -> str:
        return "".join(json.dumps({"messages": [{"role": "user", "content": s["prompt"]},
                                                {"role": "assistant", "content": s["completion"] + suffix}]}) + "\n"
                       for s in produced)  # fmt: skip

    (tmp_path / "own.jsonl").write_text(rows(""))
    (tmp_path / "other.jsonl").write_text(rows("9"))
    for name, expected in (("own.jsonl", 1.0), ("other.jsonl", 0.0)):
        done = runner.invoke(engine_cli, ["eval", "toy:student", "--data", str(tmp_path / name), "--metric",
                                          "exact_match", "--max-new-tokens", "10", "--json"])  # fmt: skip
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout[done.stdout.index("{") :])["accuracy"] == expected


def test_eval_refuses_bad_arguments_naming_them(toy_env, tmp_path):
    for args, named in (
        (["eval", str(tmp_path / "missing")], "MODEL"),
        (["eval", "toy:student", "--data", str(tmp_path / "missing.jsonl")], "--data"),
        (["eval", "toy:student", "--teacher", str(tmp_path / "nope")], "--teacher"),
        (["eval", "toy:student", "--metric", "bleu"], "--metric"),
    ):
        done = runner.invoke(engine_cli, args)
        assert done.exit_code == 2, (args, done.output)
        assert f"error: {named}:" in done.output
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="MODEL"):
        resolve_model_name(str(tmp_path / "empty"))


def test_a_run_folder_means_its_final_model(toy_env, tmp_path):
    shutil.copytree(toy_env / "student", tmp_path / "run" / "final")
    assert resolve_model_name(str(tmp_path / "run")) == str(tmp_path / "run" / "final")
