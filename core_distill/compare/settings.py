"""What `distill compare` compares: its settings, the specs and their budgets, and each method's grid.

The runner (core_distill/compare/runner.py) and the report (core_distill/compare/report.py) both read
these; neither is imported here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core_distill.spec import DistillSpec, SpecError


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


def check_settings(s: CompareSettings) -> None:
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
