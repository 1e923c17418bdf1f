"""Where a completion stops: the stop tokens of a student, and a sampled row cut at the first of them.

Both samplers (HF `generate`, vLLM) and evaluation read these, so every rollout ends the same way.
"""

from __future__ import annotations

from torch import nn

from core_distill.data.chat_turns import end_of_turn_id
from core_distill.models import causal_lm


def cut_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Keep tokens up to and including the first EOS (pad may equal EOS, so cut, don't strip)."""
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            return tokens[: i + 1]
    return tokens


def eos_token_ids(model: nn.Module, tokenizer) -> set[int]:
    """The stop tokens: the tokenizer's EOS, any the generation config lists (Llama 3 has several) and the
    chat template's end of turn, which dataset completions end with; a base student whose EOS is
    `<|endoftext|>` alone stops at `<|im_end|>` on chat data this way."""
    ids = {tokenizer.eos_token_id, end_of_turn_id(tokenizer)}
    configured = getattr(causal_lm(model).generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids
