"""Tiny models, tokenizer and data built locally, saved with save_pretrained and loaded by path.

Nothing can be downloaded here, so tests build what a hub id would give: a character-level
tokenizer with a chat template, a Llama-shaped student and a bigger teacher with the same vocabulary.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def build_tokenizer(path: Path | None = None, extra_chars: str = ""):
    """The toy task's character-level tokenizer, optionally with more characters (a different vocabulary)."""
    from core_distill.toy.tokenizer import DEFAULT_CHARS
    from core_distill.toy.tokenizer import build_tokenizer as build

    tokenizer = build(DEFAULT_CHARS + extra_chars)
    if path is not None:
        tokenizer.save_pretrained(path)
    return tokenizer


def build_model(
    path: Path, tokenizer, *, hidden: int = 64, layers: int = 2, seed: int = 0, arch: str = "llama",
    head_dim: int = 32, max_positions: int = 256, logit_scale: float = 1.0, vocab_size: int | None = None,
):  # fmt: skip
    """A randomly initialised causal LM saved with save_pretrained.

    vLLM's CPU attention needs head_dim 32 or more; `logit_scale` sharpens the lm_head so that samples
    are not near-uniform; `vocab_size` above len(tokenizer) pads the embeddings and the head (as Qwen's are).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        num_key_value_heads=hidden // head_dim,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(LlamaConfig(**common)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    if logit_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(logit_scale)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def addition_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        question = f"{a}+{b}=?"
        answer = f"{a}+{b}={a + b}"
        rows.append(
            {
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "teacher_prompt": f"{question} hint {a + b}",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass
class TinyWorkspace:
    root: Path
    student: Path
    teacher: Path
    train_data: Path
    eval_data: Path

    def spec(self, **overrides: Any):
        """A spec that trains for a few seconds on CPU."""
        from core_distill.spec import DistillSpec

        fields: dict[str, Any] = dict(
            student=str(self.student),
            teacher=str(self.teacher),
            train_data=str(self.train_data),
            eval_data=str(self.eval_data),
            max_new_tokens=8,
            max_steps=3,
            batch_size=2,
            grad_accum=2,
            learning_rate=1e-3,
            eval_every=0,
            save_every=0,
            eval_examples=4,
            eval_completions_logged=2,
        )
        fields.update(overrides)
        return DistillSpec(**fields)


def build_workspace(root: Path) -> TinyWorkspace:
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    build_model(root / "student", tokenizer, hidden=64, layers=1, seed=1)
    build_model(root / "teacher", tokenizer, hidden=64, layers=2, seed=2)
    train = write_jsonl(root / "train.jsonl", addition_rows(64, seed=0))
    evals = write_jsonl(root / "eval.jsonl", addition_rows(8, seed=1))
    return TinyWorkspace(root, root / "student", root / "teacher", train, evals)
