"""`distill compare` end to end on the miniature toy build: selection on eval, fresh seeds on test, baselines,
per-prompt scores in results.json, the page; reuse; the same numbers in worker processes; refusals."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import yaml
from typer.testing import CliRunner

from core_distill.cli import engine_cli
from core_distill.compare.report import DISCUSSION_END, DISCUSSION_START, STUDENT, select
from core_distill.compare.runner import compare
from core_distill.compare.settings import CompareError, CompareSettings

runner = CliRunner()
SETTINGS = CompareSettings(steps=2, seeds=(1, 2), selection_seed=0, learning_rates=(1e-3, 1e-2), temperatures=(1.0,),
                           betas=(0.3, 0.7), samples_per_prompt=2, eval_seeds=(0, 1), decode_temperatures=(0.5, 1.0),
                           eval_every=1, curve_examples=4, workers=1)  # fmt: skip


def _tiny_spec(path, **fields):
    spec = {"student": "toy:student", "teacher": "toy:teacher", "train_data": "toy:train", "eval_data": "toy:eval",
            "eval_metric": "countdown", "eval_temperature": 1.0, "batch_size": 4, "max_new_tokens": 8,
            "learning_rate": 1e-3, **fields}  # fmt: skip
    path.write_text(yaml.safe_dump(spec))
    return path


def test_compare_selects_on_eval_scores_fresh_seeds_on_test_and_writes_the_page(toy_env, tmp_path):
    specs = [_tiny_spec(tmp_path / "sft.yaml", objective="sft", teacher="", lmbda=0.0),
             _tiny_spec(tmp_path / "gkd_on_policy.yaml", lmbda=1.0, beta=0.5)]  # fmt: skip
    doc, plot = tmp_path / "docs" / "results.md", tmp_path / "docs" / "results.png"
    doc.parent.mkdir()
    doc.write_text(f"old page\n{DISCUSSION_START}\nhand-written words\n{DISCUSSION_END}\nold tail\n")
    printed: list[str] = []
    result = compare(specs, SETTINGS, output_dir=tmp_path / "runs", doc_path=doc, plot_path=plot,
                     command="distill compare sft.yaml gkd_on_policy.yaml", echo=printed.append)  # fmt: skip

    sft, on_policy = result.methods
    assert [s.label for s, _ in sft.sweep] == ["lr 0.001", "lr 0.01"]
    # the staged search: both rates at the spec's own T and beta, then the grid's betas at the chosen rate
    rate = select(on_policy.sweep[:2], 1.0, 0.95)[0].learning_rate  # the first stage's winner
    assert [s.label for s, _ in on_policy.sweep] == ["lr 0.001, T 1, β 0.5", "lr 0.01, T 1, β 0.5",
                                                     f"lr {rate:g}, T 1, β 0.3", f"lr {rate:g}, T 1, β 0.7"]  # fmt: skip
    for m in result.methods:
        # selection: the selection seed's runs, scored by the evaluator on the whole eval split, never on test
        assert {r["spec"]["seed"] for _, r in m.sweep} == {0}
        for _, r in m.sweep:
            assert set(r["evals"]) == {"selection"}
            sel = r["evals"]["selection"]["report"]
            assert sel["data"] == "toy:eval" and sel["examples"] == 16 and sel["sampled"]["seeds"] == [0, 1]
            assert all(len(p["scores"]) == p["rows"] * 2 * 2 for p in sel["prompts"])  # rows x n x eval seeds
        assert m.chosen.label == m.selection.best and set(m.selection.intervals) == {s.label for s, _ in m.sweep}
        # test: the chosen setting retrained with fresh seeds only
        assert [seed for seed, _ in m.runs] == [1, 2] and {r["spec"]["seed"] for _, r in m.runs} == {1, 2}
        assert {r["spec"]["learning_rate"] for _, r in m.runs} == {m.chosen.learning_rate}
        assert all(
            set(r["evals"]) == {"test"} and r["evals"]["test"]["report"]["data"] == "toy:test" for _, r in m.runs
        )
        assert [p[0] for p in m.runs[0][1]["curve"]] == [0, 1, 2]  # step 0: the student before training
    assert sft.runs[0][1]["teacher_tokens"] == 0 < on_policy.runs[0][1]["teacher_tokens"]

    rows = {(r.model, r.decoding.split(" (")[0]) for r in result.rows}
    t = result.student_choice.temperature
    for who in ("teacher", STUDENT):
        assert {(who, "greedy"), (who, "T 1"), (who, f"T {t:g}")} <= rows
    assert set(result.models) >= {STUDENT, "sft", "gkd_on_policy"}
    assert len(result.claims) == len(result.comparisons) > 0

    saved = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert saved["claims"] == result.claims and saved["settings"]["seeds"] == [1, 2]
    prompts = saved["baselines"]["student T 1"]["prompts"]
    assert len(prompts) == 8 and all(len(p["scores"]) == p["rows"] * 4 and "greedy" in p for p in prompts)
    test_prompts = saved["methods"][1]["runs"][0]["record"]["evals"]["test"]["report"]["prompts"]
    assert [p["prompt"] for p in test_prompts] == [p["prompt"] for p in prompts]
    assert set(saved["student_temperature"]["eval_reports"]) == {"0.5", "1"}

    page = doc.read_text()
    assert page.splitlines()[4].startswith("**Finding.** On 8 test prompts")
    assert result.table in page and result.table in "\n".join(printed)
    assert all(c in page for c in result.claims) and "distill compare sft.yaml gkd_on_policy.yaml" in page
    assert f"{DISCUSSION_START}\nhand-written words\n{DISCUSSION_END}" in page and "old tail" not in page
    assert "The GKD paper's order was not checked" in page and "Settings trained: sft 2, gkd_on_policy 4" in page
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resume: finished runs and evaluations of the same spec are kept, not trained again
    final = on_policy.runs[0][1]["model_dir"]
    stamp = os.path.getmtime(os.path.join(final, "config.json"))
    again = compare(specs, SETTINGS, output_dir=tmp_path / "runs", doc_path=None, plot_path=None, echo=lambda _: None,
                    reuse=True)  # fmt: skip
    assert os.path.getmtime(os.path.join(final, "config.json")) == stamp
    assert again.claims == result.claims and again.table == result.table


def test_the_staged_search_sweeps_rates_first_then_temperature_and_beta_at_the_chosen_rate(tmp_path):
    from core_distill.compare.settings import first_stage, grid, second_stage
    from core_distill.spec import DistillSpec

    spec = DistillSpec(student="s", teacher="t", train_data="d.jsonl", lmbda=0.5, beta=0.5, temperature=1.0)
    settings = CompareSettings(learning_rates=(1e-4, 1e-3, 1e-2), temperatures=(0.3, 1.0), betas=(0.1, 0.5, 0.9))
    first = first_stage(spec, settings)
    assert [(s.learning_rate, s.temperature, s.beta) for s in first] == [(1e-4, 1.0, 0.5), (1e-3, 1.0, 0.5),
                                                                         (1e-2, 1.0, 0.5)]  # fmt: skip
    second = second_stage(spec, settings, 1e-3, first)
    assert len(second) == 5 and all(s.learning_rate == 1e-3 for s in second) and first[1] not in second
    assert set(second) | {first[1]} == set(grid(spec, settings, [1e-3]))
    # 3 + 5 runs instead of the grid's 18; --search grid trains every combination in one stage
    full = replace(settings, search="grid")
    assert first_stage(spec, full) == grid(spec, full) and len(grid(spec, full)) == 18
    assert second_stage(spec, full, 1e-3, first) == []
    sft = DistillSpec(student="s", train_data="d.jsonl", objective="sft", lmbda=0.0)
    assert second_stage(sft, settings, 1e-3, first_stage(sft, settings)) == []  # nothing else to sweep


def test_compare_runs_in_worker_processes_with_the_same_numbers(toy_env, tmp_path):
    spec = _tiny_spec(tmp_path / "gkd_on_policy.yaml", lmbda=1.0, beta=0.0)
    settings = replace(SETTINGS, learning_rates=(1e-3,), seeds=(1,), decode_temperatures=(1.0,))
    alone = compare([spec], settings, output_dir=tmp_path / "one", doc_path=None, plot_path=None, echo=lambda _: None)
    pooled = compare([spec], replace(settings, workers=2), output_dir=tmp_path / "two", doc_path=None, plot_path=None,
                     echo=lambda _: None)  # fmt: skip
    (_, a), (_, b) = alone.methods[0].runs[0], pooled.methods[0].runs[0]
    assert [p[2] for p in a["curve"]] == [p[2] for p in b["curve"]] and a["generated_tokens"] == b["generated_tokens"]
    assert a["evals"]["test"]["report"]["prompts"] == b["evals"]["test"]["report"]["prompts"]
    assert a["evals"]["test"]["report"]["divergence"] == b["evals"]["test"]["report"]["divergence"]


def test_compare_refuses_bad_specs_unequal_budgets_and_reused_seeds_before_running(toy_env, tmp_path):
    good = _tiny_spec(tmp_path / "sft.yaml", objective="sft", teacher="", lmbda=0.0)
    bad = _tiny_spec(tmp_path / "broken.yaml", lmbda=3)
    doubled = _tiny_spec(tmp_path / "gkd_mixed.yaml", lmbda=0.5, grad_accum=2)
    other_eval = _tiny_spec(tmp_path / "sampled.yaml", eval_temperature=0.5)
    for files, settings, message in (
        ([good, bad], SETTINGS, r"broken.yaml: lmbda"),
        ([good, doubled], SETTINGS, r"gkd_mixed.yaml: 8 rows per optimizer step \(batch_size 4 × grad_accum 2\)"),
        ([good, other_eval], SETTINGS, r"sampled.yaml: every spec must have the same eval_temperature"),
        ([good], replace(SETTINGS, seeds=(0, 1)), r"--selection-seed 0 is one of the test seeds"),
    ):
        with pytest.raises(CompareError, match=message):
            compare(files, settings, output_dir=tmp_path / "runs", doc_path=tmp_path / "r.md", plot_path=None,
                    echo=lambda _: None)  # fmt: skip
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.md").exists()
    done = runner.invoke(engine_cli, ["compare", str(good), str(doubled), "--doc", str(tmp_path / "r.md")])
    assert done.exit_code == 2 and "gkd_mixed.yaml: 8 rows per optimizer step" in done.output
    assert "--allow-unequal-budgets" in done.output


def test_extend_edges_adds_one_rate_past_the_chosen_edge(toy_env, tmp_path):
    spec = _tiny_spec(tmp_path / "sft.yaml", objective="sft", teacher="", lmbda=0.0)
    settings = replace(SETTINGS, seeds=(1,), decode_temperatures=(1.0,), extend_edges=True)
    result = compare([spec], settings, output_dir=tmp_path / "runs", doc_path=tmp_path / "r.md", plot_path=None,
                     echo=lambda _: None)  # fmt: skip
    (m,) = result.methods
    rates = [s.learning_rate for s, _ in m.sweep]
    assert rates[:2] == [1e-3, 1e-2] and len(rates) == 3 and m.extended_rate == rates[2]
    assert rates[2] == pytest.approx(1e-4 if m.selection.best == "lr 0.001" else 1e-1)
    page = (tmp_path / "r.md").read_text()
    assert f"extended past its edge by one step, to lr {m.extended_rate:g}" in page
