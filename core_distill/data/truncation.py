"""Fitting rows into max_prompt_length / max_completion_length without losing what matters.

`truncation: middle` (the default):
- a prompt keeps its start and its end. A conversation first loses its oldest turns (whole turns, after
  the leading system/developer messages, so that it still starts with a user turn), re-rendered by the
  chat template; if the system turn and the last user turn alone are still too long, tokens are cut from
  the middle: the head (BOS, the system turn, the last user turn's header: everything up to that turn's
  text) and the tail (the end of that text and the assistant header) are kept. A text prompt keeps its
  BOS (what the tokenizer puts before any text) and its end. The head kept is at most half the limit.
- a completion keeps its end: the end-of-turn token every completion ends with (core_distill/data/chat_turns.py,
  the token generation stops at); the tokens before it are cut from the right. The student is then taught
  to close a turn that was cut: raise the limit, or refuse, when that matters.

`truncation: refuse`: a row over either limit is a data error naming it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core_distill.data.sources import DataError

SYSTEM_ROLES = ("system", "developer")

Encode = Callable[[Any], list[int]]  # a prompt (text or messages) -> its token ids


@dataclass
class TruncationCounts:
    """How many examples the length limits shortened, of how many, from how many rows."""

    rows: int  # rows read
    examples: int  # examples they gave (more than rows with assistant_turns: all)
    prompts: int  # examples whose prompt (or OPSD teacher prompt) was cut
    completions: int  # examples whose dataset completion was cut

    def describe(self, max_prompt_length: int, max_completion_length: int) -> str:
        """'2 of the first 32 rows have a prompt over max_prompt_length 512, ...' ('' when nothing was cut)."""
        if not (self.prompts or self.completions):
            return ""
        of = f"the first {self.rows} rows"
        if self.examples != self.rows:
            of = f"the {self.examples} examples (assistant turns) of {of}"
        return (f"{self.prompts} of {of} have a prompt over max_prompt_length {max_prompt_length}, "
                f"{self.completions} a completion over max_completion_length {max_completion_length}: they are cut "
                "keeping their start and end (truncation: middle)")  # fmt: skip


def fit_prompt(prompt: Any, ids: list[int], limit: int, encode: Encode, mode: str) -> list[int]:
    """`ids` (the rendering of `prompt`) in at most `limit` tokens, as the module docstring says."""
    if len(ids) <= limit:
        return ids
    if mode == "refuse":
        raise DataError(f"the prompt is {len(ids)} tokens, over max_prompt_length {limit} (truncation: refuse)")
    if isinstance(prompt, list):
        prompt, ids = _drop_oldest_turns(prompt, ids, limit, encode)
        if len(ids) <= limit:
            return ids
        head = _head_of_conversation(prompt, ids, encode)
    else:
        head = _common_prefix(ids, encode(""))  # BOS and whatever else the tokenizer adds before text
    return middle_cut(ids, head, limit)


def fit_completion(ids: list[int], limit: int, end_id: int, mode: str) -> list[int]:
    """`ids` in at most `limit` tokens, its closing end-of-turn token `end_id` kept."""
    if len(ids) <= limit:
        return ids
    if mode == "refuse":
        raise DataError(f"the completion is {len(ids)} tokens, over max_completion_length {limit} (truncation: refuse)")
    end = ids[-1:] if ids[-1] == end_id else []
    return ids[: limit - len(end)] + end


def middle_cut(ids: list[int], head: int, limit: int) -> list[int]:
    """The first `head` tokens (at most half the limit) and the last ones, `limit` in all."""
    head = min(head, limit // 2)
    return ids[:head] + ids[len(ids) - (limit - head) :]


def _drop_oldest_turns(
    messages: list[dict], ids: list[int], limit: int, encode: Encode
) -> tuple[list[dict], list[int]]:
    """The conversation with the fewest oldest turns dropped that fits (or the shortest one, if none does)."""
    system = 0
    while system < len(messages) and messages[system].get("role") in SYSTEM_ROLES:
        system += 1
    # a cut may start the kept history at any user turn after the first, up to the last one
    starts = [i for i in range(system + 1, len(messages)) if messages[i].get("role") == "user"]
    if not starts:
        return messages, ids
    cache: dict[int, list[int]] = {}

    def rendered(k: int) -> list[int]:
        if k not in cache:
            cache[k] = encode(messages[:system] + messages[starts[k] :])
        return cache[k]

    # dropping more turns never makes the rendering longer: the first start that fits, by bisection
    first_fit = bisect_left(range(len(starts)), True, key=lambda k: len(rendered(k)) <= limit)
    k = min(first_fit, len(starts) - 1)
    return messages[:system] + messages[starts[k] :], rendered(k)


def _head_of_conversation(messages: list[dict], ids: list[int], encode: Encode) -> int:
    """Tokens before the last user turn's text (else the last text message's): the rendering's common prefix
    with that text emptied."""
    texts = [i for i, m in enumerate(messages) if isinstance(m.get("content"), str)]
    users = [i for i in texts if messages[i].get("role") == "user"]
    if not texts:
        return 0
    emptied = [dict(m) for m in messages]
    emptied[(users or texts)[-1]]["content"] = ""
    return _common_prefix(ids, encode(emptied))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
