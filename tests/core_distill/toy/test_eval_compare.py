"""`distill eval` and `distill compare` on the miniature toy build."""

from __future__ import annotations

import json
import re
import shutil
import statistics

import pytest
import yaml
from typer.testing import CliRunner

from core_distill.cli import engine_cli
from core_distill.compare import (
    DISCUSSION_END,
    DISCUSSION_START,
    CompareError,
    CompareSettings,
    MethodResult,
    SeedRun,
    compare,
    paper_order_check,
)
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


def _tiny_spec(path, **fields):
    spec = {"student": "toy:student", "teacher": "toy:teacher", "train_data": "toy:train", "eval_data": "toy:eval",
            "eval_metric": "countdown", "batch_size": 4, "max_new_tokens": 8, "learning_rate": 1e-3, **fields}  # fmt: skip
    path.write_text(yaml.safe_dump(spec))
    return path


def test_compare_sweeps_chooses_on_eval_and_writes_the_table_it_printed(toy_env, tmp_path):
    specs = [_tiny_spec(tmp_path / "sft.yaml", objective="sft", teacher="", lmbda=0.0),
             _tiny_spec(tmp_path / "gkd_on_policy.yaml", lmbda=1.0, beta=0.5)]  # fmt: skip
    doc, plot = tmp_path / "docs" / "results.md", tmp_path / "docs" / "results.png"
    doc.parent.mkdir()
    doc.write_text(f"old page\n{DISCUSSION_START}\nhand-written words\n{DISCUSSION_END}\nold tail\n")
    printed: list[str] = []
    settings = CompareSettings(steps=2, seeds=(0, 1), learning_rates=(1e-3, 1e-2), temperatures=(0.5, 1.0),
                               eval_every=1, curve_examples=4, test_examples=6, workers=1)  # fmt: skip
    result = compare(specs, settings, output_dir=tmp_path / "runs", doc_path=doc, plot_path=plot,
                     command="distill compare sft.yaml gkd_on_policy.yaml", echo=printed.append)  # fmt: skip

    assert result.table in "\n".join(printed)
    page = doc.read_text()
    assert page.splitlines()[4].startswith("**Finding.** From a student at")  # the finding comes first
    assert result.table in page and "distill compare sft.yaml gkd_on_policy.yaml" in page
    assert f"{DISCUSSION_START}\nhand-written words\n{DISCUSSION_END}" in page and "old tail" not in page
    assert "Not checked" in page  # supervised_kd did not run
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    sft, on_policy = result.methods
    # the same grid for everyone: learning rates for all, temperatures only for the method that samples
    assert sorted((r.learning_rate, r.temperature) for r in sft.sweep) == [(1e-3, None), (1e-2, None)]
    assert sorted((r.learning_rate, r.temperature) for r in on_policy.sweep) == [
        (1e-3, 0.5), (1e-3, 1.0), (1e-2, 0.5), (1e-2, 1.0)]  # fmt: skip
    for method in result.methods:
        best = max(method.sweep, key=lambda r: r.eval_accuracy)
        assert method.chosen.eval_accuracy == best.eval_accuracy  # chosen on the eval split
        assert {(r.learning_rate, r.temperature) for r in method.runs} == {(method.chosen.learning_rate,
                                                                            method.chosen.temperature)}  # fmt: skip
        assert [r.seed for r in method.runs] == [0, 1] and all(r.test is not None for r in method.runs)
        assert [p[0] for p in method.runs[0].curve] == [0, 1, 2]  # step 0: the student before training
        assert all(p[1] >= 0 for p in method.runs[0].curve)
    assert sft.runs[0].generated_tokens == 0 and sft.runs[0].teacher_tokens == 0
    assert on_policy.runs[0].generated_tokens > 0 and on_policy.runs[0].teacher_tokens > 0

    saved = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert [m["name"] for m in saved["methods"]] == ["sft", "gkd_on_policy"]
    for method, row in zip(result.methods, result.table.splitlines()[4:], strict=True):
        accuracy = [r.test["accuracy"] for r in method.runs]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == method.name and cells[2] == "2"
        assert cells[3] == f"{100 * statistics.mean(accuracy):.1f} ± {100 * statistics.stdev(accuracy):.1f} %"
        fkl = [r.test["divergence"]["fkl"] for r in method.runs]
        assert cells[5].startswith(f"{statistics.mean(fkl):.4f}")
    assert result.table.splitlines()[2].startswith(
        f"| teacher | – | – | {100 * result.baselines['teacher'].accuracy:.1f} %"
    )

    printed.clear()  # an interrupted comparison resumes: finished runs of the same spec are kept
    again = compare(specs, settings, output_dir=tmp_path / "runs", doc_path=None, plot_path=None, echo=printed.append,
                    reuse=True)  # fmt: skip
    assert again.table.split("| s / run")[0] == result.table.split("| s / run")[0]
    assert sum("(reused from an earlier comparison)" in line for line in printed) == 6 + 4
    longer = compare(specs[:1], CompareSettings(**{**settings.__dict__, "steps": 3, "seeds": (0,)}),
                     output_dir=tmp_path / "runs", doc_path=None, plot_path=None, echo=printed.append, reuse=True)  # fmt: skip
    assert [p[0] for p in longer.methods[0].runs[0].curve] == [0, 1, 2, 3]  # another budget: trained again


def test_compare_runs_in_worker_processes_with_the_same_numbers(toy_env, tmp_path):
    spec = _tiny_spec(tmp_path / "gkd_on_policy.yaml", lmbda=1.0)
    settings = CompareSettings(steps=2, seeds=(0,), eval_every=1, curve_examples=4, test_examples=4, workers=1)
    alone = compare([spec], settings, output_dir=tmp_path / "one", doc_path=None, plot_path=None, echo=lambda _: None)
    pooled = compare([spec], CompareSettings(**{**settings.__dict__, "workers": 2}), output_dir=tmp_path / "two",
                     doc_path=None, plot_path=None, echo=lambda _: None)  # fmt: skip
    for a, b in zip(alone.methods[0].runs, pooled.methods[0].runs, strict=True):
        assert [p[2] for p in a.curve] == [p[2] for p in b.curve]
        assert a.test["divergence"] == b.test["divergence"] and a.generated_tokens == b.generated_tokens


def test_compare_refuses_a_bad_spec_before_running_anything(toy_env, tmp_path):
    good = _tiny_spec(tmp_path / "sft.yaml", objective="sft", teacher="", lmbda=0.0)
    bad = _tiny_spec(tmp_path / "broken.yaml", lmbda=3)
    with pytest.raises(CompareError, match=r"broken.yaml: lmbda"):
        compare([good, bad], CompareSettings(steps=1), output_dir=tmp_path / "runs", doc_path=tmp_path / "r.md",
                plot_path=None, echo=lambda _: None)  # fmt: skip
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.md").exists()
    no_eval = _tiny_spec(tmp_path / "no_eval.yaml", eval_data="")
    with pytest.raises(CompareError, match=r"no_eval.yaml: eval_data is empty"):
        compare([no_eval], CompareSettings(steps=1), output_dir=tmp_path / "runs", doc_path=None, plot_path=None)
    done = runner.invoke(engine_cli, ["compare", str(good), str(bad), "--doc", str(tmp_path / "r.md")])
    assert done.exit_code == 2 and "broken.yaml: lmbda" in done.output


def test_the_paper_order_check_reads_the_means():
    def method(name: str, *accuracies: float) -> MethodResult:
        runs = [SeedRun(i, 1e-3, None, [], 1.0, 0, 0, {"accuracy": a}) for i, a in enumerate(accuracies)]
        return MethodResult(name, f"{name}.yaml", False, runs[:1], runs)

    holds = paper_order_check(
        [method("sft", 0.5, 0.6), method("supervised_kd", 0.6, 0.6), method("gkd_on_policy", 0.7)]
    )
    assert "**holds**" in holds and "55.0%" in holds
    assert "gap between supervised KD and SFT (5.0 points) is within the spread" in holds
    fails = paper_order_check([method("sft", 0.8), method("supervised_kd", 0.6), method("gkd_on_policy", 0.7)])
    assert "**does not hold**" in fails
    assert "Not checked" in paper_order_check([method("sft", 0.5)])


def test_the_discussion_survives_a_rewrite_and_inline_mentions_do_not_count():
    from core_distill.compare import _kept_discussion

    page = "Text naming `<!-- discussion -->` inline.\n\n<!-- discussion -->\nWhy it differs.\n<!-- /discussion -->\n"
    assert _kept_discussion(page) == "<!-- discussion -->\nWhy it differs.\n<!-- /discussion -->"
    inline_only = "between `<!-- discussion -->` and `<!-- /discussion -->` survives"
    assert "Not written yet" in _kept_discussion(inline_only)
