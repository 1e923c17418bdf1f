"""`distill eval`: score a saved model on a data split.

Task accuracy of greedy completions (one per prompt) and, at a temperature above 0, of
`samples_per_prompt` completions per row sampled from each of `seeds`; per prompt the scores, the
distinct correct completions and the task's diversity measure; the mean per-token divergence to a
teacher on the split's reference completions; a few sample completions. A model is named like in a
spec (a path, `toy:NAME`, a hub id) or by a run folder, whose `final/` model is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from core_distill.checks.preflight import check_teacher_vocabulary
from core_distill.data.batches import encode_rows
from core_distill.data.sources import DataError, read_rows
from core_distill.data.vocab import id_count
from core_distill.evaluation import (
    DecodingScore,
    EvalContext,
    PromptResult,
    answer_matcher,
    diversity_measure,
    evaluate_detailed,
)
from core_distill.generation.stops import eos_token_ids
from core_distill.models import load_model, load_tokenizer
from core_distill.paths import (
    TOY_DATA_FILES,
    TOY_SCHEME,
    looks_like_local_path,
    missing_model_message,
    resolve_model_path,
)
from core_distill.teachers.factory import share_vocabulary
from core_distill.teachers.local import LocalTeacher


class EvalError(ValueError):
    """A model, teacher or data argument that cannot be evaluated; `field` names which."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass
class ModelReport:
    model: str  # as resolved (a run folder becomes its final/ model)
    data: str
    examples: int
    metric: str
    temperature: float  # the headline decoding: 0 = greedy, else sampled at this temperature
    accuracy: float  # at `temperature`: sampled.accuracy when > 0, else greedy.accuracy
    completion_length: float  # mean tokens per completion at `temperature`
    teacher: str | None = None
    divergence: dict[str, float] | None = None  # fkl, rkl, jsd per token on reference completions
    samples: list[dict[str, Any]] = field(default_factory=list)
    greedy: DecodingScore | None = None  # always set by evaluate_model
    sampled: DecodingScore | None = None  # None at temperature 0
    prompts: list[PromptResult] = field(default_factory=list)  # one per distinct prompt text, in data order
    diversity: str | None = None  # the name of the task's diversity measure (DecodingScore.diversity)
    diversity_about: str | None = None
    reference_diversity: float | None = None  # the measure over the data's reference completions

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelReport:
        decoded = {k: DecodingScore(**data[k]) if data.get(k) else None for k in ("greedy", "sampled")}
        return cls(**{**data, **decoded, "prompts": [PromptResult(**p) for p in data.get("prompts", [])]})


def resolve_model_name(name: str) -> str:
    """A run folder (holding final/) becomes its final model; anything else is returned as given.

    Raises EvalError when a local-looking name has no model directory.
    """
    path = Path(name).expanduser()
    if not name.startswith(TOY_SCHEME) and path.is_dir() and not (path / "config.json").exists():
        if (path / "final" / "config.json").exists():
            return str(path / "final")
        raise EvalError("MODEL", f"{name!r} is a folder without a model (no config.json, and no final/ run model)")
    if looks_like_local_path(name) and not resolve_model_path(name).is_dir():
        raise EvalError("MODEL", missing_model_message(name))
    return name


def resolve_data_name(name: str) -> str:
    """'test', 'eval', 'train' mean the toy task's splits unless a file of that name exists."""
    if name in TOY_DATA_FILES and not Path(name).exists():
        return TOY_SCHEME + name
    return name


def evaluate_model(
    model: str,
    data: str = "test",
    *,
    teacher: str | None = "toy:teacher",
    limit: int = 0,
    metric: str = "auto",
    max_new_tokens: int = 256,
    n_samples: int = 3,
    batch_size: int = 64,
    temperature: float | None = None,
    samples_per_prompt: int = 1,
    seeds: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ModelReport:
    """Evaluate `model` on the first `limit` rows of `data` (0 = all), against `teacher` (None/'' = no divergence).

    Greedy completions are always scored; at `temperature` > 0 (default: 1 with the countdown metric,
    else 0) also `samples_per_prompt` sampled completions per row for each of `seeds` (default
    `(seed,)`). `n_samples` is how many completions the report shows. With the defaults the headline
    `accuracy` is one draw per row from seed 0, as before per-prompt results existed.
    """
    model = resolve_model_name(model)
    data = resolve_data_name(data)
    if teacher:
        try:
            teacher = resolve_model_name(teacher)
        except EvalError as exc:
            raise EvalError("--teacher", str(exc).split(": ", 1)[1]) from None
    if metric == "auto":  # the built-in task has its own rule check; elsewhere the final answer is graded
        metric = "countdown" if data.startswith(TOY_SCHEME) and "/" not in data else "final_answer"
    if temperature is None:  # the built-in task grades samples at temperature 1 (many answers are valid)
        temperature = 1.0 if metric == "countdown" else 0.0
    if temperature < 0:
        raise EvalError("--temperature", f"must be >= 0 (0 = greedy only), got {temperature}")
    seeds = [seed] if seeds is None else list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise EvalError("--seeds", f"must name at least one seed, each once; got {seeds}")
    if samples_per_prompt < 1:
        raise EvalError("--samples-per-prompt", f"must be >= 1, got {samples_per_prompt}")
    try:
        matcher = answer_matcher(metric)
    except ValueError as exc:
        raise EvalError("--metric", str(exc)) from None
    if limit < 0:
        raise EvalError("--limit", f"must be >= 0 (0 = every row), got {limit}")

    tokenizer = load_tokenizer(model)
    try:
        rows = read_rows(data)
        rows = rows[:limit] if limit else rows
        examples = encode_rows(rows, tokenizer, max_prompt_length=512, max_completion_length=512, source=data)
    except DataError as exc:
        raise EvalError("--data", str(exc)) from None
    # The reference teacher sees the same prompt as the model (an OPSD 'teacher_prompt' column is for training)
    examples = [replace(e, teacher_prompt_ids=None) for e in examples]
    if all(e.completion_text is None for e in examples):
        raise EvalError("--data", f"{data!r} has no reference completions, so there is nothing to grade")

    student = load_model(model, dtype=torch.float32).eval()
    local_teacher = None
    if teacher:
        problem = check_teacher_vocabulary(model, teacher, trust_remote_code=False)
        if problem:
            raise EvalError("--teacher", problem)
        local_teacher = LocalTeacher(load_model(teacher, dtype=torch.float32).requires_grad_(False).eval())
        share_vocabulary(student, local_teacher, id_count(tokenizer))  # padded heads of two sizes: cut to the tokenizer
    diversity = diversity_measure(metric)
    ctx = EvalContext(
        student, local_teacher, tokenizer, eos_token_ids(student, tokenizer), beta=0.5, temperature=1.0, top_k=0,
        max_new_tokens=max_new_tokens, batch_size=batch_size, matcher=matcher, decode_temperature=temperature,
        diversity=diversity,
    )  # fmt: skip
    result = evaluate_detailed(ctx, examples, temperature=temperature, samples_per_prompt=samples_per_prompt,
                               seeds=seeds, n_logged=n_samples, progress=progress, desc="distill eval")  # fmt: skip
    divergence = None
    if local_teacher is not None:
        divergence = {name: result.metrics[f"eval/div/{name}"] for name in ("fkl", "rkl", "jsd")}
    for sample in result.samples:  # the per-token view belongs to the dashboard, not to a report
        sample.pop("tokens", None)
        sample.pop("token_div", None)
    headline = result.sampled or result.greedy
    return ModelReport(
        model=model, data=data, examples=len(examples), metric=metric, temperature=temperature,
        accuracy=headline.accuracy, completion_length=headline.completion_length,  # type: ignore[arg-type]
        teacher=teacher or None, divergence=divergence, samples=result.samples, greedy=result.greedy,
        sampled=result.sampled, prompts=result.prompts, diversity=diversity.name if diversity else None,
        diversity_about=diversity.about if diversity else None, reference_diversity=result.reference_diversity,
    )  # fmt: skip


def report_text(report: ModelReport) -> str:
    """The report as a readable block (what `distill eval` prints without --json)."""
    prompts = len(report.prompts)
    lines = [
        f"model      {report.model}",
        f"data       {report.data} ({report.examples} rows, {prompts} distinct prompts graded)",
        f"accuracy   {report.accuracy:.1%}  ({report.metric}, "
        + ("greedy)" if report.temperature == 0 else f"sampled at temperature {report.temperature:g})"),
    ]
    for label, score in (("greedy", report.greedy), ("sampled", report.sampled)):
        if score is not None:
            lines.append(f"  {label:<8} {_score_line(score, report)}")
    lines.append("  (± one standard error, clustered by prompt; distinct: distinct correct completions per prompt)")
    if report.diversity is not None:
        lines.append(f"diversity  {report.diversity}: {report.diversity_about}")
        parts = [f"{label} {_value(score.diversity)}" for label, score in (("greedy", report.greedy),
                 ("sampled", report.sampled)) if score is not None]  # fmt: skip
        lines.append(f"  {', '.join(parts)}; references {_value(report.reference_diversity)}")
    lines.append(f"length     {report.completion_length:.1f} tokens per completion")
    if report.divergence is not None:
        lines.append(f"teacher    {report.teacher}  (per token, on the reference completions)")
        lines.append(f"  forward KL(teacher || model)  {report.divergence['fkl']:.4f}")
        lines.append(f"  reverse KL(model || teacher)  {report.divergence['rkl']:.4f}")
        lines.append(f"  JSD (beta 0.5)                {report.divergence['jsd']:.4f}")
    for sample in report.samples:
        mark = {True: "right", False: "wrong", None: "-"}[sample["correct"]]
        lines.append(f"sample     [{mark}] {sample['prompt']!r} -> {sample['completion']!r}")
    return "\n".join(lines)


def _score_line(score: DecodingScore, report: ModelReport) -> str:
    stderr = "" if score.stderr is None else f" ± {100 * score.stderr:.1f}"
    if score.temperature == 0:
        how = "1 completion per prompt"
    else:
        per_row = score.samples_per_prompt * len(score.seeds)
        seeds = ",".join(str(s) for s in score.seeds)
        how = (f"T {score.temperature:g}, {score.samples_per_prompt} per row x seeds {seeds} = {per_row} per row, "
               f"{sum(len(p.scores) for p in report.prompts)} completions")  # fmt: skip
    return f"{100 * (score.accuracy or 0.0):5.1f}%{stderr}  ({how}); distinct {_value(score.distinct_valid, '.2f')}"


def _value(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)
