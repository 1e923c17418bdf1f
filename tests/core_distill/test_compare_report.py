"""compare_report on hand-made evaluator reports: claims only where an adjusted interval excludes 0, the
finding in plain words (null results included), the paper's order on intervals, the budget check, grids."""

from __future__ import annotations

from pathlib import Path

import pytest

from core_distill.compare.report import (
    STUDENT,
    MethodResult,
    build_result,
    choose_temperature,
    finding,
    results_page,
    select,
)
from core_distill.compare.settings import (
    CompareError,
    CompareSettings,
    Setting,
    check_budgets,
    edge_of,
    extended_rate,
    grid,
)
from core_distill.spec import DistillSpec

PROMPTS = [f"S={10 + i} m=3" for i in range(40)]


def report(share: float, *, n: int = 4, greedy: float | None = None) -> dict:
    """An evaluator report (ModelReport.to_json() without samples): every prompt right on round(share * n) of n."""
    right = round(share * n)
    prompts = [{"prompt": p, "rows": 1, "scores": [1] * right + [0] * (n - right), "greedy": greedy if greedy is not None
                else float(share >= 0.5), "distinct_valid": right, "diversity": -3.0, "reference_diversity": -3.5}
               for p in PROMPTS]  # fmt: skip
    score = {"accuracy": right / n, "distinct_valid": float(right), "diversity": -3.0, "stderr": 0.0}
    return {"examples": len(PROMPTS), "prompts": prompts, "accuracy": right / n, "greedy": {**score, "accuracy": prompts[0]["greedy"]},
            "sampled": score, "divergence": {"fkl": 0.04, "rkl": 0.07, "jsd": 0.01}, "diversity": "walk_log_likelihood"}  # fmt: skip


def mixed(shares: list[float]) -> dict:
    """A report whose prompts alternate between the given shares of 4 (so its score has a spread over prompts)."""
    out = report(shares[0])
    for i, p in enumerate(out["prompts"]):
        right = round(shares[i % len(shares)] * 4)
        p["scores"] = [1] * right + [0] * (4 - right)
    return out


def record(test: dict | None = None, selection: dict | None = None) -> dict:
    evals = {k: {"request": {}, "report": v} for k, v in (("test", test), ("selection", selection)) if v is not None}
    return {"curve": [(0, 0.0, 0.5, 0, 0), (2, 1.0, 0.6, 100, 50)], "seconds": 1.0, "generated_tokens": 50,
            "teacher_tokens": 100, "evals": evals}  # fmt: skip


def method(name: str, test_share: list[float], settings: CompareSettings, rows: int = 16) -> MethodResult:
    sweep = [(Setting(lr), record(selection=mixed([s, 0.5]))) for lr, s in ((1e-4, 0.5), (1e-3, 0.75), (3e-3, 0.5))]
    chosen, selection = select(sweep, 1.0, settings.confidence)
    runs = [(seed, record(test=mixed(test_share))) for seed in settings.seeds]
    return MethodResult(name, f"{name}.yaml", rows, [s for s, _ in sweep], None, sweep, chosen, selection, runs)


def result(methods_shares: dict[str, list[float]], *, best_t_share: float = 0.5, rows: dict[str, int] | None = None,
           grading: float = 1.0):  # fmt: skip
    settings = CompareSettings(seeds=(1, 2))
    student_eval = {0.5: report(best_t_share), 1.0: report(0.5)}
    choice = choose_temperature(student_eval, settings.confidence, grading)
    baselines = {(who, t): report(share) for who, base in (("student", 0.5), ("teacher", 0.9))
                 for t, share in ((1.0, base), (choice.temperature, best_t_share if who == "student" else base))}  # fmt: skip
    methods = [method(n, s, settings, (rows or {}).get(n, 16)) for n, s in methods_shares.items()]
    equal = len({m.rows_per_step for m in methods}) == 1
    return build_result(settings, methods, baselines, choice, grading=grading, metric="countdown", student="toy:student",
                        train_data="toy:train", equal_budgets=equal, wall_seconds=1.0)  # fmt: skip


def test_claims_only_where_the_adjusted_interval_excludes_zero():
    r = result({"good": [1.0, 0.75], "same": [0.5], "bad": [0.25, 0.0]})
    assert r.best_name is None  # T 0.5 and T 1 tie on eval: the grading temperature stays
    by_pair = {(c.a, c.b): c for c in r.comparisons}
    assert by_pair[("good", STUDENT)].interval.low > 0 and by_pair[("same", STUDENT)].interval.low <= 0
    beats = [c for c in r.claims if " beats " in c]
    assert any(c.startswith(f"good beats {STUDENT}") for c in beats)
    assert any(c.startswith(f"{STUDENT} beats bad") for c in beats)
    assert not any("same" in c.split(" by ")[0] and STUDENT in c.split(" by ")[0] for c in beats)  # equal to it
    assert all(c.shown == (c.interval.low > 0 or c.interval.high < 0) for c in r.comparisons)
    assert len(r.claims) == len(r.comparisons) == 6 and r.comparisons[0].n_comparisons == 6
    text = "\n".join(r.finding)
    assert "shown better than the student before training: good (+" in text
    assert "shown worse: bad" in text and "no difference shown for same" in text


def test_a_null_result_against_the_best_temperature_is_said_in_plain_words():
    r = result({"good": [1.0, 0.75], "same": [0.5]}, best_t_share=1.0)  # decoding alone reaches 100 %
    assert r.student_choice.temperature == 0.5 and r.best_name == "student at T 0.5"
    assert "student at T 0.5" in r.models
    text = "\n".join(r.finding)
    assert "no method is shown better than the student decoded at T 0.5" in text
    assert "shown better than the student before training: good" in text  # and yet it beats the untrained one
    rows = [(row.model, row.decoding) for row in r.rows]
    for who in ("teacher", STUDENT):
        assert (
            (who, "greedy") in rows
            and (who, "T 0.5 (student's best on eval)") in rows
            and (who, "T 1 (grading)") in rows
        )


def test_a_greedy_task_compares_greedy_scores():
    r = result({"good": [1.0], "poor": [0.25]}, grading=0.0)  # report(): greedy right where the share is >= 0.5
    assert all(v == [1.0] for v in r.models[STUDENT].values())  # the student's greedy, not its samples (50 %)
    assert all(v == [1.0, 1.0] for v in r.models["good"].values()) and all(
        v == [0.0, 0.0] for v in r.models["poor"].values()
    )
    assert [row.decoding for row in r.rows if row.seeds] == ["greedy", "greedy"]
    assert r.best_name == "student at T 0.5" and "shown worse: poor" in r.finding[1]
    assert "graded greedily" in r.finding[0]


def test_the_paper_order_is_judged_on_intervals():
    holds = result({"gkd_on_policy": [1.0], "supervised_kd": [0.75], "sft": [0.5]})
    assert "order (on-policy GKD > supervised KD > SFT) holds" in holds.finding[-1]
    close = result({"gkd_on_policy": [0.75, 0.5], "supervised_kd": [0.5, 0.75], "sft": [0.25]})  # a tie, then a gap
    assert "is not shown: an interval includes 0" in close.finding[-1]
    reversed_ = result({"gkd_on_policy": [0.25], "supervised_kd": [0.5], "sft": [0.75]})
    assert "is contradicted" in reversed_.finding[-1]
    assert "not checked" in result({"sft": [0.5]}).finding[-1]


def test_the_page_renders_finding_first_and_says_what_it_rests_on(tmp_path):
    r = result({"good": [1.0, 0.75], "sft": [0.5]}, rows={"good": 32, "sft": 16})
    page = results_page(r, command="distill compare x.yaml", load=((0, 0, 0), (0, 0, 0)), plot_path=None,
                        doc_path=tmp_path / "r.md", previous="", workers=1)  # fmt: skip
    lines = page.splitlines()
    assert lines[4].startswith("**Unequal budgets") and lines[5].startswith("**Finding.** On 40 test prompts")
    assert "What SFT continues from" in page and "40 distinct prompts" in page and "fresh seeds 1, 2" in page
    assert "Settings trained: good 3, sft 3." in page and "Staged search" in page and "**not equal**" in page and "good 32, sft 16" in page
    assert r.table in page and "| good | T 1 | lr 0.001 | 2 | 87.5 %" in page
    assert "over the runner-up lr 0.0001 +12.5 points" in page and "): distinguishable on 40 prompts" in page
    assert "**The chosen learning rate" not in page  # 1e-3 is inside the grid 1e-4 .. 3e-3
    assert "walk_log_likelihood" in r.table and "distinct valid / prompt" in r.table
    assert finding(r) == r.finding


def _spec(path: Path, **fields) -> tuple[str, Path, DistillSpec]:
    spec = DistillSpec.parse({"student": "toy:student", "teacher": "toy:teacher", "batch_size": 16, **fields})
    return path.stem, path, spec


def test_the_budget_check_names_the_spec_with_more_rows_per_step():
    specs = [_spec(Path("a.yaml")), _spec(Path("b.yaml"), batch_size=8, grad_accum=2),
             _spec(Path("gkd_mixed.yaml"), grad_accum=2)]  # fmt: skip
    with pytest.raises(
        CompareError, match=r"gkd_mixed.yaml: 32 rows per optimizer step \(batch_size 16 × grad_accum 2\)"
    ):
        check_budgets(specs, allow_unequal=False)
    assert check_budgets(specs, allow_unequal=True) is False
    assert check_budgets(specs[:2], allow_unequal=False) is True  # 16 x 1 and 8 x 2: the same rows per step


def test_grids_sweep_beta_only_for_generalized_jsd_and_temperature_only_for_sampling_methods():
    s = CompareSettings(learning_rates=(1e-3, 3e-3), temperatures=(0.3, 1.0), betas=(0.1, 0.9))
    by = {n: DistillSpec.parse({"student": "toy:student", "teacher": "toy:teacher", **f}) for n, f in {
        "gkd": {"lmbda": 1.0, "beta": 0.5}, "rkl": {"lmbda": 1.0, "beta": 1.0}, "skd": {"lmbda": 0.0, "beta": 0.0},
        "mixed": {"lmbda": 0.5, "beta": 0.5}, "sft": {"objective": "sft", "teacher": "", "lmbda": 0.0},
        "minillm": {"objective": "minillm", "lmbda": 1.0, "gamma": 1.0}}.items()}  # fmt: skip
    sizes = {n: len(grid(spec, s)) for n, spec in by.items()}
    assert sizes == {"gkd": 8, "rkl": 4, "skd": 2, "mixed": 8, "sft": 2, "minillm": 2}
    assert {g.beta for g in grid(by["gkd"], s)} == {0.1, 0.9} and {g.beta for g in grid(by["rkl"], s)} == {None}
    assert {g.temperature for g in grid(by["minillm"], s)} == {None}
    assert edge_of([1e-4, 1e-3, 3e-3], 3e-3) == "highest" and edge_of([1e-4, 1e-3, 3e-3], 1e-3) is None
    assert extended_rate([1e-4, 3e-4, 1e-3], "highest") == pytest.approx(1e-3 * 1e-3 / 3e-4)
    assert extended_rate([1e-4, 3e-4], "lowest") == pytest.approx(1e-4 / 3)


def test_the_discussion_survives_a_rewrite_and_inline_mentions_do_not_count():
    from core_distill.compare.report import _kept_discussion

    page = "Text naming `<!-- discussion -->` inline.\n\n<!-- discussion -->\nWhy it differs.\n<!-- /discussion -->\n"
    assert _kept_discussion(page) == "<!-- discussion -->\nWhy it differs.\n<!-- /discussion -->"
    assert "Not written yet" in _kept_discussion("between `<!-- discussion -->` and `<!-- /discussion -->` survives")
