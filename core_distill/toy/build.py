"""`distill toy build`: data, tokenizer, a teacher trained from scratch, a weak student.

The teacher is trained with the small loop below (next-token cross-entropy on completions); the
student is several times smaller and gets only a short warm start with the same loop, so it knows
the answer format but not yet the carries. Both are saved with save_pretrained and load by path.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core_distill.data import Example, batch_indices, encode_rows, make_batch
from core_distill.evaluation import final_answer_match
from core_distill.generation import sample_completions
from core_distill.paths import toy_dir
from core_distill.toy.task import make_splits, write_splits
from core_distill.toy.tokenizer import build_tokenizer


@dataclass(frozen=True)
class ToyConfig:
    seed: int = 0
    digits: int = 4
    train_rows: int = 20_000
    eval_rows: int = 200
    test_rows: int = 500
    teacher_hidden: int = 128
    teacher_layers: int = 4
    teacher_steps: int = 700  # ~98% test exact match
    student_hidden: int = 64
    student_layers: int = 2
    # A short warm start keeps the student weak: 400 steps at 3e-3 gave 16% test exact match; 800
    # steps took it to 97%, above the teacher, which leaves distillation nothing to show.
    student_steps: int = 400
    batch_size: int = 128
    learning_rate: float = 1.5e-3  # the teacher's
    student_learning_rate: float = 3e-3


# A miniature build for tests: seconds, not minutes.
QUICK = ToyConfig(digits=2, train_rows=400, eval_rows=16, test_rows=16, teacher_hidden=64, teacher_layers=1,
                  teacher_steps=30, student_hidden=32, student_layers=1, student_steps=5, batch_size=32)  # fmt: skip


def build_toy(
    out_dir: Path | str | None = None,
    seed: int = 0,
    teacher_steps: int | None = None,
    quick: bool = False,
    *,
    config: ToyConfig | None = None,
    progress: bool = True,
) -> dict:
    """Write data/, teacher/, student/ and manifest.json into out_dir (default: the toy folder); return the manifest.

    `config` overrides the defaults (ToyConfig(), or QUICK with quick=True); seed and teacher_steps override it.
    """
    start = time.time()
    out_dir = Path(out_dir) if out_dir is not None else toy_dir()
    config = replace(config or (QUICK if quick else ToyConfig()), seed=seed)
    if teacher_steps is not None:
        config = replace(config, teacher_steps=teacher_steps)
    torch.manual_seed(config.seed)
    sizes = {"train": config.train_rows, "eval": config.eval_rows, "test": config.test_rows}
    splits = make_splits(config.seed, config.digits, sizes)
    write_splits(out_dir / "data", splits)
    tokenizer = build_tokenizer()
    encoded = {name: encode_rows(rows, tokenizer, max_prompt_length=64, max_completion_length=256, source=name)
               for name, rows in splits.items()}  # fmt: skip

    teacher = new_model(tokenizer, config.teacher_hidden, config.teacher_layers)
    train_sft(teacher, encoded["train"], config, config.teacher_steps, desc="teacher", progress=progress)
    torch.manual_seed(config.seed + 1)
    student = new_model(tokenizer, config.student_hidden, config.student_layers)
    student_config = replace(config, seed=config.seed + 1, learning_rate=config.student_learning_rate)
    train_sft(
        student, encoded["train"], student_config, config.student_steps, desc="student warm start", progress=progress
    )

    manifest = {"seed": config.seed, "sizes": sizes, "config": asdict(config), "build_seconds": 0.0, "models": {}}
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(out_dir / name)
        tokenizer.save_pretrained(out_dir / name)
        manifest["models"][name] = {
            "hidden_size": model.config.hidden_size,
            "layers": model.config.num_hidden_layers,
            "parameters": sum(p.numel() for p in model.parameters()),
            "test_accuracy": accuracy(model, tokenizer, encoded["test"]),
        }
    manifest["build_seconds"] = round(time.time() - start, 1)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def new_model(tokenizer, hidden: int, layers: int):
    """A Llama with head dimension 32 (vLLM's CPU attention refuses 16)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32, head_dim=32, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def train_sft(model, examples: list[Example], config: ToyConfig, steps: int, desc: str, progress: bool) -> None:
    """Cross-entropy on completion tokens; AdamW with linear decay; batches from a seeded stream."""
    if steps == 0:
        return
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        rows = [
            examples[i] for i in batch_indices(len(examples), step * config.batch_size, config.batch_size, config.seed)
        ]
        batch = make_batch([e.prompt_ids for e in rows], [e.completion_ids for e in rows], pad_id=0)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits  # (B, L, V)  # fmt: skip
        width = batch.completion_mask.shape[1]
        predictions = logits[:, batch.prompt_width - 1 : batch.prompt_width - 1 + width]  # (B, C, V)
        loss = F.cross_entropy(predictions[batch.completion_mask], batch.completion_ids[batch.completion_mask])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()


@torch.no_grad()
def accuracy(model, tokenizer, examples: list[Example]) -> float:
    """Share of greedy completions whose final answer (after '####') is right."""
    completions = sample_completions(model, [e.prompt_ids for e in examples], pad_id=tokenizer.pad_token_id,
                                     eos_ids={tokenizer.eos_token_id}, max_new_tokens=96, greedy=True, max_batch=256)  # fmt: skip
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    return sum(final_answer_match(t, e.completion_text) for t, e in zip(texts, examples, strict=True)) / len(examples)
