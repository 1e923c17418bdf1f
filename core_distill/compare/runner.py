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
  (core_distill/compare/report.py).

Jobs go to a `Runner` (`run_jobs(jobs) -> records`); `LocalPool` runs them in worker processes, one
torch thread each, so a run computes the same numbers whatever the machine's cores or load.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core_distill.compare import report
from core_distill.compare.settings import (
    CompareError,
    CompareSettings,
    Setting,
    check_budgets,
    check_settings,
    edge_of,
    extended_rate,
    first_stage,
    grid,
    load_specs,
    rows_per_step,
    second_stage,
)
from core_distill.metric_keys import COUNT_GENERATED_TOKENS, COUNT_TEACHER_TOKENS, EVAL_EXACT_MATCH
from core_distill.reporting import NullReporter
from core_distill.spec import DistillSpec, SpecError

RUN_RECORD = "compare_run.json"


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
) -> report.CompareResult:
    """Sweep and select on eval, train the chosen settings with fresh seeds, score them and the baselines on
    test; write results.json, the page and the plot. Returns a report.CompareResult.

    With `reuse`, a run whose folder holds the record of the same spec (or model) from an earlier
    comparison is not trained again, and its evaluations with the same request are kept.
    """
    start, load_before = time.time(), os.getloadavg()
    specs = load_specs(spec_files, settings)
    check_settings(settings)
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
