"""Evaluation: divergences to the teacher on reference completions; task accuracy of greedy
completions and of completions sampled at a temperature (n per row, over several seeds), kept per
prompt with the distinct correct completions and a task's diversity measure; and a few completions
with per-token divergences (the dashboard's heat map). Runs, sweeps and `distill eval` all score here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core_distill import metric_keys as mk
from core_distill.data.batches import Example, make_batch
from core_distill.generation.sampling import sample_completions
from core_distill.losses import STAT_KEYS, Head, fused_distill_loss
from core_distill.models import completion_hidden, head_of
from core_distill.teachers.base import Teacher

# (prediction, reference completion, prompt text) -> correct? A task's own rule check needs the prompt.
AnswerMatcher = Callable[[str, str, str], bool]


def normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str, prompt: str = "") -> bool:
    """The whole completion, whitespace-normalised."""
    return normalize(prediction) == normalize(reference)


def final_answer(text: str) -> str:
    """The final answer of a worked solution: after the last '####', else after the last '='
    of the last non-empty line, else that line."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if "####" in text:
        return normalize(text.rsplit("####", 1)[1])
    last = lines[-1]
    return normalize(last.rsplit("=", 1)[1] if "=" in last else last)


def final_answer_match(prediction: str, reference: str, prompt: str = "") -> bool:
    return final_answer(prediction) == final_answer(reference) != ""


def countdown_valid(prediction: str, reference: str, prompt: str = "") -> bool:
    """The built-in countdown task's rules, checked on whatever walk the model wrote (any valid one counts)."""
    from core_distill.toy.task import is_valid_walk, parse_prompt

    task = parse_prompt(prompt)
    return task is not None and is_valid_walk(prediction, *task)


MATCHERS: dict[str, AnswerMatcher] = {
    "exact_match": exact_match,
    "final_answer": final_answer_match,
    "countdown": countdown_valid,
}


# --- diversity: what a task can say about its correct completions beside their share ---------------
@dataclass(frozen=True)
class DiversityMeasure:
    """A task's measure of one correct completion, reported beside validity: sharpening a model's
    distribution raises validity on a many-answer task, and this shows what it did to the answers."""

    name: str  # what reports call it
    key: str  # its key in a run's evaluation metrics (metric_keys)
    about: str  # one line for a report
    measure: Callable[[str, str], float | None]  # (completion, prompt text) -> value; None where it has none


def countdown_log_likelihood(completion: str, prompt: str) -> float | None:
    from core_distill.toy.task import parse_prompt, walk_log_likelihood

    task = parse_prompt(prompt)
    return None if task is None else walk_log_likelihood(completion, *task)


# keyed by eval metric name (the matcher's): a task without an entry reports distinct valid completions only
DIVERSITY: dict[str, DiversityMeasure] = {
    "countdown": DiversityMeasure(
        "walk_log_likelihood", mk.EVAL_TRUE_LOG_LIKELIHOOD,
        "mean log P(walk) of the correct completions under the task's generating process (uniform steps), "
        "nats; the references are draws of that process",
        countdown_log_likelihood,
    ),
}  # fmt: skip


def diversity_measure(metric: str) -> DiversityMeasure | None:
    return DIVERSITY.get(metric)


@dataclass
class EvalContext:
    student: nn.Module
    teacher: Teacher | None
    tokenizer: Any
    eos_ids: set[int]
    beta: float
    temperature: float  # loss temperature
    top_k: int
    max_new_tokens: int
    batch_size: int
    matcher: AnswerMatcher = exact_match
    privileged_teacher: bool = False  # OPSD: the teacher sees the row's teacher_prompt, as in training
    decode_temperature: float = 0.0  # runs' evaluation: 0 = greedy only; > 0 = sampled (seeded) and greedy
    diversity: DiversityMeasure | None = None

    def prompt_text(self, example: Example) -> str:
        return self.tokenizer.decode(example.prompt_ids, skip_special_tokens=True)

    def teacher_prompt(self, example: Example) -> list[int]:
        return (example.teacher_prompt_ids or example.prompt_ids) if self.privileged_teacher else example.prompt_ids


# --- results --------------------------------------------------------------------------------------
@dataclass
class DecodingScore:
    """One decoding (greedy, or sampled at a temperature) over every graded row."""

    temperature: float  # 0 = greedy
    samples_per_prompt: int  # completions per row and seed (greedy: 1)
    seeds: list[int]  # the sampling draws (greedy: none)
    accuracy: float | None  # share of correct completions over rows x samples x seeds (None: nothing graded)
    stderr: float | None  # prompt-clustered standard error of accuracy (None under 2 prompts)
    completion_length: float  # mean tokens per completion, every row
    distinct_valid: float | None  # distinct correct completions per prompt, mean over prompts
    diversity: float | None  # the task's measure (DiversityMeasure), mean over correct completions


@dataclass
class PromptResult:
    """Everything graded for one prompt text (rows that share it are one prompt)."""

    prompt: str
    rows: int  # data rows with this prompt
    scores: list[int]  # 0/1 per sampled completion: row by row, within a row seed by seed, n per seed
    greedy: float  # share of the rows whose greedy completion is correct (one completion per prompt)
    distinct_valid: int  # distinct correct completions (whitespace-normalised) among the sampled ones, else the greedy
    diversity: float | None  # the task's measure, mean over those correct completions
    reference_diversity: float | None  # ... over the rows' reference completions


@dataclass
class Evaluation:
    metrics: dict[str, float]  # eval/... (what a run logs)
    samples: list[dict[str, Any]]  # logged completions with per-token divergences
    greedy: DecodingScore
    sampled: DecodingScore | None  # None at temperature 0
    prompts: list[PromptResult]
    reference_diversity: float | None  # the task's measure over the graded rows' references


def evaluate(
    ctx: EvalContext, examples: list[Example], n_samples: int = 4, seed: int = 0, *, progress: bool = False,
    desc: str = "eval",
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """A run's evaluation: metrics (`eval/...`) and up to `n_samples` completions with per-token divergences.

    One completion per row at `ctx.decode_temperature` from `seed` (eval/exact_match), and at a
    temperature above 0 also one greedy completion per prompt (eval/greedy_exact_match).
    """
    result = evaluate_detailed(ctx, examples, temperature=ctx.decode_temperature, seeds=(seed,), n_logged=n_samples,
                               progress=progress, desc=desc)  # fmt: skip
    return result.metrics, result.samples


def evaluate_detailed(
    ctx: EvalContext,
    examples: list[Example],
    *,
    temperature: float,
    samples_per_prompt: int = 1,
    seeds: Sequence[int] = (0,),
    n_logged: int = 0,
    progress: bool = False,
    desc: str = "eval",
) -> Evaluation:
    """Greedy completions (one per distinct prompt) and, at `temperature` > 0, `samples_per_prompt`
    sampled completions per row for each of `seeds`, graded by `ctx.matcher` and kept per prompt.

    Each seed's completions come from one generation call with every row repeated `samples_per_prompt`
    times, on a forked RNG so that training's random stream is untouched: two models evaluated with
    one seed share their random numbers. The headline metrics (eval/exact_match, eval/completion_length,
    eval/distinct_valid, the diversity key) are of the sampled decoding at `temperature` > 0, else of
    the greedy one; eval/greedy_exact_match is logged beside them only when they are sampled.
    `progress`: a bar over the rows scored and the completions generated (it does not change the numbers).
    """
    if temperature < 0 or samples_per_prompt < 1 or not seeds:
        raise ValueError(f"temperature must be >= 0, samples_per_prompt >= 1 and seeds non-empty; got "
                         f"{temperature}, {samples_per_prompt}, {list(seeds)}")  # fmt: skip
    metrics: dict[str, float] = {}
    with_reference = [e for e in examples if e.completion_ids] if ctx.teacher is not None else []
    draws = seeds if temperature > 0 else []
    bar = _bar(progress, desc, len(with_reference) + len({tuple(e.prompt_ids) for e in examples})
               + len(examples) * samples_per_prompt * len(draws))  # fmt: skip
    if with_reference:
        stats, _ = _score(ctx, [e.prompt_ids for e in with_reference], [e.completion_ids for e in with_reference],
                          [ctx.teacher_prompt(e) for e in with_reference], cacheable=True, tick=bar.update)  # fmt: skip
        metrics.update({mk.eval_key(k): v for k, v in stats.items()})
    device = next(ctx.student.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        greedy_ids = _greedy(ctx, examples, bar.update)  # [row] -> completion ids
        sampled_ids = [_sampled(ctx, examples, temperature, samples_per_prompt, s, bar.update) for s in draws]
    bar.close()
    # [row][seed * n + k] -> completion ids
    per_row = [[ids for draw in sampled_ids for ids in draw[i]] for i in range(len(examples))] if sampled_ids else None
    graded = Grading(ctx, examples, greedy_ids, per_row)
    greedy = graded.score(0.0, 1, [], sampled=False)
    sampled = graded.score(temperature, samples_per_prompt, list(seeds), sampled=True) if per_row else None
    headline = sampled or greedy
    if headline.accuracy is not None:
        metrics[mk.EVAL_EXACT_MATCH] = headline.accuracy
        metrics[mk.EVAL_DISTINCT_VALID] = headline.distinct_valid  # type: ignore[assignment]
    if sampled is not None and greedy.accuracy is not None:
        metrics[mk.EVAL_GREEDY_EXACT_MATCH] = greedy.accuracy
    if ctx.diversity is not None and headline.diversity is not None:
        metrics[ctx.diversity.key] = headline.diversity
    metrics[mk.EVAL_COMPLETION_LENGTH] = headline.completion_length
    shown = [row[0] for row in per_row] if per_row else greedy_ids  # the first seed's first sample of each row
    shown_texts = [graded.text(ids) for ids in shown[:n_logged]]
    samples = _samples(ctx, examples[:n_logged], shown[:n_logged], shown_texts) if n_logged else []
    return Evaluation(metrics, samples, greedy, sampled, graded.prompt_results(), graded.reference_diversity())


def _bar(enabled: bool, desc: str, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="row", leave=False, dynamic_ncols=True)


def _generate(ctx: EvalContext, prompts: list[list[int]], temperature: float,
              tick: Callable[[int], None] | None = None) -> list[list[int]]:  # fmt: skip
    return sample_completions(ctx.student, prompts, pad_id=ctx.tokenizer.pad_token_id, eos_ids=ctx.eos_ids,
                              max_new_tokens=ctx.max_new_tokens, greedy=temperature == 0, temperature=temperature or 1.0,
                              on_batch=tick)  # fmt: skip


def _greedy(ctx: EvalContext, examples: list[Example], tick: Callable[[int], None] | None = None) -> list[list[int]]:
    """One greedy completion per distinct prompt, given to every row that has it."""
    distinct = list(dict.fromkeys(tuple(e.prompt_ids) for e in examples))
    completions = dict(zip(distinct, _generate(ctx, [list(p) for p in distinct], 0.0, tick), strict=True))
    return [completions[tuple(e.prompt_ids)] for e in examples]


def _sampled(ctx: EvalContext, examples: list[Example], temperature: float, n: int, seed: int,
             tick: Callable[[int], None] | None = None) -> list[list[list[int]]]:  # fmt: skip
    """[row][k] -> the k-th of n completions sampled for the row, from `seed` (the caller forks the RNG)."""
    torch.manual_seed(seed)
    flat = _generate(ctx, [e.prompt_ids for e in examples for _ in range(n)], temperature, tick)
    return [flat[i * n : (i + 1) * n] for i in range(len(examples))]


class Grading:
    """The completions of every row graded once, grouped by prompt text (rows without a reference are
    not graded, but count in the completion length)."""

    def __init__(self, ctx: EvalContext, examples: list[Example], greedy: list[list[int]],
                 sampled: list[list[list[int]]] | None):  # fmt: skip
        self.ctx, self.examples = ctx, examples
        self.greedy_ids, self.sampled_ids = greedy, sampled
        self._texts: dict[tuple[int, ...], str] = {}
        self.groups: dict[str, list[int]] = {}  # prompt text -> graded row indices, in data order
        for i, e in enumerate(examples):
            if e.completion_text is not None:
                self.groups.setdefault(ctx.prompt_text(e), []).append(i)
        self.greedy = [self._grade(i, [greedy[i]]) for i in range(len(examples))]
        self.sampled = [self._grade(i, sampled[i]) for i in range(len(examples))] if sampled else None

    def text(self, ids: list[int]) -> str:
        key = tuple(ids)
        if key not in self._texts:
            self._texts[key] = self.ctx.tokenizer.decode(ids, skip_special_tokens=True)
        return self._texts[key]

    def _grade(self, row: int, completions: list[list[int]]) -> list[tuple[str, bool, float | None]]:
        """(text, correct, the diversity measure of a correct one) per completion; [] for an ungraded row."""
        e = self.examples[row]
        if e.completion_text is None:
            return []
        prompt, out = self.ctx.prompt_text(e), []
        for ids in completions:
            text = self.text(ids)
            correct = bool(self.ctx.matcher(text, e.completion_text, prompt))
            value = self.ctx.diversity.measure(text, prompt) if correct and self.ctx.diversity else None
            out.append((text, correct, value))
        return out

    def _graded(self, sampled: bool) -> list[list[tuple[str, bool, float | None]]]:
        return self.sampled if sampled and self.sampled is not None else self.greedy

    def score(self, temperature: float, n: int, seeds: list[int], *, sampled: bool) -> DecodingScore:
        graded = self._graded(sampled)
        ids = [c for row in self.sampled_ids for c in row] if sampled and self.sampled_ids else self.greedy_ids
        clusters = [[ok for i in rows for _, ok, _ in graded[i]] for rows in self.groups.values()]
        values = [v for rows in self.groups.values() for i in rows for _, _, v in graded[i] if v is not None]
        distinct = [len(self._distinct_valid(rows, graded)) for rows in self.groups.values()]
        return DecodingScore(
            temperature=temperature, samples_per_prompt=n, seeds=seeds,
            accuracy=_mean([ok for c in clusters for ok in c]), stderr=clustered_stderr(clusters),
            completion_length=sum(len(c) for c in ids) / max(len(ids), 1),
            distinct_valid=_mean(distinct), diversity=_mean(values),
        )  # fmt: skip

    def _distinct_valid(self, rows: list[int], graded) -> set[str]:
        return {normalize(text) for i in rows for text, ok, _ in graded[i] if ok}

    def prompt_results(self) -> list[PromptResult]:
        graded = self._graded(sampled=True)
        results = []
        for prompt, rows in self.groups.items():
            values = [v for i in rows for _, _, v in graded[i] if v is not None]
            results.append(PromptResult(
                prompt=prompt, rows=len(rows),
                scores=[int(ok) for i in rows for _, ok, _ in self.sampled[i]] if self.sampled else [],
                greedy=sum(self.greedy[i][0][1] for i in rows) / len(rows),
                distinct_valid=len(self._distinct_valid(rows, graded)), diversity=_mean(values),
                reference_diversity=_mean(self._reference_values(rows)),
            ))  # fmt: skip
        return results

    def _reference_values(self, rows: list[int]) -> list[float]:
        if self.ctx.diversity is None:
            return []
        values = [self.ctx.diversity.measure(self.examples[i].completion_text, self.ctx.prompt_text(self.examples[i]))
                  for i in rows]  # fmt: skip
        return [v for v in values if v is not None]

    def reference_diversity(self) -> float | None:
        return _mean([v for rows in self.groups.values() for v in self._reference_values(rows)])


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def clustered_stderr(clusters: Sequence[Sequence[float]]) -> float | None:
    """Standard error of the pooled mean of 0/1 (or any) scores grouped by prompt, clustered by prompt:
    sqrt(P / (P - 1) * sum_i (s_i - m k_i)^2) / K, with s_i the sum and k_i the count of prompt i's
    scores, K = sum k_i and m = sum s_i / K; with equal k_i it is the standard deviation of the prompt
    means over sqrt(P). None under 2 prompts with scores."""
    clusters = [c for c in clusters if len(c)]
    if len(clusters) < 2:
        return None
    total = sum(len(c) for c in clusters)
    mean = sum(sum(c) for c in clusters) / total
    spread = sum((sum(c) - mean * len(c)) ** 2 for c in clusters)
    return math.sqrt(len(clusters) / (len(clusters) - 1) * spread) / total


def _samples(ctx: EvalContext, examples: list[Example], predictions: list[list[int]], texts: list[str]) -> list[dict[str, Any]]:
    per_token: list[list[float]] = [[] for _ in predictions]
    nonempty = [i for i, p in enumerate(predictions) if p]
    if ctx.teacher is not None and nonempty:
        _, kd = _score(ctx, [examples[i].prompt_ids for i in nonempty], [predictions[i] for i in nonempty],
                       [ctx.teacher_prompt(examples[i]) for i in nonempty])  # fmt: skip
        for i, values in zip(nonempty, kd, strict=True):
            per_token[i] = values
    samples = []
    for e, ids, text, divs in zip(examples, predictions, texts, per_token, strict=True):
        samples.append({
            "prompt": ctx.prompt_text(e),
            "completion": text,
            "reference": e.completion_text,
            "correct": None if e.completion_text is None else bool(ctx.matcher(text, e.completion_text, ctx.prompt_text(e))),
            "tokens": [ctx.tokenizer.decode([t]) for t in ids],
            "token_div": [round(v, 5) for v in divs],
        })  # fmt: skip
    return samples


@torch.no_grad()
def _score(ctx: EvalContext, prompts, completions, teacher_prompts, cacheable: bool = False,
           tick: Callable[[int], None] | None = None) -> tuple[dict[str, float], list[list[float]]]:  # fmt: skip
    """Mean divergence stats over all completion tokens and the per-token divergence of each row."""
    sums = dict.fromkeys(("loss", *STAT_KEYS), 0.0)
    n_total, per_row = 0, []
    device = next(ctx.student.parameters()).device
    for start in range(0, len(prompts), ctx.batch_size):
        end = start + ctx.batch_size
        pad = ctx.tokenizer.pad_token_id
        batch = make_batch(prompts[start:end], completions[start:end], pad).to(device)
        teacher_batch = make_batch(teacher_prompts[start:end], completions[start:end], pad).to(device)
        head = head_of(ctx.student)
        terms = fused_distill_loss(
            completion_hidden(ctx.student, batch).detach(), Head(head.weight.detach(), head.bias, head.logit_scale, head.softcap),
            ctx.teacher.score(teacher_batch, cacheable=cacheable), batch.completion_ids[batch.completion_mask],
            beta=ctx.beta, temperature=ctx.temperature, top_k=ctx.top_k,
        )  # fmt: skip
        n = batch.n_tokens
        n_total += n
        sums["loss"] += terms.kd_per_token.sum().item()  # host sync, one per evaluation batch as the next two
        stat_sums = terms.stat_sums
        for key in STAT_KEYS:
            sums[key] += stat_sums[key]
        lengths = batch.completion_mask.sum(-1).tolist()
        per_row.extend(v.tolist() for v in terms.kd_per_token.split(lengths))
        if tick is not None:
            tick(len(lengths))
    stats = {_stat_name(k): v / max(n_total, 1) for k, v in sums.items()}
    return stats, per_row


def _stat_name(key: str) -> str:
    names = {"loss": mk.LOSS_KD, "fkl": mk.DIV_FKL, "rkl": mk.DIV_RKL, "jsd": mk.DIV_JSD, "coverage": mk.TOPK_COVERAGE}
    return names.get(key, key.replace("entropy_", "entropy/"))


def answer_matcher(name: str) -> AnswerMatcher:
    if name not in MATCHERS:
        raise ValueError(f"eval_metric must be one of {sorted(MATCHERS)}, got {name!r}")
    return MATCHERS[name]
