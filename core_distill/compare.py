"""`distill compare`: a comparison of methods that survives review, one spec file per method.

- Equal budgets: every spec must train on the same rows per optimizer step (batch_size x grad_accum),
  and every run gets the same `steps`; a spec that differs is refused unless `allow_unequal_budgets`
  (then the page says so first). Wall time, generated and teacher tokens are reported beside steps.
- The same grid for every method, wide enough to hold the optimum: each learning rate, each
  sampling temperature for methods that sample (not MiniLLM, whose estimator fixes it), each beta
  for methods whose objective is a generalized JSD (0 < beta < 1; beta 0 / 1 name the method:
  forward / reverse KL). A chosen learning rate at an edge of the grid is said on the page, or with
  `extend_edges` the grid grows by one step past that edge, once.
- Selection on the eval split with its uncertainty: the selection seed's final model of every
  setting is scored by the evaluator (n samples per row x several eval seeds), and
  `stats.selection_uncertainty` gives each setting's interval and whether the best is distinguishable.
- The chosen setting is trained again with fresh seeds (never the selection seed) and only those
  runs are scored on the test split, greedy and sampled at the task's grading temperature.
- Baselines that decoding alone cannot beat: the student and the teacher, greedy, at T 1 and at the
  student's best temperature on the eval split. Claims come from `stats.compare_all` / `stats.claims`
  (compare_report.py).

Jobs go to a `Runner` (`run_jobs(jobs) -> records`); `LocalPool` runs them in worker processes, one
torch thread each, so a run computes the same numbers whatever the machine's cores or load.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core_distill.metric_keys import COUNT_GENERATED_TOKENS, COUNT_TEACHER_TOKENS, EVAL_EXACT_MATCH
from core_distill.reporting import NullReporter
from core_distill.spec import DistillSpec, SpecError

if TYPE_CHECKING:
    from core_distill.compare_report import CompareResult

RUN_RECORD = "compare_run.json"


class CompareError(ValueError):
    pass


@dataclass
class CompareSettings:
    steps: int = 200
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)  # fresh training seeds of the chosen settings, scored on test
    selection_seed: int = 0  # the sweep's training seed; never one of `seeds`
    learning_rates: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)  # empty: each spec's own
    temperatures: tuple[float, ...] = (0.3, 1.0)  # sampling, for methods that sample; empty: the spec's own
    betas: tuple[float, ...] = (0.1, 0.5, 0.9)  # for generalized-JSD methods; empty: the spec's own
    extend_edges: bool = False  # a chosen rate at a grid edge: one more step past it, once
    search: str = "staged"  # "staged": rates first, then T x beta at the chosen rate; "grid": every combination
    samples_per_prompt: int = 4  # sampled completions per row and eval seed
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    decode_temperatures: tuple[float, ...] = (0.3, 0.5, 0.7, 1.0)  # the student's best-T baseline grid
    eval_every: int = 40  # learning-curve points (on the eval split, the run's own evaluation)
    curve_examples: int = 100
    selection_examples: int = 0  # eval-split rows scored for selection; 0 = all
    test_examples: int = 0  # 0 = the whole test split
    teacher: str = "toy:teacher"  # the reference of the divergence columns and the teacher rows
    test_data: str = "test"
    workers: int = 0  # processes running at once; 0 = one per CPU core
    allow_unequal_budgets: bool = False
    confidence: float = 0.95


@dataclass(frozen=True)
class Setting:
    """One point of a method's grid (None: the dimension does not apply to the method)."""

    learning_rate: float
    temperature: float | None = None
    beta: float | None = None

    @property
    def label(self) -> str:
        parts = [f"lr {self.learning_rate:g}"]
        if self.temperature is not None:
            parts.append(f"T {self.temperature:g}")
        if self.beta is not None:
            parts.append(f"β {self.beta:g}")
        return ", ".join(parts)

    @property
    def folder(self) -> str:
        name = f"lr{self.learning_rate:g}"
        name += f"_T{self.temperature:g}" if self.temperature is not None else ""
        return name + (f"_b{self.beta:g}" if self.beta is not None else "")

    def apply(self, spec: DistillSpec, seed: int) -> DistillSpec:
        overrides: dict[str, Any] = {"learning_rate": self.learning_rate, "seed": seed}
        if self.temperature is not None:
            overrides["temperature"] = self.temperature
        if self.beta is not None:
            overrides["beta"] = self.beta
        return spec.with_overrides(overrides)


# --- specs, budgets and the grid ---------------------------------------------------------------------
def load_specs(spec_files: list[Path], settings: CompareSettings) -> list[tuple[str, Path, DistillSpec]]:
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
            raise CompareError(f"{path}: eval_data is empty; the comparison chooses settings on the eval split")
        specs.append((path.stem, path, spec))
    for name in ("eval_metric", "eval_temperature", "eval_data", "student"):
        values = {getattr(spec, name) for _, _, spec in specs}
        if len(values) > 1:
            odd = _odd_ones([(p, getattr(s, name)) for _, p, s in specs])
            raise CompareError(
                f"{odd}: every spec must have the same {name} to be compared, got {sorted(map(str, values))}"
            )
    return specs


def rows_per_step(spec: DistillSpec) -> int:
    return spec.batch_size * spec.grad_accum


def check_budgets(specs: list[tuple[str, Path, DistillSpec]], *, allow_unequal: bool) -> bool:
    """True when every spec trains on the same rows per optimizer step (steps are set for all by --steps);
    a CompareError naming the files that differ from the others, unless `allow_unequal`."""
    rows = [(path, rows_per_step(spec)) for _, path, spec in specs]
    if len({r for _, r in rows}) == 1:
        return True
    if allow_unequal:
        return False
    common = Counter(r for _, r in rows).most_common(1)[0][0]
    odd = [(p, s) for (p, r), (_, _, s) in zip(rows, specs, strict=True) if r != common]
    described = "; ".join(f"{p}: {rows_per_step(s)} rows per optimizer step (batch_size {s.batch_size} × grad_accum "
                          f"{s.grad_accum})" for p, s in odd)  # fmt: skip
    raise CompareError(
        f"{described}; the other specs train on {common}. Every method must see the same rows per step "
        "(or pass --allow-unequal-budgets, and the page says so)"
    )


def _odd_ones(values: list[tuple[Path, Any]]) -> str:
    common = Counter(v for _, v in values).most_common(1)[0][0]
    return ", ".join(str(p) for p, v in values if v != common)


def samples(spec: DistillSpec) -> bool:
    """Whether the method generates its training completions (on-policy or seq-KD)."""
    return spec.lmbda > 0 or spec.seq_kd


def sweeps_temperature(spec: DistillSpec) -> bool:
    # MiniLLM's estimator needs samples from the student's own distribution at kd_temperature
    return samples(spec) and spec.objective != "minillm"


def uses_beta(spec: DistillSpec) -> bool:
    """A generalized JSD (gkd objective, 0 < beta < 1): beta is a free parameter. At 0 or 1 it names the
    method (forward / reverse KL); sft ignores it, and minillm fixes it to 1 (train.py)."""
    return spec.objective == "gkd" and 0.0 < spec.beta < 1.0


def grid(spec: DistillSpec, settings: CompareSettings, learning_rates: Sequence[float] | None = None) -> list[Setting]:
    rates = tuple(learning_rates or settings.learning_rates or (spec.learning_rate,))
    temperatures = (settings.temperatures or (spec.temperature,)) if sweeps_temperature(spec) else (None,)
    betas = (settings.betas or (spec.beta,)) if uses_beta(spec) else (None,)
    return [Setting(lr, t, b) for lr in rates for t in temperatures for b in betas]


def first_stage(spec: DistillSpec, settings: CompareSettings, learning_rates: Sequence[float] | None = None
                ) -> list[Setting]:  # fmt: skip
    """The settings trained before any is chosen: the whole grid, or with the staged search every rate at the
    spec's own temperature and beta (the second stage then sweeps those at the chosen rate)."""
    if settings.search == "grid":
        return grid(spec, settings, learning_rates)
    rates = tuple(learning_rates or settings.learning_rates or (spec.learning_rate,))
    temperature = spec.temperature if sweeps_temperature(spec) else None
    return [Setting(lr, temperature, spec.beta if uses_beta(spec) else None) for lr in rates]


def second_stage(spec: DistillSpec, settings: CompareSettings, rate: float, done: Sequence[Setting]) -> list[Setting]:
    """The staged search's second stage: every temperature x beta of the grid at the chosen rate, less what ran."""
    if settings.search == "grid":
        return []
    return [s for s in grid(spec, settings, [rate]) if s not in done]


def edge_of(rates: Sequence[float], chosen: float) -> str | None:
    """'lowest' / 'highest' when `chosen` is at that end of a grid of two or more rates."""
    ordered = sorted(set(rates))
    if len(ordered) < 2:
        return None
    return "lowest" if chosen == ordered[0] else "highest" if chosen == ordered[-1] else None


def extended_rate(rates: Sequence[float], edge: str) -> float | None:
    """One step past `edge`, at the ratio of the two rates at that end (None past 1, the spec's bound)."""
    ordered = sorted(set(rates))
    if edge == "highest":
        rate = ordered[-1] * ordered[-1] / ordered[-2]
        return rate if rate <= 1.0 else None
    return ordered[0] * ordered[0] / ordered[1]


# --- jobs and the runner -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalRequest:
    """One call of the evaluator (`model_eval.evaluate_model`) on a model."""

    name: str  # its key in the record: 'selection', 'test', 'test T 0.3', ...
    data: str
    temperature: float
    samples_per_prompt: int
    seeds: tuple[int, ...]
    limit: int
    teacher: str
    metric: str
    max_new_tokens: int

    def key(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class Job:
    """Train `spec` into `run_dir` (or, with spec None, take `model` as it is), then run `evals` on it."""

    label: str
    run_dir: Path
    spec: DistillSpec | None
    model: str = ""
    evals: tuple[EvalRequest, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # the caller's, unused here


class Runner(Protocol):
    """Runs jobs and returns each one's record, in order: the local pool here; a sweep submitted to a
    running service can implement the same call."""

    def run_jobs(self, jobs: Sequence[Job]) -> list[dict[str, Any]]: ...


class _RunRecorder(NullReporter):
    """The eval curve (with wall time and the compute so far) and the compute counters of one run."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.curve: list[tuple[int, float, float, int, int]] = []  # step, s, accuracy, teacher, generated tokens
        self.generated_tokens = 0
        self.teacher_tokens = 0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.generated_tokens += int(metrics.get(COUNT_GENERATED_TOKENS, 0))
        self.teacher_tokens += int(metrics.get(COUNT_TEACHER_TOKENS, 0))
        if EVAL_EXACT_MATCH in metrics:
            self.curve.append((step, round(time.perf_counter() - self.start, 2), metrics[EVAL_EXACT_MATCH],
                               self.teacher_tokens, self.generated_tokens))  # fmt: skip


def run_job(job: Job, reuse: bool = False) -> dict[str, Any]:
    """Train (unless reused or spec is None), then every evaluation not already in the record."""
    import torch

    torch.set_num_threads(1)  # the same numbers on every machine, whatever its cores or load
    record_path = job.run_dir / RUN_RECORD
    wanted = {"spec": job.spec.model_dump() if job.spec else None, "model": job.model}
    record = _reusable(job, wanted) if reuse else None
    if record is None and job.spec is not None:
        from core_distill.reporting import FanoutReporter, JsonlReporter
        from core_distill.train import run

        if job.run_dir.exists():
            shutil.rmtree(job.run_dir)  # a fresh run: the comparison never resumes stale checkpoints
        recorder = _RunRecorder()
        result = run(job.spec, output_dir=job.run_dir, reporter=FanoutReporter(JsonlReporter(job.run_dir), recorder),
                     resume=False)  # fmt: skip
        record = {**wanted, "curve": recorder.curve, "seconds": round(time.perf_counter() - recorder.start, 2),
                  "generated_tokens": recorder.generated_tokens, "teacher_tokens": recorder.teacher_tokens,
                  "model_dir": str(result.model_dir), "evals": {}}  # fmt: skip
    elif record is None:
        record = {**wanted, "curve": [], "seconds": 0.0, "generated_tokens": 0, "teacher_tokens": 0,
                  "model_dir": job.model, "evals": {}}  # fmt: skip
    for request in job.evals:
        done = record["evals"].get(request.name)
        if done is None or done["request"] != request.key():
            record["evals"][request.name] = {
                "request": request.key(),
                "report": _evaluate(record["model_dir"], request),
            }
    job.run_dir.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record))
    return record


def _evaluate(model: str, request: EvalRequest) -> dict[str, Any]:
    from core_distill.model_eval import evaluate_model

    report = evaluate_model(model, request.data, teacher=request.teacher or None, limit=request.limit,
                            metric=request.metric, max_new_tokens=request.max_new_tokens, n_samples=0,
                            temperature=request.temperature, samples_per_prompt=request.samples_per_prompt,
                            seeds=list(request.seeds))  # fmt: skip
    return {k: v for k, v in report.to_json().items() if k != "samples"}


def _reusable(job: Job, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """An earlier comparison's record of exactly this training (or model), if it is there."""
    path = job.run_dir / RUN_RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    same = all(record.get(k) == v for k, v in wanted.items()) and "evals" in record
    return record if same else None


class LocalPool:
    """The Runner of this machine: `workers` processes (this process when workers == 1), reporting each job."""

    def __init__(self, workers: int, echo: Callable[[str], None], reuse: bool) -> None:
        self.workers, self.echo, self.reuse = workers, echo, reuse
        self.executor = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
        )

    def run_jobs(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        records: list[dict[str, Any] | None] = [None] * len(jobs)
        if self.executor is None:
            for i, job in enumerate(jobs):
                records[i] = run_job(job, self.reuse)
                self.echo(f"  [{i + 1}/{len(jobs)}] {describe(job, records[i])}")
        else:
            futures = {self.executor.submit(run_job, job, self.reuse): i for i, job in enumerate(jobs)}
            for done, future in enumerate(as_completed(futures), 1):
                i = futures[future]
                records[i] = future.result()
                self.echo(f"  [{done}/{len(jobs)}] {describe(jobs[i], records[i])}")
        return records  # type: ignore[return-value]

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(job: Job, record: dict[str, Any]) -> str:
    parts = [f"{name} {100 * (e['report']['accuracy'] or 0):.1f} %" for name, e in record["evals"].items()
             if name in {r.name for r in job.evals}]  # fmt: skip
    took = f", trained {record['seconds']:.0f} s" if job.spec is not None else ""
    return f"{job.label}: " + ", ".join(parts) + took


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
    """Sweep and select on eval, train the chosen settings with fresh seeds, score them and the baselines on
    test; write results.json, the page and the plot. Returns a compare_report.CompareResult.

    With `reuse`, a run whose folder holds the record of the same spec (or model) from an earlier
    comparison is not trained again, and its evaluations with the same request are kept.
    """
    from core_distill import compare_report as report

    start, load_before = time.time(), os.getloadavg()
    specs = load_specs(spec_files, settings)
    _check_settings(settings)
    equal_budgets = check_budgets(specs, allow_unequal=settings.allow_unequal_budgets)
    for _name, path, spec in specs:
        try:
            spec.preflight()
            for setting in grid(spec, settings):
                setting.apply(spec, settings.selection_seed)
        except SpecError as exc:
            raise CompareError(f"{path}: {exc}") from None
    first = specs[0][2]
    grading = first.eval_temperature
    requests = _Requests(settings, first)
    workers = settings.workers or os.cpu_count() or 1
    pool = None if runner is not None else LocalPool(workers, echo, reuse)
    runner = runner or pool
    assert runner is not None
    try:
        # 1. the sweep on the eval split (selection seed) and the student's decoding temperatures
        echo(f"eval split: the student at T {', '.join(f'{t:g}' for t in settings.decode_temperatures)}, and "
             f"every setting of {len(specs)} methods trained with seed {settings.selection_seed}")  # fmt: skip
        student_jobs = [Job(f"student T {t:g}", output_dir / "baselines" / "student" / f"eval_T{t:g}", None,
                            first.student, (requests.selection(t),)) for t in settings.decode_temperatures]  # fmt: skip
        sweep_jobs = [_train_job(name, spec, setting, settings.selection_seed, output_dir, (requests.selection(grading),))
                      for name, _, spec in specs for setting in first_stage(spec, settings)]  # fmt: skip
        records = runner.run_jobs(student_jobs + sweep_jobs)
        student_eval = {t: r["evals"]["selection"]["report"]
                        for t, r in zip(settings.decode_temperatures, records, strict=False)}  # fmt: skip
        sweeps: dict[str, list[tuple[Setting, dict[str, Any]]]] = {name: [] for name, _, _ in specs}
        for job, record in zip(sweep_jobs, records[len(student_jobs) :], strict=True):
            sweeps[job.meta["method"]].append((job.meta["setting"], record))
        student_choice = report.choose_temperature(student_eval, settings.confidence, grading)
        best_t = student_choice.temperature
        echo(f"  student: best T on the eval split {best_t:g}")

        # 2. edges: a chosen rate at an end of the grid, one more step past it (once)
        extended: dict[str, float] = {}
        if settings.extend_edges:
            extra_jobs = []
            for name, _, spec in specs:
                rates = [s.learning_rate for s, _ in sweeps[name]]
                chosen = report.select(sweeps[name], grading, settings.confidence)[0]
                edge = edge_of(rates, chosen.learning_rate)
                rate = extended_rate(rates, edge) if edge else None
                if rate is not None:
                    extended[name] = rate
                    extra_jobs += [_train_job(name, spec, s, settings.selection_seed, output_dir,
                                              (requests.selection(grading),))
                                   for s in first_stage(spec, settings, [rate])]  # fmt: skip
            if extra_jobs:
                echo(f"extending {len(extended)} grids past their edge: "
                     + ", ".join(f"{n} lr {r:g}" for n, r in extended.items()))  # fmt: skip
                for job, record in zip(extra_jobs, runner.run_jobs(extra_jobs), strict=True):
                    sweeps[job.meta["method"]].append((job.meta["setting"], record))

        # 3. the staged search's second stage: temperature and beta at each method's chosen rate
        stage_jobs = []
        for name, _, spec in specs:
            rate = report.select(sweeps[name], grading, settings.confidence)[0].learning_rate
            stage_jobs += [_train_job(name, spec, s, settings.selection_seed, output_dir, (requests.selection(grading),))
                           for s in second_stage(spec, settings, rate, [s for s, _ in sweeps[name]])]  # fmt: skip
        if stage_jobs:
            echo(f"second stage: {len(stage_jobs)} settings of temperature and beta at each method's chosen rate")
            for job, record in zip(stage_jobs, runner.run_jobs(stage_jobs), strict=True):
                sweeps[job.meta["method"]].append((job.meta["setting"], record))

        # 4. the chosen settings with fresh seeds, and the baselines, on the test split
        chosen = {name: report.select(sweeps[name], grading, settings.confidence) for name, _, _ in specs}
        for name, (setting, selection) in chosen.items():
            how = "distinguishable from" if selection.distinguishable else "not distinguishable from"
            echo(f"  {name}: chose {setting.label} ({how} the runner-up)")
        temperatures = report.baseline_temperatures(grading, best_t)
        baseline_jobs = [Job(f"{who} test T {t:g}", output_dir / "baselines" / who / f"test_T{t:g}", None, model,
                             (requests.test(t),), {"who": who, "temperature": t})
                         for who, model in (("student", first.student), ("teacher", settings.teacher))
                         for t in temperatures]  # fmt: skip
        seed_jobs = [_train_job(name, spec, chosen[name][0], seed, output_dir, (requests.test(grading),))
                     for name, _, spec in specs for seed in settings.seeds]  # fmt: skip
        echo(f"test split: baselines at {', '.join('greedy' if t == 0 else f'T {t:g}' for t in temperatures)}; "
             f"the chosen settings with fresh seeds {', '.join(map(str, settings.seeds))}")  # fmt: skip
        records = runner.run_jobs(baseline_jobs + seed_jobs)
    finally:
        if pool is not None:
            pool.close()

    baselines = {(j.meta["who"], j.meta["temperature"]): r["evals"]["test"]["report"]
                 for j, r in zip(baseline_jobs, records, strict=False)}  # fmt: skip
    runs: dict[str, list[tuple[int, dict[str, Any]]]] = {name: [] for name, _, _ in specs}
    for job, record in zip(seed_jobs, records[len(baseline_jobs) :], strict=True):
        runs[job.meta["method"]].append((job.meta["seed"], record))
    methods = [
        report.MethodResult(
            name=name, spec_file=str(path), rows_per_step=rows_per_step(spec), grid=[s for s, _ in sweeps[name]],
            extended_rate=extended.get(name), sweep=sweeps[name], chosen=chosen[name][0], selection=chosen[name][1],
            runs=runs[name],
        )
        for name, path, spec in specs
    ]  # fmt: skip
    result = report.build_result(settings, methods, baselines, student_choice, grading=grading, metric=first.eval_metric,
                                 student=first.student, train_data=first.train_data, equal_budgets=equal_budgets,
                                 wall_seconds=time.time() - start)  # fmt: skip
    echo("")
    echo(result.table)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(report.result_json(result)))
    if plot_path is not None:
        report.plot_curves(result, plot_path)
    if doc_path is not None:
        doc_path.parent.mkdir(parents=True, exist_ok=True)
        previous = doc_path.read_text() if doc_path.exists() else ""
        page = report.results_page(result, command=command, load=(load_before, os.getloadavg()), plot_path=plot_path,
                                   doc_path=doc_path, previous=previous, workers=workers)  # fmt: skip
        doc_path.write_text(page)
        echo(
            f"\nwrote {doc_path}"
            + (f" and {plot_path}" if plot_path else "")
            + f" in {result.wall_seconds / 60:.1f} min"
        )
    return result


def _check_settings(s: CompareSettings) -> None:
    if s.steps < 1 or not s.seeds:
        raise CompareError("--steps must be >= 1 and --seeds must name at least one seed")
    if s.selection_seed in s.seeds:
        raise CompareError(f"--selection-seed {s.selection_seed} is one of the test seeds {list(s.seeds)}; "
                           "the chosen setting is scored with fresh seeds, not the run it was chosen on")  # fmt: skip
    if len(set(s.seeds)) != len(s.seeds):
        raise CompareError(f"--seeds must differ, got {list(s.seeds)}")
    if s.search not in ("staged", "grid"):
        raise CompareError(f"--search must be 'staged' or 'grid', got {s.search!r}")
    if not s.teacher:
        raise CompareError("--teacher is empty; the divergence columns and the teacher rows need a teacher")
    if any(x <= 0 for x in (*s.learning_rates, *s.temperatures)):
        raise CompareError("--learning-rates and --temperatures must be positive")
    if any(not 0 <= b <= 1 for b in s.betas):
        raise CompareError("--betas must be between 0 and 1")
    if not s.decode_temperatures or any(t <= 0 for t in s.decode_temperatures):
        raise CompareError("--decode-temperatures must name at least one temperature, each above 0")
    if s.samples_per_prompt < 1 or not s.eval_seeds or len(set(s.eval_seeds)) != len(s.eval_seeds):
        raise CompareError("--samples-per-prompt must be >= 1 and --eval-seeds distinct seeds, at least one")


class _Requests:
    """The evaluator calls of this comparison: selection on the eval split, scores on the test split."""

    def __init__(self, s: CompareSettings, spec: DistillSpec) -> None:
        self.s, self.spec = s, spec

    def _request(self, name: str, data: str, temperature: float, limit: int) -> EvalRequest:
        return EvalRequest(name, data, temperature, self.s.samples_per_prompt, tuple(self.s.eval_seeds), limit,
                           self.s.teacher, self.spec.eval_metric, self.spec.max_new_tokens)  # fmt: skip

    def selection(self, temperature: float) -> EvalRequest:
        return self._request("selection", self.spec.eval_data, temperature, self.s.selection_examples)

    def test(self, temperature: float) -> EvalRequest:
        return self._request("test", self.s.test_data, temperature, self.s.test_examples)


def _train_job(method: str, spec: DistillSpec, setting: Setting, seed: int, output_dir: Path,
               evals: tuple[EvalRequest, ...]) -> Job:  # fmt: skip
    return Job(f"{method} {setting.label} seed {seed}", output_dir / method / setting.folder / f"seed{seed}",
               setting.apply(spec, seed), "", evals, {"method": method, "setting": setting, "seed": seed})  # fmt: skip
