"""Training and evaluation data: load rows, turn them into token ids, pack them into batches.

Accepted row formats (TRL's names):
    {"messages": [..., {"role": "assistant", "content": ...}]}   conversational, with completion
    {"messages": [..., {"role": "user", ...}]}                    conversational, prompt only
    {"prompt": str | messages, "completion": str | messages}     prompt/completion
    {"prompt": str | messages}                                    prompt only
plus an optional "teacher_prompt" (OPSD): a string that replaces the last user message (or the
text prompt) in the teacher's view, or a full list of messages.

Every completion ends with the student's end-of-turn token (chat_turns.end_of_turn_id), the one
generation stops at; what a template writes after it is not trained. A chat template that raises on a
row (Gemma-2 on a system message, Mistral on roles that do not alternate) is a DataError naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from jinja2 import TemplateError
from torch import Tensor

from core_distill.data.chat_turns import (
    end_completion,
    end_of_turn_id,
    fold_system_messages,
    has_system_message,
    split_turns,
    template_refusal,
)
from core_distill.data.sources import DataError  # rows come from files, folders, hub ids: sources.py
from core_distill.data.truncation import TruncationCounts, fit_completion, fit_prompt


@dataclass
class Example:
    prompt_ids: list[int]
    completion_ids: list[int] | None  # None for prompt-only rows
    teacher_prompt_ids: list[int] | None  # OPSD privileged prompt, None if the row has none
    completion_text: str | None  # reference answer for exact-match evaluation
    prompt_cut: bool = False  # the prompt (or teacher prompt) was over max_prompt_length and was shortened
    completion_cut: bool = False  # the dataset completion was over max_completion_length and was shortened


# --- rows -> token ids ------------------------------------------------------------------------------
def split_row(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(prompt, completion or None, teacher_prompt or None) in text or message form."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError("'messages' must be a non-empty list of {role, content}")
        if messages[-1].get("role") == "assistant":
            return messages[:-1], messages[-1:], row.get("teacher_prompt")
        return messages, None, row.get("teacher_prompt")
    if "prompt" in row:
        return row["prompt"], row.get("completion"), row.get("teacher_prompt")
    raise DataError(f"a row needs 'messages' or 'prompt', got columns {sorted(row)}")


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def encode_prompt(tokenizer, prompt: Any) -> list[int]:
    if isinstance(prompt, list):
        return _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def encode_completion(tokenizer, prompt: Any, completion: Any, prompt_ids: list[int], end_id: int) -> list[int]:
    """Completion ids as the model would produce them after `prompt_ids`, ending at the end of turn `end_id`."""
    if isinstance(prompt, list) and isinstance(completion, list):
        full = _chat_ids(tokenizer, prompt + completion, add_generation_prompt=False)
        if full[: len(prompt_ids)] == prompt_ids:  # templates that re-render the prompt differently fall through
            return end_completion(full[len(prompt_ids) :], end_id)
        completion = completion[-1]["content"]
    text = completion if isinstance(completion, str) else completion[-1]["content"]
    # a text completion ends where the template ends an assistant turn, not with the tokenizer's EOS
    return end_completion(list(tokenizer(text, add_special_tokens=False)["input_ids"]), end_id)


def teacher_view(prompt: Any, teacher_prompt: Any) -> Any:
    """The teacher's prompt for OPSD: the student's with its last user turn replaced."""
    if isinstance(teacher_prompt, list):
        return teacher_prompt
    if isinstance(prompt, list):
        messages = [dict(m) for m in prompt]
        last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        messages[last_user]["content"] = teacher_prompt
        return messages
    return teacher_prompt


def completion_text(completion: Any) -> str | None:
    if completion is None:
        return None
    return completion if isinstance(completion, str) else completion[-1]["content"]


def row_turns(row: dict[str, Any], *, system_message: str, assistant_turns: str) -> list[tuple[Any, Any, Any]]:
    """(prompt, completion or None, teacher's prompt or None) of each example a row gives, as the template sees them.

    assistant_turns="all": one per assistant turn of a conversation, each a reply to the conversation
    before it as the template renders that history at inference (Qwen3 drops the thinking of past
    turns), rather than one rendering of the whole conversation with the user turns masked out.
    """
    prompt, completion, teacher_prompt = split_row(row)
    turns = [(prompt, completion, teacher_prompt)]
    if assistant_turns == "all":
        turns = split_turns(prompt, completion, teacher_prompt)
    out = []
    for p, c, t in turns:
        t = None if t is None else teacher_view(p, t)  # before folding, so the teacher keeps the system text too
        if system_message == "fold":
            p, c, t = (fold_system_messages(x) if isinstance(x, list) else x for x in (p, c, t))
        out.append((p, c, t))
    return out


@dataclass(frozen=True)
class Limits:
    """The length limits of a spec, how rows over them are fitted, and the student's end-of-turn token."""

    prompt: int
    completion: int
    truncation: str  # "middle" | "refuse"
    end_id: int


def encode_turn(tokenizer, prompt: Any, completion: Any, teacher_prompt: Any, limits: Limits) -> Example:
    """One example: its prompt (and OPSD teacher prompt) and completion fitted into the limits."""
    encode = partial(encode_prompt, tokenizer)
    full_prompt = encode(prompt)
    prompt_ids = fit_prompt(prompt, full_prompt, limits.prompt, encode, limits.truncation)
    prompt_cut = len(prompt_ids) < len(full_prompt)
    completion_ids, completion_cut = None, False
    if completion is not None:
        full = encode_completion(tokenizer, prompt, completion, full_prompt, limits.end_id)
        completion_ids = fit_completion(full, limits.completion, limits.end_id, limits.truncation)
        completion_cut = len(completion_ids) < len(full)
    teacher_ids = None
    if teacher_prompt is not None:  # already the teacher's view (row_turns)
        full_teacher = encode(teacher_prompt)
        teacher_ids = fit_prompt(teacher_prompt, full_teacher, limits.prompt, encode, limits.truncation)
        prompt_cut = prompt_cut or len(teacher_ids) < len(full_teacher)
    return Example(prompt_ids, completion_ids, teacher_ids, completion_text(completion), prompt_cut, completion_cut)


def encode_rows(
    rows: list[dict[str, Any]], tokenizer, *, max_prompt_length: int, max_completion_length: int, source: str,
    system_message: str = "keep", assistant_turns: str = "last", truncation: str = "middle",
) -> list[Example]:  # fmt: skip
    """Token ids of every row; `system_message`, `assistant_turns` and `truncation` as the spec fields of those
    names (the length limits: core_distill/data/truncation.py)."""
    limits = Limits(max_prompt_length, max_completion_length, truncation, end_of_turn_id(tokenizer))
    examples = []
    for number, row in enumerate(rows, 1):
        try:
            for turn in row_turns(row, system_message=system_message, assistant_turns=assistant_turns):
                examples.append(encode_turn(tokenizer, *turn, limits))
        except TemplateError as exc:  # jinja's errors (raise_exception in a template) are none of the classes below
            has_system = has_system_message(*split_row(row))
            refusal = template_refusal(exc, has_system=has_system, system_message=system_message)
            raise DataError(f"{source}, row {number}: {refusal}") from None
        except (DataError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}, row {number}: {exc}") from None
    if not examples:
        raise DataError(f"{source}: no rows")
    return examples


def truncation_counts(examples: list[Example], rows: int) -> TruncationCounts:
    """How many of the examples `rows` rows gave were shortened to the length limits."""
    cut_prompts, cut_completions = sum(e.prompt_cut for e in examples), sum(e.completion_cut for e in examples)
    return TruncationCounts(rows, len(examples), cut_prompts, cut_completions)


def check_examples(examples: list[Example], *, needs_completions: bool, needs_teacher_prompt: bool, field: str) -> None:
    """Refuse data that cannot serve the spec, naming the spec field."""
    if needs_completions and any(e.completion_ids is None for e in examples):
        raise DataError(f"{field}: off-policy batches (lmbda < 1 without seq_kd) need completions, but some rows are prompt-only")
    if needs_teacher_prompt and any(e.teacher_prompt_ids is None for e in examples):
        raise DataError(f"{field}: opsd needs a 'teacher_prompt' column in every row")


# --- the order rows are visited in -------------------------------------------------------------------
def batch_indices(n_rows: int, start: int, count: int, seed: int) -> list[int]:
    """Rows `start .. start+count` of an endless stream of seeded per-epoch permutations.

    Pure function of (seed, position): a resumed run visits exactly the rows it would have.
    """
    indices = []
    for position in range(start, start + count):
        epoch, offset = divmod(position, n_rows)
        indices.append(int(_permutation(n_rows, seed, epoch)[offset]))
    return indices


_PERMUTATIONS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    key = (n, seed, epoch)
    if key not in _PERMUTATIONS:
        _PERMUTATIONS.clear()  # one epoch at a time is all a run needs
        _PERMUTATIONS[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERMUTATIONS[key]


# --- token ids -> tensors ------------------------------------------------------------------------------
@dataclass
class SequenceBatch:
    """Left-padded prompts followed by right-padded completions.

    input_ids, attention_mask, position_ids: (B, P + C); completion_mask: (B, C).
    Position P - 1 + j predicts completion token j.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    prompt_width: int

    @property
    def n_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def to(self, device: torch.device) -> SequenceBatch:
        return SequenceBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.completion_ids, self.completion_mask)),
            self.prompt_width,
        )


def make_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> SequenceBatch:
    prompt_width = max(len(p) for p in prompts)
    completion_width = max(1, max(len(c) for c in completions))
    b = len(prompts)
    input_ids = torch.full((b, prompt_width + completion_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros((b, completion_width), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        input_ids[i, prompt_width - len(p) : prompt_width] = torch.tensor(p)
        attention_mask[i, prompt_width - len(p) : prompt_width] = 1
        if c:
            input_ids[i, prompt_width : prompt_width + len(c)] = torch.tensor(c)
            attention_mask[i, prompt_width : prompt_width + len(c)] = 1
            completion_mask[i, : len(c)] = True
    # positions count real tokens only, so left padding does not shift them
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    completion_ids = input_ids[:, prompt_width:]
    return SequenceBatch(input_ids, attention_mask, position_ids, completion_ids, completion_mask, prompt_width)
