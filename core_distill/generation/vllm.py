"""Student rollouts with an in-process vLLM engine (`generation_backend: vllm`).

The engine holds its own copy of the student's weights. `sync()` pushes the trained weights into
it before each generation round (every time: PyTorch's fused and foreach optimizer kernels update
parameters without bumping their version counters, so "unchanged" cannot be detected for free, and
a push costs about one read of the weights). The push goes through vLLM's in-place reload (`reload_weights` with a weights iterator in checkpoint format), which
re-runs the engine's own weight post-processing (fused qkv / gate-up projections, CPU repacking),
then the prefix cache is dropped so that no KV block computed with old weights is reused.

The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the push hands over
tensors without serialising them. LoRA students are merged for the push and unmerged after it.

Sampling is seeded per prompt from torch's RNG, which the training loop seeds from (seed, step):
a resumed run draws the same completions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from core_distill.generation.stops import cut_at_eos
from core_distill.models import causal_lm, unwrap_parallel, vocab_size, vocab_width

# the engine core must share this process for weights to be handed over as tensors
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402


class VLLMSampler:
    """Samples completions with vLLM from the current weights of a training model."""

    def __init__(
        self, model: nn.Module, model_path: str, *, dtype: torch.dtype, max_model_len: int,
        memory_share: float | None = None, seed: int = 0,
    ):  # fmt: skip
        """
        Args:
            model: the training student (accelerate/DDP/peft wrappers are fine).
            model_path: the folder (or hub id) the student was loaded from: its config and tokenizer
                files define the engine's architecture; its weights are replaced at the first sync.
            max_model_len: longest prompt + completion the engine must hold.
            memory_share: vLLM's gpu_memory_utilization: on a GPU the share of its memory for the engine
                (weights + KV cache, beside the training job); on CPU the share of RAM for the KV cache.
        """
        self.model = model
        on_gpu = next(model.parameters()).device.type == "cuda"
        self.llm = LLM(
            model=str(model_path),
            dtype=str(dtype).removeprefix("torch."),
            max_model_len=max_model_len,
            gpu_memory_utilization=memory_share or (0.3 if on_gpu else 0.1),
            skip_tokenizer_init=True,  # ids in, ids out: the student's tokenizer stays the only one
            enforce_eager=not on_gpu,  # CPU: skip compiling graphs for a model whose weights keep changing
            seed=seed,
        )
        self.pushes = 0

    @classmethod
    def for_spec(cls, spec, model: nn.Module, dtype: torch.dtype) -> VLLMSampler:
        from core_distill.paths import resolve_model_path

        config = causal_lm(model).config.get_text_config()
        longest = spec.max_prompt_length + spec.max_new_tokens
        limit = getattr(config, "max_position_embeddings", None) or longest
        return cls(model, str(resolve_model_path(spec.student)), dtype=dtype, max_model_len=min(longest, limit), seed=spec.seed)

    # --- weights ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sync(self) -> None:
        """Push the student's current weights into the engine."""
        peft_model = unwrap_parallel(self.model)
        merged = hasattr(peft_model, "merge_adapter")
        if merged:
            peft_model.merge_adapter()
        try:
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": self._weights(), "is_checkpoint_format": True}
            )
        finally:
            if merged:
                peft_model.unmerge_adapter()
        self.llm.reset_prefix_cache()
        self.pushes += 1

    def _weights(self) -> Iterator[tuple[str, Tensor]]:
        """(checkpoint name, tensor) of the plain CausalLM: LoRA factors left out, base_layer names unwrapped."""
        for name, tensor in causal_lm(self.model).state_dict().items():
            if "lora_" in name:
                continue
            yield name.replace(".base_layer.", "."), tensor.detach()

    # --- sampling ---------------------------------------------------------------------------------
    def sample(
        self, prompts: list[list[int]], *, pad_id: int, eos_ids: set[int], max_new_tokens: int,
        temperature: float = 1.0, greedy: bool = False, max_batch: int = 0,
    ) -> list[list[int]]:  # fmt: skip
        """Completion ids per prompt, each ending at its first EOS (or at max_new_tokens).

        `pad_id` and `max_batch` are accepted for the `Sampler` protocol: vLLM needs no padding and
        schedules the whole list itself (continuous batching).
        """
        if not prompts:
            return []
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        params = [
            SamplingParams(
                n=1, temperature=0.0 if greedy else temperature, top_p=1.0, max_tokens=max_new_tokens,
                stop_token_ids=sorted(eos_ids), detokenize=False, seed=seed, allowed_token_ids=self._allowed_ids(),
            )  # fmt: skip
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [cut_at_eos(list(out.outputs[0].token_ids), eos_ids) for out in outputs]

    def _allowed_ids(self) -> list[int] | None:
        """A cut head (core_distill/data/vocab.py): only the ids below the cut; None (every id) otherwise."""
        width = vocab_width(self.model)
        return list(range(width)) if width < vocab_size(self.model) else None

    def sample_with_logprobs(
        self, prompts: list[list[int]], *, eos_ids: set[int], max_new_tokens: int, temperature: float = 1.0,
        seeds: list[int] | None = None,
    ) -> list[tuple[list[int], list[float]]]:  # fmt: skip
        """Completions with vLLM's log-prob of each sampled token (raw: temperature 1), for checks."""
        seeds = seeds if seeds is not None else torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        params = [
            SamplingParams(n=1, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens,
                           stop_token_ids=sorted(eos_ids), detokenize=False, seed=seed, logprobs=0)  # fmt: skip
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        result = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            result.append((ids, [step[tok].logprob for step, tok in zip(completion.logprobs, ids, strict=True)]))
        return result
