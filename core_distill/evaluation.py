"""Evaluation: divergences to the teacher on reference completions, task accuracy on greedy (or
sampled) completions, and a few completions with per-token divergences (the dashboard's heat map).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core_distill import metric_keys as mk
from core_distill.data import Example, make_batch
from core_distill.generation import sample_completions
from core_distill.losses import STAT_KEYS, Head, fused_distill_loss
from core_distill.models import completion_hidden, head_of
from core_distill.teachers import Teacher

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
    decode_temperature: float = 0.0  # 0 = greedy completions; > 0 = sampled (seeded per evaluation)

    def prompt_text(self, example: Example) -> str:
        return self.tokenizer.decode(example.prompt_ids, skip_special_tokens=True)

    def teacher_prompt(self, example: Example) -> list[int]:
        return (example.teacher_prompt_ids or example.prompt_ids) if self.privileged_teacher else example.prompt_ids


def evaluate(
    ctx: EvalContext, examples: list[Example], n_samples: int = 4, seed: int = 0
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics (`eval/...`) and up to `n_samples` sampled completions with per-token divergences.

    With `ctx.decode_temperature` > 0 the completions are sampled from `seed`, on a forked RNG so that
    training's random stream is untouched: two models evaluated with one seed share their random numbers.
    """
    metrics: dict[str, float] = {}
    with_reference = [e for e in examples if e.completion_ids]
    if ctx.teacher is not None and with_reference:
        stats, _ = _score(ctx, [e.prompt_ids for e in with_reference], [e.completion_ids for e in with_reference],
                          [ctx.teacher_prompt(e) for e in with_reference], cacheable=True)  # fmt: skip
        metrics.update({mk.eval_key(k): v for k, v in stats.items()})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        predictions = sample_completions(
            ctx.student, [e.prompt_ids for e in examples], pad_id=ctx.tokenizer.pad_token_id, eos_ids=ctx.eos_ids,
            max_new_tokens=ctx.max_new_tokens, greedy=ctx.decode_temperature == 0,
            temperature=ctx.decode_temperature or 1.0,
        )  # fmt: skip
    texts = [ctx.tokenizer.decode(p, skip_special_tokens=True) for p in predictions]
    graded = [(t, e) for t, e in zip(texts, examples, strict=True) if e.completion_text is not None]
    if graded:
        metrics[mk.EVAL_EXACT_MATCH] = sum(ctx.matcher(t, e.completion_text, ctx.prompt_text(e)) for t, e in graded) / len(graded)
    metrics[mk.EVAL_COMPLETION_LENGTH] = sum(len(p) for p in predictions) / len(predictions)
    samples = _samples(ctx, examples[:n_samples], predictions[:n_samples], texts[:n_samples]) if n_samples else []
    return metrics, samples


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
def _score(ctx: EvalContext, prompts, completions, teacher_prompts, cacheable: bool = False) -> tuple[dict[str, float], list[list[float]]]:
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
        sums["loss"] += terms.kd_per_token.sum().item()
        for key in STAT_KEYS:
            sums[key] += terms.stat_sums[key]
        lengths = batch.completion_mask.sum(-1).tolist()
        per_row.extend(v.tolist() for v in terms.kd_per_token.split(lengths))
    stats = {_stat_name(k): v / max(n_total, 1) for k, v in sums.items()}
    return stats, per_row


def _stat_name(key: str) -> str:
    names = {"loss": mk.LOSS_KD, "fkl": mk.DIV_FKL, "rkl": mk.DIV_RKL, "jsd": mk.DIV_JSD, "coverage": mk.TOPK_COVERAGE}
    return names.get(key, key.replace("entropy_", "entropy/"))


def answer_matcher(name: str) -> AnswerMatcher:
    if name not in MATCHERS:
        raise ValueError(f"eval_metric must be one of {sorted(MATCHERS)}, got {name!r}")
    return MATCHERS[name]

