"""Model pairs for the vocabulary rules (core_distill/data/vocab.py), built at test time.

- a padded pair: one tokenizer (81 ids), a student whose embeddings and head have 64 padding rows
  and a teacher with 128, as Qwen2.5-0.5B (151,936 rows) and 7B (152,064) have over 151,665 ids;
  the padding rows are made loud (logits around +-100), so any use of them would show;
- the same pair cut by hand: the first 81 rows of each model's embeddings and head, saved as
  models of vocab_size 81;
- tokenizers of the same size that differ in one token, and ones with a special token remapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from core_distill.toy.tokenizer import CHAT_TEMPLATE, DEFAULT_CHARS
from core_distill.toy.tokenizer import build_tokenizer as build_char_tokenizer
from tests.tiny_models import addition_rows, build_model, write_jsonl

STUDENT_PADDING, TEACHER_PADDING = 64, 128


@dataclass
class PaddedPair:
    root: Path
    ids: int  # the tokenizer's ids (81)
    student: Path  # head ids + 64 rows
    teacher: Path  # head ids + 128 rows
    student_cut: Path  # the student with its first `ids` rows only, cut by hand
    teacher_cut: Path
    train_data: Path
    eval_data: Path

    def spec(self, cut_by_hand: bool = False, **overrides):
        """A spec of a few CPU seconds on the padded pair (or on the pair cut by hand)."""
        from core_distill.spec import DistillSpec

        fields = dict(
            student=str(self.student_cut if cut_by_hand else self.student),
            teacher=str(self.teacher_cut if cut_by_hand else self.teacher),
            train_data=str(self.train_data), eval_data=str(self.eval_data), max_new_tokens=8, max_steps=2,
            batch_size=2, grad_accum=2, learning_rate=1e-3, eval_every=0, save_every=0, eval_examples=4,
            eval_completions_logged=2, lmbda=0.0, beta=0.5,
        )  # fmt: skip
        return DistillSpec(**(fields | overrides))


def build_padded_pair(root: Path) -> PaddedPair:
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    ids = len(tokenizer)
    pair = PaddedPair(root, ids, root / "student", root / "teacher", root / "student-cut", root / "teacher-cut",
                      write_jsonl(root / "train.jsonl", addition_rows(32, seed=0)),
                      write_jsonl(root / "eval.jsonl", addition_rows(4, seed=1)))  # fmt: skip
    for path, cut, padding, layers, seed in ((pair.student, pair.student_cut, STUDENT_PADDING, 1, 1),
                                             (pair.teacher, pair.teacher_cut, TEACHER_PADDING, 2, 2)):  # fmt: skip
        model = build_model(path, tokenizer, hidden=64, layers=layers, seed=seed, vocab_size=ids + padding)
        make_padding_loud(model, ids, seed)
        model.save_pretrained(path)
        save_cut_by_hand(model, tokenizer, ids, cut)
    return pair


def make_padding_loud(model, ids: int, seed: int) -> None:
    """Padding rows in +-pairs of long random directions: whatever the hidden state, some padding
    logit is about +100, so a head that kept them would put nearly all its mass there."""
    g = torch.Generator().manual_seed(seed)
    weight = model.lm_head.weight
    half = (weight.shape[0] - ids) // 2
    directions = torch.randn(half, weight.shape[1], generator=g)
    directions = 100.0 * directions / directions.norm(dim=1, keepdim=True)
    with torch.no_grad():
        weight[ids:] = torch.cat([directions, -directions])


def save_cut_by_hand(model, tokenizer, ids: int, path: Path) -> None:
    """The model with only the first `ids` rows of its embeddings and lm_head, as a model of vocab_size `ids`."""
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict() | {"vocab_size": ids})
    cut = AutoModelForCausalLM.from_config(config)
    state = {name: tensor[:ids] if name in ("model.embed_tokens.weight", "lm_head.weight") else tensor
             for name, tensor in model.state_dict().items()}  # fmt: skip
    cut.load_state_dict(state)
    cut.generation_config = model.generation_config
    cut.save_pretrained(path)
    tokenizer.save_pretrained(path)


# --- tokenizers that differ -------------------------------------------------------------------------------
def one_token_different():
    """81 ids like the toy tokenizer's, with '$' where it has '#' (both sort to the same id)."""
    return build_char_tokenizer(DEFAULT_CHARS.replace("#", "$"))


def remapped_eos(template_keeps_eos: bool = False):
    """The toy vocabulary with eos remapped to '<|system|>'; its chat template ends assistant turns
    with '<|system|>' instead of '<|eos|>' (unless `template_keeps_eos`, as an instruct model's
    template keeps its base model's end token)."""
    tokenizer = build_char_tokenizer()
    tokenizer.eos_token = "<|system|>"
    if not template_keeps_eos:
        tokenizer.chat_template = CHAT_TEMPLATE.replace("<|eos|>", "<|system|>")
    return tokenizer


def with_bos(token: str = "<|user|>"):
    """The toy vocabulary with a bos token (the toy tokenizer has none)."""
    tokenizer = build_char_tokenizer()
    tokenizer.bos_token = token
    return tokenizer


def save_teacher(path: Path, tokenizer, seed: int = 4):
    """A tiny teacher over `tokenizer` (its head as large as the tokenizer), its generation config ending
    on the tokenizer's eos."""
    return build_model(path, tokenizer, hidden=64, layers=1, seed=seed)
