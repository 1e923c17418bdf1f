"""`distill compare`: run several specs with the same step budget and seeds, then tabulate.

Every spec runs once per seed (in this process, one after another) with `max_steps`, `seed` and the
evaluation cadence overridden, so the methods differ only in what the spec says about the method.
Each final model, the teacher and the untrained student are scored on the held-out test split by
`evaluate_model`; accuracy on the eval split during training gives the learning curves. The
results go to a Markdown page (table, per-seed numbers, the paper's ordering checked from the
numbers) and a PNG of accuracy against steps. A hand-written discussion between the
`<!-- discussion -->` markers of an existing page is kept when the page is rewritten.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core_distill.model_eval import ModelReport, evaluate_model
from core_distill.paths import TOY_SCHEME, toy_dir
from core_distill.reporting import FanoutReporter, JsonlReporter, NullReporter
from core_distill.spec import DistillSpec, SpecError

DISCUSSION_START, DISCUSSION_END = "<!-- discussion -->", "<!-- /discussion -->"
# The GKD paper's claim, checked on held-out accuracy: on-policy GKD >= supervised KD >= SFT.
PAPER_ORDER = ("gkd_on_policy", "supervised_kd", "sft")


class CompareError(ValueError):
    pass


@dataclass
class CompareSettings:
    steps: int = 200
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_every: int = 20  # learning-curve points (on the eval split)
    curve_examples: int = 100
    test_examples: int = 0  # 0 = the whole test split
    teacher: str = "toy:teacher"  # the reference every model's divergence is measured against
    test_data: str = "test"
    max_new_tokens: int = 96


@dataclass
class SeedRun:
    seed: int
    test: dict[str, Any]  # ModelReport.to_json() without samples
    curve: list[tuple[int, float]]  # (step, eval accuracy)
    seconds: float


@dataclass
class MethodResult:
    name: str  # the spec file's stem
    spec_file: str
    runs: list[SeedRun] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        if key == "accuracy":
            return [r.test["accuracy"] for r in self.runs]
        return [r.test["divergence"][key] for r in self.runs]


@dataclass
class CompareResult:
    settings: CompareSettings
    baselines: dict[str, ModelReport]  # "teacher", "student (before)"
    baseline_curve: dict[str, float]  # eval-split accuracy of the baselines (the curves' step 0)
    methods: list[MethodResult]
    table: str  # the Markdown table, exactly as printed
    wall_seconds: float
    build_seconds: float | None  # when this command built the toy task first


def load_specs(spec_files: list[Path], settings: CompareSettings) -> list[tuple[str, DistillSpec]]:
    """Parse every spec up front, so a typo in the last one fails before hours of training."""
    if not spec_files:
        raise CompareError("give at least one spec file (for example examples/*.yaml)")
    stems = [p.stem for p in spec_files]
    if len(set(stems)) != len(stems):
        raise CompareError(f"spec file names must differ (they name the methods), got {stems}")
    specs = []
    for path in spec_files:
        try:
            spec = DistillSpec.from_yaml(path).with_overrides(
                {
                    "max_steps": settings.steps,
                    "eval_every": settings.eval_every,
                    "save_every": 0,
                    "eval_examples": settings.curve_examples,
                }  # fmt: skip
            )
        except SpecError as exc:
            raise CompareError(f"{path}: {exc}") from None
        except OSError as exc:
            raise CompareError(f"{path}: cannot read it ({exc.strerror})") from None
        if not spec.eval_data:
            raise CompareError(f"{path}: eval_data is empty; the comparison's learning curves need an eval split")
        specs.append((path.stem, spec))
    return specs


def uses_toy(specs: list[tuple[str, DistillSpec]], settings: CompareSettings) -> bool:
    names = [settings.teacher]
    for _, spec in specs:
        names += [spec.student, spec.teacher, spec.train_data, spec.eval_data]
    return any(n.startswith(TOY_SCHEME) for n in names)


def compare(
    spec_files: list[Path],
    settings: CompareSettings,
    *,
    output_dir: Path,
    doc_path: Path | None,
    plot_path: Path | None,
    command: str = "",
    echo: Callable[[str], None] = print,
    progress: bool = False,
    reuse: bool = False,
) -> CompareResult:
    """Run every spec for every seed, evaluate, write the page and the plot; return what was printed.

    With `reuse`, a run whose folder holds the record of a finished run of the same spec (same
    seed and budget) from an earlier comparison is not trained again: an interrupted comparison
    resumes where it stopped.
    """
    start = time.time()
    load_before = os.getloadavg()
    specs = load_specs(spec_files, settings)
    if settings.steps < 1 or not settings.seeds:
        raise CompareError("--steps must be >= 1 and --seeds must name at least one seed")
    if not settings.teacher:
        raise CompareError("--teacher is empty; the divergence columns need a reference teacher")

    build_seconds = None
    if uses_toy(specs, settings) and not (toy_dir() / "manifest.json").exists():
        from core_distill.toy.build import build_toy

        echo(f"no toy build in {toy_dir()}: building it first (distill toy build)")
        build_seconds = build_toy(progress=progress)["build_seconds"]
    for name, spec in specs:
        try:
            spec.preflight()
        except SpecError as exc:
            raise CompareError(f"{name}.yaml: {exc}") from None

    evaluate = _evaluator(settings)
    students = sorted({spec.student for _, spec in specs})
    echo(f"baselines: {settings.teacher} and {', '.join(students)} on {settings.test_data}")
    baselines = {"teacher": evaluate(settings.teacher)}
    curve_cache: dict[tuple, float] = {}  # specs that share student and eval split share the curves' step 0
    baseline_curve = {"teacher": _eval_split_accuracy(settings.teacher, specs[0][1], settings, curve_cache)}
    for student in students:
        label = "student (before)" if len(students) == 1 else f"{student} (before)"
        baselines[label] = evaluate(student)
    for label, report in baselines.items():
        echo(f"  {label}: test accuracy {report.accuracy:.1%}, forward KL {report.divergence['fkl']:.4f}")

    methods, total, done = [], len(specs) * len(settings.seeds), 0
    for name, spec in specs:
        result = MethodResult(name, str(next(p for p in spec_files if p.stem == name)))
        before = baseline_curve[f"{spec.student} on {spec.eval_data}"] = _eval_split_accuracy(
            spec.student, spec, settings, curve_cache
        )
        for seed in settings.seeds:
            done += 1
            run_dir, seed_spec = output_dir / name / f"seed{seed}", spec.with_overrides({"seed": seed})
            reused = _reused_run(seed_spec, run_dir, before) if reuse else None
            result.runs.append(reused or _run_one(seed_spec, run_dir, evaluate, before, progress))
            test = result.runs[-1].test
            echo(f"[{done}/{total}] {name} seed {seed}: test accuracy {test['accuracy']:.1%}, "
                 f"forward KL {test['divergence']['fkl']:.4f}, {result.runs[-1].seconds:.0f} s"
                 + (" (reused from an earlier comparison)" if reused else ""))  # fmt: skip
        methods.append(result)

    table = results_table(baselines, methods)
    echo("")
    echo(table)
    result = CompareResult(settings, baselines, baseline_curve, methods, table, time.time() - start, build_seconds)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(result_json(result), indent=2))
    if plot_path is not None:
        plot_curves(result, plot_path)
    if doc_path is not None:
        doc_path.parent.mkdir(parents=True, exist_ok=True)
        previous = doc_path.read_text() if doc_path.exists() else ""
        doc_path.write_text(results_page(result, command, load_before, os.getloadavg(), plot_path, doc_path, previous))
        echo(
            f"\nwrote {doc_path}"
            + (f" and {plot_path}" if plot_path else "")
            + f" in {result.wall_seconds / 60:.1f} min"
        )
    return result


def _evaluator(settings: CompareSettings) -> Callable[[str], ModelReport]:
    def evaluate(model: str) -> ModelReport:
        return evaluate_model(
            model, settings.test_data, teacher=settings.teacher, limit=settings.test_examples,
            max_new_tokens=settings.max_new_tokens, n_samples=0,
        )  # fmt: skip

    return evaluate


def _eval_split_accuracy(model: str, spec: DistillSpec, settings: CompareSettings, cache: dict) -> float:
    """Accuracy on the rows the training runs evaluate on: the learning curves' step 0."""
    key = (model, spec.eval_data, spec.eval_metric, spec.max_new_tokens)
    if key not in cache:
        cache[key] = evaluate_model(
            model, spec.eval_data, teacher=None, limit=settings.curve_examples, metric=spec.eval_metric,
            max_new_tokens=spec.max_new_tokens, n_samples=0,
        ).accuracy  # fmt: skip
    return cache[key]


class _CurveReporter(NullReporter):
    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if "eval/exact_match" in metrics:
            self.points.append((step, metrics["eval/exact_match"]))


RUN_RECORD = "compare_run.json"


def _reused_run(spec: DistillSpec, run_dir: Path, before: float) -> SeedRun | None:
    """An earlier comparison's finished run of exactly this spec, if its record is there."""
    record_path = run_dir / RUN_RECORD
    if not record_path.exists():
        return None
    record = json.loads(record_path.read_text())
    if record["spec"] != spec.model_dump() or record["before"] != before:
        return None
    return SeedRun(spec.seed, record["test"], [tuple(point) for point in record["curve"]], record["seconds"])


def _run_one(spec: DistillSpec, run_dir: Path, evaluate, before: float, progress: bool) -> SeedRun:
    from core_distill.train import run

    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run: the comparison never resumes stale checkpoints
    curve = _CurveReporter()
    t0 = time.time()
    result = run(spec, output_dir=run_dir, reporter=FanoutReporter(JsonlReporter(run_dir), curve), resume=False,
                 progress=progress)  # fmt: skip
    seconds = time.time() - t0
    test = evaluate(str(result.model_dir)).to_json()
    test.pop("samples")
    seed_run = SeedRun(spec.seed, test, [(0, before), *curve.points], seconds)
    record = {"spec": spec.model_dump(), "before": before, "test": test, "curve": seed_run.curve, "seconds": seconds}
    (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=2))
    return seed_run


# --- the table, the page and the plot -----------------------------------------------------------------
def _mean_sd(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def results_table(baselines: dict[str, ModelReport], methods: list[MethodResult]) -> str:
    """Test accuracy and final divergences to the teacher; mean ± sample standard deviation over seeds."""
    lines = [
        "| model | seeds | test accuracy | min – max | forward KL (T‖S) | reverse KL (S‖T) | s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, report in baselines.items():
        lines.append(f"| {label} | – | {100 * report.accuracy:.1f} % | – | {report.divergence['fkl']:.4f} | "
                     f"{report.divergence['rkl']:.4f} | – |")  # fmt: skip
    for method in methods:
        accuracy = [100 * v for v in method.values("accuracy")]
        seconds = statistics.mean(r.seconds for r in method.runs)
        lines.append(
            f"| {method.name} | {len(method.runs)} | {_mean_sd(accuracy, '.1f')} % | {min(accuracy):.1f} – "
            f"{max(accuracy):.1f} % | {_mean_sd(method.values('fkl'), '.4f')} | {_mean_sd(method.values('rkl'), '.4f')} "
            f"| {seconds:.0f} |"
        )
    return "\n".join(lines)


def paper_order_check(methods: list[MethodResult]) -> str:
    """Whether on-policy GKD >= supervised KD >= SFT holds on mean test accuracy (when all three ran),
    and which of the two gaps are smaller than the spread over seeds."""
    by_name = {m.name: m.values("accuracy") for m in methods}
    if not all(name in by_name for name in PAPER_ORDER):
        return f"Not checked: the comparison needs the specs {', '.join(n + '.yaml' for n in PAPER_ORDER)}."
    means = [statistics.mean(by_name[name]) for name in PAPER_ORDER]
    verdict = "holds" if means[0] >= means[1] >= means[2] else "does not hold"
    text = (
        f"Mean test accuracy: on-policy GKD {means[0]:.1%}, supervised KD {means[1]:.1%}, SFT {means[2]:.1%}. "
        f"The paper's ordering (on-policy GKD ≥ supervised KD ≥ SFT) **{verdict}** in this run."
    )
    labels = ("on-policy GKD", "supervised KD", "SFT")
    for i in (0, 1):
        pair = (by_name[PAPER_ORDER[i]], by_name[PAPER_ORDER[i + 1]])
        if min(len(v) for v in pair) < 2:
            continue
        spread = max(statistics.stdev(v) for v in pair)
        if abs(means[i] - means[i + 1]) <= spread:
            text += (
                f" The gap between {labels[i]} and {labels[i + 1]} ({100 * abs(means[i] - means[i + 1]):.1f} points) "
                f"is within the spread over seeds (standard deviation up to {100 * spread:.1f} points)."
            )
    return text


def result_json(result: CompareResult) -> dict[str, Any]:
    return {
        "settings": {**result.settings.__dict__, "seeds": list(result.settings.seeds)},
        "baselines": {k: {**v.to_json(), "samples": []} for k, v in result.baselines.items()},
        "baseline_eval_accuracy": result.baseline_curve,
        "methods": [
            {
                "name": m.name,
                "spec_file": m.spec_file,
                "runs": [{"seed": r.seed, "test": r.test, "curve": r.curve, "seconds": r.seconds} for r in m.runs],
            }
            for m in result.methods
        ],  # fmt: skip
        "wall_seconds": result.wall_seconds,
        "build_seconds": result.build_seconds,
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    import torch

    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def results_page(result: CompareResult, command: str, load_before, load_after, plot_path: Path | None,
                 doc_path: Path, previous: str) -> str:  # fmt: skip
    s = result.settings
    manifest_path = toy_dir() / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    built = f", of which {result.build_seconds / 60:.1f} min building the toy task" if result.build_seconds else ""
    lines = [
        "# Results: distillation methods on the built-in arithmetic task",
        "",
        "<!-- Written by `distill compare`; everything outside the discussion markers is regenerated. -->",
        "",
        f"Command: `{command or 'distill compare'}`",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {_machine()}; wall time "
        f"{result.wall_seconds / 60:.1f} min{built}. Load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load_before)} at the start and {'/'.join(f'{x:.2f}' for x in load_after)} "
        "at the end (the machine is shared, so wall times vary with other jobs).",
        "",
        "## Setup",
        "",
    ]
    if manifest is not None:
        models = manifest["models"]
        lines += [
            f"- Task: {manifest['config']['digits']}-digit addition with worked carry steps (`distill toy build`, seed "
            f"{manifest['seed']}); splits of {', '.join(f'{k} {v}' for k, v in manifest['sizes'].items())} rows, disjoint.",
            f"- Teacher: Llama, hidden {models['teacher']['hidden_size']} × {models['teacher']['layers']} layers, "
            f"{models['teacher']['parameters']:,} parameters, trained from scratch. Student: hidden "
            f"{models['student']['hidden_size']} × {models['student']['layers']} layers, "
            f"{models['student']['parameters']:,} parameters, after a short SFT warm start.",
        ]
    lines += [
        f"- Every method: the spec in `examples/` with `max_steps` {s.steps}, seeds {', '.join(map(str, s.seeds))}; "
        "the rest (learning rate, batch size, method knobs) as the spec file says.",
        f"- Test accuracy: final answer (after `####`) of greedy completions on "
        f"{'all' if not s.test_examples else f'the first {s.test_examples}'} rows of the held-out test split (`{s.test_data}`). "
        f"Divergences: per-token forward KL(teacher ‖ model) and reverse KL(model ‖ teacher) on the test split's "
        f"reference completions, against `{s.teacher}`, whatever teacher the method trained with.",
        "- Mean ± sample standard deviation over seeds; min – max beside it.",
        "",
        "## Test accuracy and divergence to the teacher",
        "",
        result.table,
        "",
        "## The paper's ordering",
        "",
        paper_order_check(result.methods),
        "",
    ]
    if plot_path is not None:
        relative = os.path.relpath(plot_path, doc_path.parent)
        lines += [
            "## Accuracy during training",
            "",
            f"Accuracy on the first {s.curve_examples} eval-split rows every {s.eval_every} steps (mean over seeds, "
            "band = min to max); step 0 is the student before training, the dashed line the teacher.",
            "",
            f"![accuracy against steps]({relative})",
            "",
        ]
    lines += ["## Per seed", "", "| method | " + " | ".join(f"seed {x}" for x in s.seeds) + " |",
              "|---|" + "---|" * len(s.seeds)]  # fmt: skip
    for method in result.methods:
        cells = [f"{r.test['accuracy']:.1%} / {r.test['divergence']['fkl']:.4f}" for r in method.runs]
        lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: test accuracy / forward KL. Raw numbers: `results.json` in the run folder.", ""]
    lines += ["## Discussion", "", _kept_discussion(previous), ""]
    return "\n".join(lines)


def _kept_discussion(previous: str) -> str:
    # the markers count only on lines of their own: a page may mention them in its prose
    found = re.search(rf"^{re.escape(DISCUSSION_START)}$(.*?)^{re.escape(DISCUSSION_END)}$", previous, re.M | re.S)
    if found:
        return f"{DISCUSSION_START}{found.group(1)}{DISCUSSION_END}"
    return f"{DISCUSSION_START}\n_Not written yet: the numbers above are all this run shows._\n{DISCUSSION_END}"


def plot_curves(result: CompareResult, path: Path) -> None:
    """Eval accuracy against steps, one line per method (mean over seeds, band = min to max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colors = plt.get_cmap("tab10")
    for i, method in enumerate(result.methods):
        steps = sorted({step for r in method.runs for step, _ in r.curve})
        per_step = [[acc for r in method.runs for s, acc in r.curve if s == step] for step in steps]
        mean = [100 * statistics.mean(v) for v in per_step]
        ax.plot(steps, mean, marker="o", markersize=3, color=colors(i % 10), label=method.name)
        ax.fill_between(steps, [100 * min(v) for v in per_step], [100 * max(v) for v in per_step],
                        color=colors(i % 10), alpha=0.12)  # fmt: skip
    ax.axhline(100 * result.baseline_curve["teacher"], color="black", linestyle="--", linewidth=1, label="teacher")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.xaxis.get_major_locator().set_params(integer=True)
    n_seeds = len(result.settings.seeds)
    ax.set_title(f"Accuracy during training ({n_seeds} seed{'s' if n_seeds > 1 else ''})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
