"""What `distill compare` concludes and how it shows it: selection with its uncertainty, the table of
test scores with the baselines, the claims (only where a Bonferroni-adjusted interval excludes 0), the
page and the plot. Everything here reads records (runner.py's jobs); nothing trains or evaluates.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core_distill.compare.settings import CompareSettings, Setting, edge_of
from core_distill.compare.stats import (
    Comparison,
    Interval,
    SeedSpread,
    Selection,
    bootstrap_mean,
    claims,
    compare_all,
    merge_seeds,
    seed_spread,
    selection_uncertainty,
)
from core_distill.paths import toy_dir

DISCUSSION_START, DISCUSSION_END = "<!-- discussion -->", "<!-- /discussion -->"
# The GKD paper's claim, checked on held-out scores: on-policy GKD > supervised KD > SFT.
PAPER_ORDER = ("gkd_on_policy", "supervised_kd", "sft")
PAPER_LABELS = {"gkd_on_policy": "on-policy GKD", "supervised_kd": "supervised KD", "sft": "SFT"}
STUDENT = "student (before)"

Scores = dict[str, list[float]]
Report = dict[str, Any]  # model_eval.ModelReport.to_json() without samples


# --- per-prompt scores of a report ------------------------------------------------------------------
def primary_scores(report: Report, temperature: float) -> Scores:
    """Per prompt: the 0/1 of every sampled completion at temperature > 0, else the greedy share."""
    if temperature > 0:
        return {p["prompt"]: [float(v) for v in p["scores"]] for p in report["prompts"]}
    return greedy_scores(report)


def greedy_scores(report: Report) -> Scores:
    return {p["prompt"]: [float(p["greedy"])] for p in report["prompts"]}


def decoding(report: Report, temperature: float) -> dict[str, Any]:
    """The report's DecodingScore (as JSON) of that decoding: sampled at temperature > 0, else greedy."""
    return report["sampled"] if temperature > 0 else report["greedy"]


def decoding_label(temperature: float) -> str:
    return "greedy" if temperature == 0 else f"T {temperature:g}"


# --- selection on the eval split --------------------------------------------------------------------
def select(sweep: list[tuple[Setting, dict[str, Any]]], grading: float, confidence: float) -> tuple[Setting, Selection]:
    """The best setting by the eval-split primary score, with every setting's interval and the gaps."""
    by_label = {s.label: primary_scores(r["evals"]["selection"]["report"], grading) for s, r in sweep}
    selection = selection_uncertainty(by_label, confidence=confidence)
    return next(s for s, _ in sweep if s.label == selection.best), selection


@dataclass
class TemperatureChoice:
    temperature: float  # the student's best decoding temperature on the eval split
    selection: Selection  # keyed 'T 0.3', ...
    reports: dict[float, Report]


def choose_temperature(reports: dict[float, Report], confidence: float, grading: float) -> TemperatureChoice:
    """The best temperature by the eval-split score; a tie goes to the grading temperature (no change)."""
    order = sorted(reports, key=lambda t: t != grading)  # stable: the grading one first, then as given
    by_label = {decoding_label(t): primary_scores(reports[t], t) for t in order}
    selection = selection_uncertainty(by_label, confidence=confidence)
    best = next(t for t in reports if decoding_label(t) == selection.best)
    return TemperatureChoice(best, selection, reports)


def baseline_temperatures(grading: float, best: float) -> list[float]:
    """Sampling temperatures the baselines are scored at on test (greedy comes with every evaluation)."""
    return list(dict.fromkeys(t for t in (grading, 1.0, best) if t > 0))


# --- the result ------------------------------------------------------------------------------------
@dataclass
class MethodResult:
    name: str
    spec_file: str
    rows_per_step: int
    grid: list[Setting]
    extended_rate: float | None  # the rate added past a grid edge (extend_edges), if any
    sweep: list[tuple[Setting, dict[str, Any]]]  # selection seed: (setting, record) of every setting tried
    chosen: Setting
    selection: Selection
    runs: list[tuple[int, dict[str, Any]]]  # fresh seeds: (seed, record), each with its test report

    def test_reports(self) -> list[Report]:
        return [r["evals"]["test"]["report"] for _, r in self.runs]

    def edge(self) -> str | None:
        return edge_of([s.learning_rate for s, _ in self.sweep], self.chosen.learning_rate)


@dataclass
class Row:
    """One line of the test table."""

    model: str
    decoding: str
    setting: str
    seeds: int  # training seeds merged (0: a baseline)
    interval: Interval
    spread: SeedSpread | None
    greedy: float
    distinct_valid: float | None
    diversity: float | None
    fkl: float | None
    rkl: float | None


@dataclass
class CompareResult:
    settings: CompareSettings
    grading: float  # the task's grading temperature (the specs' eval_temperature)
    metric: str
    student: str
    train_data: str
    equal_budgets: bool
    student_choice: TemperatureChoice
    baselines: dict[tuple[str, float], Report]  # (who, temperature) -> test report
    methods: list[MethodResult]
    rows: list[Row]
    models: dict[str, Scores]  # the family compared on test (per-prompt primary scores)
    comparisons: list[Comparison]
    claims: list[str]
    table: str
    wall_seconds: float
    test_prompts: int
    test_rows: int
    diversity: str | None
    finding: list[str] = field(default_factory=list)

    @property
    def best_name(self) -> str | None:
        """The family's 'student at its best T' (None when that is the grading temperature itself)."""
        t = self.student_choice.temperature
        return None if t == self.grading else f"student at T {t:g}"


def build_result(settings: CompareSettings, methods: list[MethodResult], baselines: dict[tuple[str, float], Report],
                 choice: TemperatureChoice, *, grading: float, metric: str, student: str, train_data: str,
                 equal_budgets: bool, wall_seconds: float) -> CompareResult:  # fmt: skip
    conf = settings.confidence
    first = next(iter(baselines.values()))
    rows = baseline_rows(baselines, grading, choice.temperature, conf)
    models: dict[str, Scores] = {STUDENT: primary_scores(baselines[("student", grading or _any_t(baselines))], grading)}
    if choice.temperature != grading:
        models[f"student at T {choice.temperature:g}"] = primary_scores(baselines[("student", choice.temperature)],
                                                                        choice.temperature)  # fmt: skip
    for m in methods:
        reports = m.test_reports()
        per_seed = [primary_scores(r, grading) for r in reports]
        merged = merge_seeds(per_seed)
        models[m.name] = merged
        rows.append(Row(
            m.name, decoding_label(grading), m.chosen.label, len(reports), bootstrap_mean(merged, confidence=conf),
            seed_spread(per_seed), statistics.mean(r["greedy"]["accuracy"] for r in reports),
            _mean_of(decoding(r, grading)["distinct_valid"] for r in reports),
            _mean_of(decoding(r, grading)["diversity"] for r in reports),
            _mean_of((r["divergence"] or {}).get("fkl") for r in reports),
            _mean_of((r["divergence"] or {}).get("rkl") for r in reports),
        ))  # fmt: skip
    comparisons = compare_all(models, baseline=STUDENT, confidence=conf) if len(models) > 1 else []
    result = CompareResult(
        settings, grading, metric, student, train_data, equal_budgets, choice, baselines, methods, rows, models,
        comparisons, claims(comparisons), results_table(rows, first.get("diversity")), wall_seconds,
        len(first["prompts"]), first["examples"], first.get("diversity"),
    )  # fmt: skip
    result.finding = finding(result)
    return result


def _any_t(baselines: dict[tuple[str, float], Report]) -> float:
    return next(t for who, t in baselines if who == "student")


def _mean_of(values) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.mean(present) if present else None


def baseline_rows(baselines: dict[tuple[str, float], Report], grading: float, best: float, conf: float) -> list[Row]:
    """The teacher and the student before training: greedy, then each sampling temperature scored."""
    rows = []
    for who, label in (("teacher", "teacher"), ("student", STUDENT)):
        reports = {t: r for (w, t), r in baselines.items() if w == who}
        any_report = next(iter(reports.values()))
        decodings = [(0.0, any_report)] + sorted(reports.items())
        for t, report in decodings:
            notes = [
                n for n, hit in (("grading", t == grading), ("student's best on eval", t == best and t > 0)) if hit
            ]
            name = decoding_label(t) + (f" ({', '.join(notes)})" if notes else "")
            score = decoding(report, t)
            div = report["divergence"] or {}
            rows.append(Row(label, name, "–", 0, bootstrap_mean(primary_scores(report, t), confidence=conf), None,
                            report["greedy"]["accuracy"], score["distinct_valid"], score["diversity"],
                            div.get("fkl"), div.get("rkl")))  # fmt: skip
    return rows


# --- the finding: only what the intervals support ---------------------------------------------------
def oriented(comparisons: list[Comparison], a: str, b: str) -> Comparison | None:
    """The comparison of a and b, as a - b."""
    for c in comparisons:
        if (c.a, c.b) == (a, b):
            return c
        if (c.a, c.b) == (b, a):
            return Comparison(a, b, c.interval.negated(), c.p_value, c.n_comparisons, c.family_confidence)
    return None


def _against(result: CompareResult, reference: str, words: str) -> str:
    better, worse, tied = [], [], []
    for m in result.methods:
        c = oriented(result.comparisons, m.name, reference)
        if c is None:
            continue
        entry = f"{m.name} ({c.interval.text()})"
        (better if c.interval.low > 0 else worse if c.interval.high < 0 else tied).append(entry)
    parts = []
    if better:
        parts.append(f"shown better than {words}: {', '.join(better)}")
    else:
        parts.append(f"no method is shown better than {words}")
    if worse:
        parts.append(f"shown worse: {', '.join(worse)}")
    if tied:
        parts.append(f"no difference shown for {', '.join(e.split(' (')[0] for e in tied)}")
    return "; ".join(parts) + "."


def paper_order_check(result: CompareResult) -> str:
    """On-policy GKD > supervised KD > SFT, judged on the family's adjusted intervals (not on means)."""
    names = {m.name for m in result.methods}
    if not all(n in names for n in PAPER_ORDER):
        return (
            f"The GKD paper's order was not checked: it needs the specs {', '.join(n + '.yaml' for n in PAPER_ORDER)}."
        )
    gaps = [oriented(result.comparisons, PAPER_ORDER[i], PAPER_ORDER[i + 1]) for i in (0, 1)]
    texts = [f"{PAPER_LABELS[PAPER_ORDER[i]]} − {PAPER_LABELS[PAPER_ORDER[i + 1]]} = {g.interval.text()}"
             for i, g in enumerate(gaps) if g is not None]  # fmt: skip
    if all(g is not None and g.interval.low > 0 for g in gaps):
        verdict = "holds: both gaps are shown"
    elif any(g is not None and g.interval.high < 0 for g in gaps):
        verdict = "is contradicted: a gap is shown in the other direction"
    else:
        verdict = "is not shown: an interval includes 0"
    return f"The GKD paper's order (on-policy GKD > supervised KD > SFT) {verdict} ({'; '.join(texts)})."


def finding(result: CompareResult) -> list[str]:
    s = result.settings
    lines = []
    if not result.equal_budgets:
        budgets = ", ".join(f"{m.name} {m.rows_per_step}" for m in result.methods)
        lines.append(f"**Unequal budgets (--allow-unequal-budgets).** Rows per optimizer step differ ({budgets}); "
                     "a method with more rows saw more data and teacher tokens: compare against the plot of score "
                     "against teacher tokens, not only the table.")  # fmt: skip
    family = result.comparisons[0] if result.comparisons else None
    how = (f"{result.test_prompts} test prompts, {_decoding_words(result.grading, s)}; each method's chosen setting "
           f"over {len(s.seeds)} fresh training seeds")  # fmt: skip
    if family is not None:
        how += (f"; {family.n_comparisons} comparisons, Bonferroni-adjusted to "
                f"{100 * family.family_confidence:g} % family-wise ({100 * family.adjusted_confidence:.3g} % each)")  # fmt: skip
    lines.append(f"**Finding.** On {how}:")
    lines.append(f"- Against the student before training ({decoding_label(result.grading)}): "
                 + _against(result, STUDENT, "the student before training"))  # fmt: skip
    best = result.best_name
    t = result.student_choice.temperature
    if best is not None:
        lines.append(f"- Against decoding alone, the untrained student at T {t:g} (its best temperature on the eval "
                     f"split): " + _against(result, best, f"the student decoded at T {t:g}"))  # fmt: skip
    else:
        lines.append(f"- The untrained student's best temperature on the eval split is the grading one "
                     f"({decoding_label(t)}), so the line above is also the decoding-only baseline.")  # fmt: skip
    lines.append(f"- {paper_order_check(result)}")
    return lines


def _decoding_words(grading: float, s: CompareSettings) -> str:
    if grading == 0:
        return "graded greedily (one completion per prompt)"
    seeds = ",".join(map(str, s.eval_seeds))
    return f"sampled at T {grading:g} ({s.samples_per_prompt} per row × eval seeds {seeds})"


# --- tables ---------------------------------------------------------------------------------------
def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def results_table(rows: list[Row], diversity: str | None) -> str:
    """Test scores: the primary score with its 95 % interval (prompt-clustered bootstrap), the spread over
    training seeds, greedy validity, diversity and the divergences to the teacher."""
    lines = [
        f"| model | decoding | chosen setting | seeds | score (95 % CI) | over seeds | greedy | distinct valid / prompt "
        f"| {diversity or 'diversity'} | forward KL (T‖S) | reverse KL (S‖T) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        i = r.interval
        spread = "–" if r.spread is None else r.spread.text().split(" over")[0]
        lines.append(
            f"| {r.model} | {r.decoding} | {r.setting} | {r.seeds or '–'} | {100 * i.estimate:.1f} % "
            f"({100 * i.low:.1f} – {100 * i.high:.1f}) | {spread} | {_num(r.greedy and 100 * r.greedy, '.1f')} % "
            f"| {_num(r.distinct_valid, '.2f')} | {_num(r.diversity, '.2f')} | {_num(r.fkl, '.4f')} | {_num(r.rkl, '.4f')} |"
        )
    return "\n".join(lines)


def budget_table(result: CompareResult) -> str:
    lines = ["| method | rows / step | steps | grid settings | s / run | generated tokens / run | teacher tokens / run |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in result.methods:
        runs = [r for _, r in m.runs]
        lines.append(f"| {m.name} | {m.rows_per_step} | {result.settings.steps} | {len(m.sweep)} "
                     f"| {statistics.mean(r['seconds'] for r in runs):.0f} "
                     f"| {statistics.mean(r['generated_tokens'] for r in runs):,.0f} "
                     f"| {statistics.mean(r['teacher_tokens'] for r in runs):,.0f} |")  # fmt: skip
    return "\n".join(lines)


def selection_section(result: CompareResult) -> list[str]:
    lines = []
    for m in result.methods:
        sel = m.selection
        lines += [f"### {m.name}", "", sel.text() + ".", ""]
        edge = m.edge()
        if m.extended_rate is not None:
            lines.append(
                f"The grid was extended past its edge by one step, to lr {m.extended_rate:g} (--extend-edges)."
            )
        if edge is not None:
            lines.append(f"**The chosen learning rate {m.chosen.learning_rate:g} is the {edge} of the grid**: the "
                         "optimum may lie beyond it (rerun with a wider --learning-rates or --extend-edges).")  # fmt: skip
        lines += ["", "| setting | eval score (95 % CI) | best − setting (adjusted CI) | s |", "|---|---|---|---|"]
        seconds = {s.label: r["seconds"] for s, r in m.sweep}
        for label, interval in sel.intervals.items():
            cell = interval.text(unit=" %", signed=False)
            gap = "–" if label == sel.best else sel.gaps[label].text()
            lines.append(f"| {label} | {f'**{cell}**' if label == sel.best else cell} | {gap} | {seconds[label]:.0f} |")
        lines.append("")
    return lines


def per_seed_table(result: CompareResult) -> list[str]:
    seeds = result.settings.seeds
    lines = ["| method | " + " | ".join(f"seed {x}" for x in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for m in result.methods:
        cells = {seed: r["evals"]["test"]["report"] for seed, r in m.runs}
        lines.append(f"| {m.name} | " + " | ".join(
            f"{100 * cells[x]['accuracy']:.1f} % / {_num((cells[x]['divergence'] or {}).get('fkl'), '.4f')}"
            for x in seeds) + " |")  # fmt: skip
    return lines


# --- results.json, the page and the plot -------------------------------------------------------------
def result_json(result: CompareResult) -> dict[str, Any]:
    def interval(i: Interval) -> dict[str, Any]:
        return asdict(i)

    return {
        "settings": asdict(result.settings),
        "grading_temperature": result.grading, "metric": result.metric, "equal_budgets": result.equal_budgets,
        "finding": result.finding, "claims": result.claims,
        "student_temperature": {
            "chosen": result.student_choice.temperature,
            "intervals": {k: interval(v) for k, v in result.student_choice.selection.intervals.items()},
            "eval_reports": {f"{t:g}": r for t, r in result.student_choice.reports.items()},
        },
        "baselines": {f"{who} T {t:g}": report for (who, t), report in result.baselines.items()},
        "methods": [
            {"name": m.name, "spec_file": m.spec_file, "rows_per_step": m.rows_per_step,
             "grid": [asdict(s) for s in m.grid], "extended_rate": m.extended_rate, "chosen": asdict(m.chosen),
             "selection": {"best": m.selection.best, "runner_up": m.selection.runner_up,
                           "distinguishable": m.selection.distinguishable,
                           "intervals": {k: interval(v) for k, v in m.selection.intervals.items()},
                           "gaps": {k: interval(v) for k, v in m.selection.gaps.items()}},
             "sweep": [{"setting": asdict(s), "record": r} for s, r in m.sweep],
             "runs": [{"seed": seed, "record": r} for seed, r in m.runs]}
            for m in result.methods
        ],
        "comparisons": [{"a": c.a, "b": c.b, **interval(c.interval), "p_value": c.p_value,
                         "n_comparisons": c.n_comparisons} for c in result.comparisons],
        "wall_seconds": result.wall_seconds,
    }  # fmt: skip


def _machine(workers: int) -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    import torch

    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {workers} run{'s' if workers > 1 else ''} at a time, 1 thread each"


def _floats(values) -> str:
    return ", ".join(f"{x:g}" for x in values) or "each spec's own"


def results_page(result: CompareResult, *, command: str, load, plot_path: Path | None, doc_path: Path,
                 previous: str, workers: int) -> str:  # fmt: skip
    s = result.settings
    manifest_path = toy_dir() / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    task = "the built-in countdown task" if result.metric == "countdown" else f"`{s.test_data}`"
    sizes = {len(m.sweep) for m in result.methods}
    lines = [
        f"# Results: distillation methods on {task}", "",
        "<!-- Written by `distill compare`; everything outside the discussion markers is regenerated. -->", "",
        *result.finding, "",
        f"Reproduce: `{command or 'distill compare'}` — run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on "
        f"{_machine(workers)}; wall time {result.wall_seconds / 60:.1f} min. Load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load[0])} at the start and {'/'.join(f'{x:.2f}' for x in load[1])} at the end "
        "(wall times vary with other jobs; scores do not: one thread per run and seeded sampling).", "",
        "## Setup", "",
    ]  # fmt: skip
    if manifest is not None and result.metric == "countdown":
        models, config = manifest["models"], manifest.get("config", {})
        lines += [
            f"- Task: countdown (`core_distill/toy/task.py`, seed {manifest['seed']}); splits of "
            f"{', '.join(f'{k} {v}' for k, v in manifest['sizes'].items())} rows; no prompt is in two splits.",
            f"- Teacher: Llama {models['teacher']['hidden_size']} × {models['teacher']['layers']}, "
            f"{models['teacher']['parameters']:,} parameters. Student: {models['student']['hidden_size']} × "
            f"{models['student']['layers']}, {models['student']['parameters']:,} parameters; both trained from scratch "
            f"by `distill toy build` until eval loss and validity were flat.",
            f"- What SFT continues from: the student converged ({models['student']['steps']:,} steps) on the same "
            f"training split SFT trains on (`{result.train_data}`; in the build "
            f"{100 * config.get('hint_share', 0):.0f} % of its rows showed the hint prompt), so SFT is more of the "
            "data the student has already fitted; it is the no-teacher control.",
        ]  # fmt: skip
    else:
        lines.append(f"- What SFT continues from: the student `{result.student}`, on `{result.train_data}`.")
    family = result.comparisons[0] if result.comparisons else None
    lines += [
        f"- Test split (`{s.test_data}`): {result.test_prompts} distinct prompts, {result.test_rows} rows; "
        "the unit of every interval is the prompt (rows sharing a prompt are one).",
        f"- Budgets: {s.steps} optimizer steps for every run (`--steps` overrides max_steps); rows per step "
        + ("equal for every method: " if result.equal_budgets else "**not equal** (--allow-unequal-budgets): ")
        + ", ".join(f"{m.name} {m.rows_per_step}" for m in result.methods) + ". Compute per run in the budget table.",
        f"- Grids: learning rates {_floats(s.learning_rates)}; sampling temperatures {_floats(s.temperatures)} for "
        "methods that sample (not MiniLLM: its estimator samples at kd_temperature); β "
        f"{_floats(s.betas)} for generalized-JSD methods (0 < β < 1; β 0 or 1 is the method's identity, forward or "
        "reverse KL, and is kept). "
        + ("Staged search (`--search staged`): every learning rate at the spec's own temperature and β, then "
           "every temperature × β at the chosen rate; a better rate at another β is not looked for. "
           if s.search == "staged" else "Every combination (`--search grid`). ")
        + "Settings trained: "
        + ", ".join(f"{m.name} {len(m.sweep)}" for m in result.methods)
        + ("" if len(sizes) == 1 else " (they differ: a method with more settings had more chances on the eval split)")
        + ".",
        f"- Selection: every setting trained with seed {s.selection_seed} and scored on "
        f"{'all' if not s.selection_examples else f'the first {s.selection_examples}'} eval-split rows, "
        f"{_decoding_words(result.grading, s)}; the best is shown with each setting's 95 % interval and its "
        "Bonferroni-adjusted gap to every other (below). The chosen setting is then trained again with fresh seeds "
        f"{', '.join(map(str, s.seeds))} (not the selection run), and only those are scored on test.",
        f"- Scores: {result.metric} validity, {_decoding_words(result.grading, s)}, and greedy; the primary score "
        f"is {'the sampled one' if result.grading > 0 else 'greedy'} (the task's grading temperature, the specs' "
        f"eval_temperature {result.grading:g}). Baselines: the teacher and the student before training, greedy, at "
        f"T 1 and at the student's best temperature on the eval split (of {_floats(s.decode_temperatures)}: "
        f"{result.student_choice.selection.text()}).",
        "- Intervals: prompt-clustered percentile bootstrap (`core_distill/compare/stats.py`); a method's score merges its "
        "seeds (the seed spread is beside it). "
        + (f"Claims: {family.n_comparisons} pairwise comparisons of the {len(result.models)} models "
           f"({', '.join(result.models)}), Bonferroni-adjusted (each at {100 * family.adjusted_confidence:.3g} %), "
           "a claim only where the adjusted interval excludes 0." if family else ""),
        f"- Diversity: distinct valid completions per prompt, and {result.diversity or 'no task measure'}"
        + (" (mean over correct completions)." if result.diversity else "."),
        "", "## Test scores", "", result.table, "",
        "## Claims", "", *[f"- {c}" for c in result.claims], "",
        "## Budgets and compute", "",
        "Per run of the chosen setting (mean over the fresh seeds); generated tokens are on-policy or seq-KD "
        "samples, teacher tokens what the teacher scored (prompt + completion).", "",
        budget_table(result), "",
    ]  # fmt: skip
    if plot_path is not None:
        relative = os.path.relpath(plot_path, doc_path.parent)
        lines += [
            "## Quality against steps, teacher tokens and wall time", "",
            f"The runs' own eval-split score every {s.eval_every} steps ({s.curve_examples} rows, the run's seed) for "
            "each chosen setting, mean over the fresh seeds (band: min to max); step 0 is the student before training.",
            "", f"![eval score against steps, teacher tokens and wall time]({relative})", "",
        ]  # fmt: skip
    lines += ["## Selection on the eval split", "", *selection_section(result)]
    lines += ["## Per seed (test)", "", *per_seed_table(result), "",
              "Cells: score / forward KL. Every per-prompt score: `results.json` in the output folder.", ""]  # fmt: skip
    lines += ["## Discussion", "", _kept_discussion(previous), ""]
    return "\n".join(lines)


def _kept_discussion(previous: str) -> str:
    # the markers count only on lines of their own: a page may mention them in its prose
    found = re.search(rf"^{re.escape(DISCUSSION_START)}$(.*?)^{re.escape(DISCUSSION_END)}$", previous, re.M | re.S)
    if found:
        return f"{DISCUSSION_START}{found.group(1)}{DISCUSSION_END}"
    return f"{DISCUSSION_START}\n_Not written yet: the numbers above are all this run shows._\n{DISCUSSION_END}"


def _mean_curve(records: list[dict[str, Any]], index: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """x (step, mean seconds or mean teacher tokens), mean, min and max score (in %) over seeds, per eval step."""
    steps = sorted({p[0] for r in records for p in r["curve"]})
    xs, mean, low, high = [], [], [], []
    for step in steps:
        points = [p for r in records for p in r["curve"] if p[0] == step]
        xs.append(statistics.mean(p[index] for p in points))
        values = [100 * p[2] for p in points]
        mean.append(statistics.mean(values))
        low.append(min(values))
        high.append(max(values))
    return xs, mean, low, high


def plot_curves(result: CompareResult, path: Path) -> None:
    """Eval score against steps, teacher tokens and wall time, one line per method's chosen setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5), dpi=110, sharey=True)
    colors = plt.get_cmap("tab10")
    panels = ((0, "optimizer step"), (3, "teacher tokens scored"), (1, "wall time of the run (s)"))
    for ax, (index, xlabel) in zip(axes, panels, strict=True):
        for i, m in enumerate(result.methods):
            records = [r for _, r in m.runs if r["curve"] and len(r["curve"][0]) > index]
            if not records:
                continue
            xs, mean, low, high = _mean_curve(records, index)
            ax.plot(xs, mean, marker="o", markersize=3, color=colors(i % 10), label=m.name)
            ax.fill_between(xs, low, high, color=colors(i % 10), alpha=0.12)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"eval score (%, {decoding_label(result.grading)})")
    axes[0].set_ylim(-2, 102)
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    n = len(result.settings.seeds)
    fig.suptitle(f"Eval score during training, chosen setting per method ({n} fresh seed{'s' if n > 1 else ''})")
    axes[2].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
