"""A real Llama checkpoint whose next token depends only on the current one, with logits set by hand,
so that what it generates is known before it runs (the evaluator's hand-computed cases).

Its attention and MLP write nothing (o_proj and down_proj are zero), so the last hidden state is the
embedding of the current token: a one-hot e_k, which the final RMSNorm scales to sqrt(hidden) e_k.
The head then gives logit 8 * w to each next token j with lm_head[j, k] = w (hidden 64).

The chain after the generation prompt `<|assistant|>`:  '-' then '3' (w 10) or '1' (w 9.9), then '=',
'0', EOS. So greedy writes "-3=0"; at temperature T it writes "-3=0" with probability
1 / (1 + exp(-0.8 / T)) (0.69 at T 1) and "-1=0" otherwise, always 5 tokens with the EOS.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HIDDEN = 64
CHAIN = {"<|assistant|>": {"-": 10.0}, "-": {"3": 10.0, "1": 9.9}, "3": {"=": 10.0}, "1": {"=": 10.0},
         "=": {"0": 10.0}, "0": {"<|eos|>": 10.0}}  # fmt: skip


def p_three(temperature: float) -> float:
    """The probability of "-3=0" (else "-1=0") at a sampling temperature."""
    return 1.0 / (1.0 + math.exp(-8 * 0.1 / temperature))


def build_bigram_model(path: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_models import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=HIDDEN, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    ids = tokenizer.convert_tokens_to_ids
    basis = {token: k for k, token in enumerate(CHAIN)}  # each chain token's hidden dimension
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for token, k in basis.items():
            model.model.embed_tokens.weight[ids(token), k] = 1.0
            for following, weight in CHAIN[token].items():
                model.lm_head.weight[ids(following), k] = weight
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def countdown_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A chat JSONL of (prompt, reference completion) rows."""
    lines = [json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]})
             for p, c in rows]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path
