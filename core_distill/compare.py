"""`distill compare`: a fair comparison of methods, one spec file per method.

Fair means:
- the same budget in optimizer steps for every method, and the compute each one spent beside it
  (wall time, tokens generated, tokens the teacher scored);
- the same small sweep for every method: each learning rate of `learning_rates`, and for methods
  that sample (lmbda > 0 or seq_kd) each sampling temperature of `temperatures`;
- the setting is chosen on the eval split (seed 0's accuracy at the last step), and only the
  chosen setting is scored on the test split, over every seed (mean ± sample standard deviation);
- the teacher and the untrained student are rows of the table, and every curve starts at step 0.

Runs go to a pool of worker processes (one per core by default), each with one torch thread, so
a run computes the same numbers whatever the machine's core count or load. The page (Markdown,
headline first) and a plot of accuracy against steps and wall time are written at the end; a
hand-written discussion between the `<!-- discussion -->` markers of an existing page is kept.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from core_distill.metric_keys import COUNT_GENERATED_TOKENS, COUNT_TEACHER_TOKENS, EVAL_EXACT_MATCH
from core_distill.model_eval import ModelReport, evaluate_model
from core_distill.paths import toy_dir
from core_distill.reporting import NullReporter
from core_distill.spec import DistillSpec, SpecError

DISCUSSION_START, DISCUSSION_END = "<!-- discussion -->", "<!-- /discussion -->"
# The GKD paper's claim, checked on held-out accuracy: on-policy GKD >= supervised KD >= SFT.
PAPER_ORDER = ("gkd_on_policy", "supervised_kd", "sft")
RUN_RECORD = "compare_run.json"


class CompareError(ValueError):
    pass


@dataclass
class CompareSettings:
    steps: int = 200
    seeds: tuple[int, ...] = (0, 1, 2)
    learning_rates: tuple[float, ...] = ()  # empty: each spec's own
    temperatures: tuple[float, ...] = ()  # for methods that sample; empty: each spec's own
    eval_every: int = 40  # learning-curve points (on the eval split)
    curve_examples: int = 100
    test_examples: int = 0  # 0 = the whole test split
    teacher: str = "toy:teacher"  # the reference every model's divergence is measured against
    test_data: str = "test"
    workers: int = 0  # processes running at once; 0 = one per CPU core


@dataclass
class SeedRun:
    seed: int
    learning_rate: float
    temperature: float | None  # None: the method does not sample
    curve: list[tuple[int, float, float]]  # (step, seconds since the run started, eval accuracy)
    seconds: float  # training wall time
    generated_tokens: int
    teacher_tokens: int
    test: dict[str, Any] | None = None  # ModelReport.to_json() without samples; chosen settings only
    model_dir: str = ""

    @property
    def eval_accuracy(self) -> float:
        return self.curve[-1][2] if self.curve else 0.0


@dataclass
class MethodResult:
    name: str  # the spec file's stem
    spec_file: str
    samples: bool  # whether its sweep includes the sampling temperature
    sweep: list[SeedRun] = field(default_factory=list)  # the first seed of every setting
    runs: list[SeedRun] = field(default_factory=list)  # the chosen setting, every seed, scored on test

    def values(self, key: str) -> list[float]:
        if key == "accuracy":
            return [r.test["accuracy"] for r in self.runs]
        return [r.test["divergence"][key] for r in self.runs]

    @property
    def chosen(self) -> SeedRun:
        return self.runs[0]


@dataclass
class CompareResult:
    settings: CompareSettings
    baselines: dict[str, ModelReport]  # "teacher", "student (before)"
    teacher_eval_accuracy: float  # on the eval split: the curves' reference line
    methods: list[MethodResult]
    table: str  # the Markdown table, exactly as printed
    wall_seconds: float


# --- specs and the grid ----------------------------------------------------------------------------
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
                {"max_steps": settings.steps, "eval_every": settings.eval_every, "save_every": 0,
                 "eval_examples": settings.curve_examples}  # fmt: skip
            )
        except SpecError as exc:
            raise CompareError(f"{path}: {exc}") from None
        except OSError as exc:
            raise CompareError(f"{path}: cannot read it ({exc.strerror})") from None
        if not spec.eval_data:
            raise CompareError(f"{path}: eval_data is empty; the comparison chooses settings on the eval split")
        specs.append((path.stem, spec))
    metrics = {spec.eval_metric for _, spec in specs}
    if len(metrics) > 1:
        raise CompareError(f"every spec must grade with the same eval_metric to be compared, got {sorted(metrics)}")
    return specs


def samples(spec: DistillSpec) -> bool:
    return spec.lmbda > 0 or spec.seq_kd


def grid(spec: DistillSpec, settings: CompareSettings) -> list[tuple[float, float | None]]:
    """(learning rate, sampling temperature or None) settings of one method's sweep."""
    rates = settings.learning_rates or (spec.learning_rate,)
    if not samples(spec):
        return [(lr, None) for lr in rates]
    temperatures = settings.temperatures or (spec.temperature,)
    if spec.objective == "minillm":  # its estimator needs samples at kd_temperature (the spec refuses others)
        temperatures = (spec.kd_temperature,)
    return [(lr, t) for lr in rates for t in temperatures]


def setting_spec(spec: DistillSpec, learning_rate: float, temperature: float | None, seed: int) -> DistillSpec:
    overrides: dict[str, Any] = {"learning_rate": learning_rate, "seed": seed}
    if temperature is not None:
        overrides["temperature"] = temperature
    return spec.with_overrides(overrides)


def setting_label(learning_rate: float, temperature: float | None) -> str:
    return f"lr {learning_rate:g}" + (f", T {temperature:g}" if temperature is not None else "")


def choose(sweep: list[SeedRun]) -> SeedRun:
    """Best eval accuracy at the last step; ties go to the better mean over the curve, then the lower rate."""
    return max(sweep, key=lambda r: (r.eval_accuracy, statistics.mean(p[2] for p in r.curve), -r.learning_rate))


# --- one run (in a worker process) ------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    method: str
    spec: DistillSpec
    run_dir: Path
    train: bool  # False: only score an earlier run's final model on the test split
    test: bool
    teacher: str
    test_data: str
    test_examples: int


class _RunRecorder(NullReporter):
    """The eval curve (with wall time) and the compute counters of one run."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.curve: list[tuple[int, float, float]] = []
        self.generated_tokens = 0
        self.teacher_tokens = 0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if EVAL_EXACT_MATCH in metrics:
            self.curve.append((step, round(time.perf_counter() - self.start, 2), metrics[EVAL_EXACT_MATCH]))
        self.generated_tokens += int(metrics.get(COUNT_GENERATED_TOKENS, 0))
        self.teacher_tokens += int(metrics.get(COUNT_TEACHER_TOKENS, 0))


def run_job(job: Job) -> dict[str, Any]:
    """Train (unless job.train is False) and score on test (if job.test); the run's record as a dict."""
    import torch

    torch.set_num_threads(1)  # the same numbers on every machine, whatever its cores or load
    record_path = job.run_dir / RUN_RECORD
    if job.train:
        from core_distill.reporting import FanoutReporter, JsonlReporter
        from core_distill.train import run

        if job.run_dir.exists():
            shutil.rmtree(job.run_dir)  # a fresh run: the comparison never resumes stale checkpoints
        recorder = _RunRecorder()
        result = run(job.spec, output_dir=job.run_dir, reporter=FanoutReporter(JsonlReporter(job.run_dir), recorder),
                     resume=False)  # fmt: skip
        record = {
            "spec": job.spec.model_dump(), "curve": recorder.curve, "seconds": round(time.perf_counter() - recorder.start, 2),
            "generated_tokens": recorder.generated_tokens, "teacher_tokens": recorder.teacher_tokens,
            "model_dir": str(result.model_dir), "test": None,
        }  # fmt: skip
    else:
        record = json.loads(record_path.read_text())
    if job.test and record["test"] is None:
        report = evaluate_model(record["model_dir"], job.test_data, teacher=job.teacher, limit=job.test_examples,
                                metric=job.spec.eval_metric, max_new_tokens=job.spec.max_new_tokens, n_samples=0)  # fmt: skip
        record["test"] = {k: v for k, v in report.to_json().items() if k != "samples"}
    record_path.write_text(json.dumps(record, indent=2))
    return record


def _seed_run(spec: DistillSpec, record: dict[str, Any], with_temperature: bool) -> SeedRun:
    return SeedRun(
        seed=spec.seed, learning_rate=spec.learning_rate, temperature=spec.temperature if with_temperature else None,
        curve=[tuple(p) for p in record["curve"]], seconds=record["seconds"],
        generated_tokens=record["generated_tokens"], teacher_tokens=record["teacher_tokens"], test=record["test"],
        model_dir=record["model_dir"],
    )  # fmt: skip


def _reusable(job: Job) -> dict[str, Any] | None:
    """An earlier comparison's finished run of exactly this spec, if its record is there."""
    path = job.run_dir / RUN_RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("spec") == job.spec.model_dump() else None


class Runner(Protocol):
    """Runs jobs and returns each one's record, in order: the local pool below, or a sweep submitted to a
    running service (app/sweep_runner.py) that trains there and scores here."""

    def run_jobs(self, jobs: Sequence[Job]) -> list[dict[str, Any]]: ...


class _Pool:
    """Runs jobs in `workers` processes (in this process when workers == 1) and reports each as it ends."""

    def __init__(self, workers: int, echo: Callable[[str], None], reuse: bool) -> None:
        self.workers, self.echo, self.reuse = workers, echo, reuse
        self.executor = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
        )

    def run(self, jobs: list[Job], describe: Callable[[Job, dict], str]) -> list[dict[str, Any]]:
        records: list[dict[str, Any] | None] = [None] * len(jobs)
        pending = []
        for i, job in enumerate(jobs):
            # a job that does not train names a run of this comparison; others reuse only when asked to
            earlier = _reusable(job) if self.reuse or not job.train else None
            if earlier is not None and (earlier["test"] is not None or not job.test):
                records[i] = earlier
                where = "reused from an earlier comparison" if self.reuse else "from the sweep"
                self.echo(f"  {describe(job, earlier)} ({where})")
            else:
                if earlier is not None:  # trained already, only its test score is missing
                    job = replace(job, train=False)
                pending.append((i, job))
        if self.executor is None:
            for done, (i, job) in enumerate(pending, 1):
                records[i] = run_job(job)
                self.echo(f"  [{done}/{len(pending)}] {describe(job, records[i])}")
        else:
            futures = {self.executor.submit(run_job, job): (i, job) for i, job in pending}
            for done, future in enumerate(as_completed(futures), 1):
                i, job = futures[future]
                records[i] = future.result()
                self.echo(f"  [{done}/{len(pending)}] {describe(job, records[i])}")
        return records  # type: ignore[return-value]

    def run_jobs(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        return self.run(list(jobs), _describe)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


LocalPool = _Pool  # the Runner of this machine


# --- the comparison ---------------------------------------------------------------------------------
def compare(
    spec_files: list[Path],
    settings: CompareSettings,
    *,
    output_dir: Path,
    doc_path: Path | None,
    plot_path: Path | None,
    command: str = "",
    echo: Callable[[str], None] = print,
    reuse: bool = False,
    runner: Runner | None = None,
) -> CompareResult:
    """Sweep, choose on eval, score the chosen settings on test over every seed; write the page and the plot.

    With `reuse`, a run whose folder holds the record of a finished run of the same spec from an
    earlier comparison is not trained again: an interrupted comparison resumes where it stopped.
    `runner` runs the jobs (default: a local pool of `settings.workers` processes).
    """
    start = time.time()
    load_before = os.getloadavg()
    specs = load_specs(spec_files, settings)
    if settings.steps < 1 or not settings.seeds:
        raise CompareError("--steps must be >= 1 and --seeds must name at least one seed")
    if not settings.teacher:
        raise CompareError("--teacher is empty; the divergence columns need a reference teacher")
    if any(lr <= 0 for lr in settings.learning_rates) or any(t <= 0 for t in settings.temperatures):
        raise CompareError("--learning-rates and --temperatures must be positive")
    for name, spec in specs:
        try:
            spec.preflight()
            for lr, temperature in grid(spec, settings):
                setting_spec(spec, lr, temperature, settings.seeds[0])
        except SpecError as exc:
            raise CompareError(f"{name}.yaml: {exc}") from None

    first = specs[0][1]
    echo(f"baselines: {settings.teacher} and {first.student} on {settings.test_data}")
    baselines = {
        "teacher": _evaluate(settings.teacher, settings, first),
        "student (before)": _evaluate(first.student, settings, first),
    }
    for label, report in baselines.items():
        echo(f"  {label}: test accuracy {report.accuracy:.1%}, forward KL {report.divergence['fkl']:.4f}")
    teacher_eval = evaluate_model(settings.teacher, first.eval_data, teacher=None, limit=settings.curve_examples,
                                  metric=first.eval_metric, max_new_tokens=first.max_new_tokens, n_samples=0).accuracy  # fmt: skip

    workers = settings.workers or os.cpu_count() or 1
    pool = None if runner is not None else _Pool(workers, echo, reuse)
    jobs_runner: Runner = runner or pool  # type: ignore[assignment]
    methods = [MethodResult(name, str(next(p for p in spec_files if p.stem == name)), samples(spec))
               for name, spec in specs]  # fmt: skip
    try:
        # 1. the sweep: every setting of every method, first seed, eval split only
        sweep_jobs = [
            _job(name, setting_spec(spec, lr, t, settings.seeds[0]), output_dir, settings, test=len(grid(spec, settings)) == 1)
            for name, spec in specs
            for lr, t in grid(spec, settings)
        ]  # fmt: skip
        n_settings = len(sweep_jobs)
        echo(f"sweep: {n_settings} settings of {len(specs)} methods, {settings.steps} steps each, {workers} at a time")
        for job, record in zip(sweep_jobs, jobs_runner.run_jobs(sweep_jobs), strict=True):
            method = next(m for m in methods if m.name == job.method)
            method.sweep.append(_seed_run(job.spec, record, method.samples))
        # 2. the chosen setting: test score of its first seed, then the other seeds
        seed_jobs = []
        for method, (name, spec) in zip(methods, specs, strict=True):
            best = choose(method.sweep)
            echo(f"  {name}: chose {setting_label(best.learning_rate, best.temperature)} "
                 f"(eval accuracy {best.eval_accuracy:.1%})")  # fmt: skip
            for seed in settings.seeds:
                seed_spec = setting_spec(spec, best.learning_rate, best.temperature, seed)
                job = _job(name, seed_spec, output_dir, settings, test=True)
                # the first seed was trained by the sweep: it only needs its test score
                seed_jobs.append(replace(job, train=False) if seed == settings.seeds[0] else job)
        echo(f"seeds: the chosen settings over seeds {', '.join(map(str, settings.seeds))}")
        for job, record in zip(seed_jobs, jobs_runner.run_jobs(seed_jobs), strict=True):
            method = next(m for m in methods if m.name == job.method)
            method.runs.append(_seed_run(job.spec, record, method.samples))
    finally:
        if pool is not None:
            pool.close()

    table = results_table(baselines, methods)
    echo("")
    echo(table)
    result = CompareResult(settings, baselines, teacher_eval, methods, table, time.time() - start)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(result_json(result), indent=2))
    if plot_path is not None:
        plot_curves(result, plot_path)
    if doc_path is not None:
        doc_path.parent.mkdir(parents=True, exist_ok=True)
        previous = doc_path.read_text() if doc_path.exists() else ""
        doc_path.write_text(results_page(result, command, load_before, os.getloadavg(), plot_path, doc_path, previous))
        echo(f"\nwrote {doc_path}" + (f" and {plot_path}" if plot_path else "") + f" in {result.wall_seconds / 60:.1f} min")
    return result


def _job(method: str, spec: DistillSpec, output_dir: Path, settings: CompareSettings, test: bool) -> Job:
    label = f"lr{spec.learning_rate:g}" + (f"_T{spec.temperature:g}" if samples(spec) else "")
    return Job(method, spec, output_dir / method / label / f"seed{spec.seed}", True, test, settings.teacher,
               settings.test_data, settings.test_examples)  # fmt: skip


def _describe(job: Job, record: dict[str, Any]) -> str:
    text = (f"{job.method} {setting_label(job.spec.learning_rate, job.spec.temperature if samples(job.spec) else None)} "
            f"seed {job.spec.seed}: eval accuracy {record['curve'][-1][2]:.1%}")  # fmt: skip
    if record["test"] is not None:
        text += f", test accuracy {record['test']['accuracy']:.1%}"
    return text + f", {record['seconds']:.0f} s"


def _evaluate(model: str, settings: CompareSettings, spec: DistillSpec) -> ModelReport:
    return evaluate_model(model, settings.test_data, teacher=settings.teacher, limit=settings.test_examples,
                          metric=spec.eval_metric, max_new_tokens=spec.max_new_tokens, n_samples=0)  # fmt: skip


# --- the table, the page and the plot -----------------------------------------------------------------
def _decoding(result: CompareResult) -> str:
    temperature = result.baselines["teacher"].temperature
    return "decoded greedily" if temperature == 0 else f"sampled at temperature {temperature:g}"


def _mean_sd(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def results_table(baselines: dict[str, ModelReport], methods: list[MethodResult]) -> str:
    """Test accuracy, divergences to the teacher and compute; mean ± sample standard deviation over seeds."""
    lines = [
        "| model | chosen setting | seeds | test accuracy | min – max | forward KL (T‖S) | reverse KL (S‖T) "
        "| s / run | generated tokens / run | teacher tokens / run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, report in baselines.items():
        lines.append(f"| {label} | – | – | {100 * report.accuracy:.1f} % | – | {report.divergence['fkl']:.4f} | "
                     f"{report.divergence['rkl']:.4f} | – | – | – |")  # fmt: skip
    for method in methods:
        accuracy = [100 * v for v in method.values("accuracy")]
        runs = method.runs
        lines.append(
            f"| {method.name} | {setting_label(method.chosen.learning_rate, method.chosen.temperature)} | {len(runs)} "
            f"| {_mean_sd(accuracy, '.1f')} % | {min(accuracy):.1f} – {max(accuracy):.1f} % "
            f"| {_mean_sd(method.values('fkl'), '.4f')} | {_mean_sd(method.values('rkl'), '.4f')} "
            f"| {statistics.mean(r.seconds for r in runs):.0f} | {statistics.mean(r.generated_tokens for r in runs):,.0f} "
            f"| {statistics.mean(r.teacher_tokens for r in runs):,.0f} |"
        )
    return "\n".join(lines)


def sweep_table(methods: list[MethodResult]) -> str:
    """Eval-split accuracy at the last step of every setting's first seed; the chosen one in bold."""
    lines = ["| method | setting | eval accuracy | s |", "|---|---|---|---|"]
    for method in methods:
        best = choose(method.sweep)
        for r in method.sweep:
            cell = f"{100 * r.eval_accuracy:.1f} %"
            lines.append(f"| {method.name} | {setting_label(r.learning_rate, r.temperature)} | "
                         f"{f'**{cell}**' if r is best else cell} | {r.seconds:.0f} |")  # fmt: skip
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


def headline(result: CompareResult) -> str:
    """The finding in one paragraph: the ranking by mean test accuracy, against the baselines."""
    ranked = sorted(result.methods, key=lambda m: statistics.mean(m.values("accuracy")), reverse=True)
    before = result.baselines["student (before)"].accuracy
    teacher = result.baselines["teacher"].accuracy
    parts = [f"{m.name} {100 * statistics.mean(m.values('accuracy')):.1f} %" for m in ranked]
    return (
        f"From a student at {100 * before:.1f} % and a teacher at {100 * teacher:.1f} % test accuracy, "
        f"{result.settings.steps} steps of each method (best setting on the eval split, "
        f"{len(result.settings.seeds)} seeds) rank: {', '.join(parts)}."
    )


def result_json(result: CompareResult) -> dict[str, Any]:
    return {
        "settings": {**result.settings.__dict__, "seeds": list(result.settings.seeds)},
        "baselines": {k: {**v.to_json(), "samples": []} for k, v in result.baselines.items()},
        "teacher_eval_accuracy": result.teacher_eval_accuracy,
        "methods": [
            {"name": m.name, "spec_file": m.spec_file, "sweep": [asdict(r) for r in m.sweep],
             "runs": [asdict(r) for r in m.runs]}
            for m in result.methods
        ],  # fmt: skip
        "wall_seconds": result.wall_seconds,
    }


def _machine(workers: int) -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    import torch

    return f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, {workers} runs at a time, 1 thread each"


def results_page(result: CompareResult, command: str, load_before, load_after, plot_path: Path | None,
                 doc_path: Path, previous: str) -> str:  # fmt: skip
    s = result.settings
    manifest_path = toy_dir() / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    workers = s.workers or os.cpu_count() or 1
    lines = [
        "# Results: distillation methods on the built-in countdown task",
        "",
        "<!-- Written by `distill compare`; everything outside the discussion markers is regenerated. -->",
        "",
        f"**Finding.** {headline(result)} {paper_order_check(result.methods)}",
        "",
        f"Reproduce: `{command or 'distill compare'}` — run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on "
        f"{_machine(workers)}; wall time {result.wall_seconds / 60:.1f} min. Load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in load_before)} at the start and {'/'.join(f'{x:.2f}' for x in load_after)} "
        "at the end (wall times vary with other jobs on a shared machine; accuracies do not: every run uses "
        "one thread and seeded sampling).",
        "",
        "## Setup",
        "",
    ]
    if manifest is not None:
        models = manifest["models"]
        lines += [
            f"- Task: countdown (`core_distill/toy/task.py`, seed {manifest['seed']}); splits of "
            f"{', '.join(f'{k} {v}' for k, v in manifest['sizes'].items())} rows; no prompt is in two splits.",
            f"- Teacher: Llama {models['teacher']['hidden_size']} × {models['teacher']['layers']}, "
            f"{models['teacher']['parameters']:,} parameters. Student: {models['student']['hidden_size']} × "
            f"{models['student']['layers']}, {models['student']['parameters']:,} parameters. Both trained from "
            f"scratch ({_steps(models)}) by `distill toy build` until eval loss and eval validity were flat, and "
            "shipped in the package (`toy:teacher`, `toy:student`).",
        ]
    lines += [
        f"- Every method: its spec in `examples/` with `max_steps` {s.steps}; learning rates "
        f"{', '.join(f'{x:g}' for x in s.learning_rates) or 'as in the spec'}"
        + (f"; sampling temperatures {', '.join(f'{x:g}' for x in s.temperatures)} for methods that sample"
           if s.temperatures else "") + " (MiniLLM samples at its kd_temperature, 1, as its estimator requires).",  # fmt: skip
        f"- The setting is chosen on seed {s.seeds[0]}'s accuracy on the first {s.curve_examples} eval-split rows "
        f"at the last step; the chosen setting alone is scored on {'all' if not s.test_examples else f'the first {s.test_examples}'} "
        f"rows of the held-out test split (`{s.test_data}`) over seeds {', '.join(map(str, s.seeds))}.",
        f"- Test accuracy: the share of completions {_decoding(result)} that are valid walks (any valid walk counts; "
        "one seed, so every model is scored on the same random numbers). Divergences: "
        f"per-token forward KL(teacher ‖ model) and reverse KL(model ‖ teacher) on the test split's reference "
        f"completions, against `{s.teacher}`. Mean ± sample standard deviation over seeds; min – max beside it.",
        "- Compute per run: training wall time, tokens generated (on-policy or seq-KD samples) and tokens the "
        "teacher scored (prompt + completion).",
        "",
        "## Test accuracy, divergence to the teacher and compute",
        "",
        result.table,
        "",
    ]
    if plot_path is not None:
        relative = os.path.relpath(plot_path, doc_path.parent)
        lines += [
            "## Accuracy during training",
            "",
            f"Eval-split accuracy every {s.eval_every} steps for each method's chosen setting (mean over seeds, "
            "band = min to max), against steps and against wall time; step 0 is the student before training, "
            "the dashed line the teacher.",
            "",
            f"![accuracy against steps and wall time]({relative})",
            "",
        ]
    lines += ["## The sweep (eval split, first seed)", "", sweep_table(result.methods), ""]
    lines += ["## Per seed (chosen settings)", "", "| method | " + " | ".join(f"seed {x}" for x in s.seeds) + " |",
              "|---|" + "---|" * len(s.seeds)]  # fmt: skip
    for method in result.methods:
        cells = [f"{r.test['accuracy']:.1%} / {r.test['divergence']['fkl']:.4f}" for r in method.runs]
        lines.append(f"| {method.name} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: test accuracy / forward KL. Raw numbers: `results.json` in the output folder.", ""]
    lines += ["## Discussion", "", _kept_discussion(previous), ""]
    return "\n".join(lines)


def _steps(models: dict) -> str:
    teacher, student = models["teacher"]["steps"], models["student"]["steps"]
    return f"{teacher:,} steps each" if teacher == student else f"{teacher:,} and {student:,} steps"


def _kept_discussion(previous: str) -> str:
    # the markers count only on lines of their own: a page may mention them in its prose
    found = re.search(rf"^{re.escape(DISCUSSION_START)}$(.*?)^{re.escape(DISCUSSION_END)}$", previous, re.M | re.S)
    if found:
        return f"{DISCUSSION_START}{found.group(1)}{DISCUSSION_END}"
    return f"{DISCUSSION_START}\n_Not written yet: the numbers above are all this run shows._\n{DISCUSSION_END}"


def _mean_curve(runs: list[SeedRun], index: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """x (step or mean seconds), mean, min and max accuracy (in %) over the seeds, at each eval step."""
    steps = sorted({p[0] for r in runs for p in r.curve})
    xs, mean, low, high = [], [], [], []
    for step in steps:
        points = [p for r in runs for p in r.curve if p[0] == step]
        xs.append(statistics.mean(p[index] for p in points))
        values = [100 * p[2] for p in points]
        mean.append(statistics.mean(values))
        low.append(min(values))
        high.append(max(values))
    return xs, mean, low, high


def plot_curves(result: CompareResult, path: Path) -> None:
    """Eval accuracy against steps and against wall time, one line per method's chosen setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=110, sharey=True)
    colors = plt.get_cmap("tab10")
    for ax, index, xlabel in ((axes[0], 0, "optimizer step"), (axes[1], 1, "wall time of the run (s)")):
        for i, method in enumerate(result.methods):
            xs, mean, low, high = _mean_curve(method.runs, index)
            ax.plot(xs, mean, marker="o", markersize=3, color=colors(i % 10), label=method.name)
            ax.fill_between(xs, low, high, color=colors(i % 10), alpha=0.12)
        ax.axhline(100 * result.teacher_eval_accuracy, color="black", linestyle="--", linewidth=1, label="teacher")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("eval accuracy (% valid walks)")
    axes[0].set_ylim(-2, 102)
    axes[0].xaxis.get_major_locator().set_params(integer=True)
    n_seeds = len(result.settings.seeds)
    fig.suptitle(f"Accuracy during training, chosen setting per method ({n_seeds} seed{'s' if n_seeds > 1 else ''})")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
