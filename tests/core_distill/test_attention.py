"""Case E (issue 21): a family's real distribution. Gemma-2's attention softcapping needs eager attention
(sdpa drops it), and heads that scale their logits (Granite, Cohere, Gemma's final softcap) must be scored
as the model's own forward scores them."""

from __future__ import annotations

import pytest
import torch

from core_distill.data.batches import make_batch
from core_distill.models import completion_hidden, head_of, load_model
from core_distill.spec import SpecError
from core_distill.teachers.factory import build_teacher
from tests.tiny_models import build_tokenizer

tokenizer = build_tokenizer()
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12]]  # different lengths: the batch is left-padded
COMPLETIONS = [[13, 14, 15], [16, 17, 18, 19, 20]]


def build_gemma2(path, *, seed: int = 0):
    """A tiny random-init Gemma-2 whose attention softcap binds (1.0: random scores reach it; the real models
    use 50 on scores that reach it too); final_logit_softcapping as Gemma-2's."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, attn_logit_softcapping=1.0,
        final_logit_softcapping=30.0, sliding_window=64, max_position_embeddings=256, initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    Gemma2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def reference_logprobs(path, attn_implementation: str) -> torch.Tensor:
    """Each row alone (no padding) through transformers' own forward: (N, V) at the completion positions."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_implementation).eval()
    rows = []
    with torch.no_grad():
        for prompt, completion in zip(PROMPTS, COMPLETIONS, strict=True):
            logits = model(torch.tensor([prompt + completion])).logits[0]  # (L, V)
            rows.append(logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)].float().log_softmax(-1))
    return torch.cat(rows)


def engine_logprobs(hidden: torch.Tensor, head) -> torch.Tensor:
    return head.logits(hidden).float().log_softmax(-1)


def test_gemma2_teacher_logprobs_equal_the_eager_reference(tiny_workspace, tmp_path):
    gemma = build_gemma2(tmp_path / "gemma2")
    spec = tiny_workspace.spec(teacher=str(gemma))  # attn_implementation left at its default
    teacher = build_teacher(spec, None, dtype=torch.float32, device=torch.device("cpu"))
    targets = teacher.score(make_batch(PROMPTS, COMPLETIONS, pad_id=tokenizer.pad_token_id))
    ours = engine_logprobs(targets.hidden, targets.head)

    eager, sdpa = reference_logprobs(gemma, "eager"), reference_logprobs(gemma, "sdpa")
    assert (eager - sdpa).abs().max() > 0.1  # the softcap matters here: the check below can fail
    torch.testing.assert_close(ours, eager, atol=1e-5, rtol=1e-5)


def test_auto_is_eager_for_softcapping_only_and_sdpa_is_refused_before_loading(tiny_workspace, tmp_path):
    gemma = build_gemma2(tmp_path / "gemma2")
    assert load_model(str(gemma), dtype=torch.float32).config._attn_implementation == "eager"
    assert load_model(str(tiny_workspace.teacher), dtype=torch.float32).config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="softcapping"):
        load_model(str(gemma), dtype=torch.float32, attn_implementation="sdpa")
    assert load_model(str(gemma), dtype=torch.float32, attn_implementation="flex_attention")  # applies softcap

    with pytest.raises(SpecError) as caught:
        tiny_workspace.spec(teacher=str(gemma), attn_implementation="sdpa").preflight()
    assert list(caught.value.errors) == ["attn_implementation"]
    assert (
        "softcapping (1.0)" in caught.value.errors["attn_implementation"]
        and "eager" in caught.value.errors["attn_implementation"]
    )
    tiny_workspace.spec(attn_implementation="sdpa").preflight()  # no softcapping: sdpa is fine


def _granite(path):
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig(**_llama_like(), logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5,
                           attention_multiplier=0.2)  # fmt: skip
    return GraniteForCausalLM(config)


def _cohere(path):
    from transformers import CohereConfig, CohereForCausalLM

    return CohereForCausalLM(CohereConfig(**_llama_like(), logit_scale=0.25))


def _gemma2(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(build_gemma2(path))


def _llama_like() -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)  # fmt: skip


@pytest.mark.parametrize("build", [_granite, _cohere, _gemma2], ids=["granite", "cohere", "gemma2"])
def test_scored_distribution_is_the_models_own_forward(build, tmp_path):
    """Hidden states x lm_head, as the loss computes them, give the logits the model's forward gives:
    Granite divides by logits_scaling, Cohere multiplies by logit_scale, Gemma softcaps the final logits."""
    torch.manual_seed(3)
    model = build(tmp_path / "model")
    model.save_pretrained(tmp_path / "model")
    model = load_model(str(tmp_path / "model"), dtype=torch.float32).eval()
    batch = make_batch(PROMPTS, COMPLETIONS, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        ours = engine_logprobs(completion_hidden(model, batch), head_of(model))
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits  # fmt: skip
    width = batch.completion_mask.shape[1]
    own = logits[:, batch.prompt_width - 1 : batch.prompt_width - 1 + width][batch.completion_mask]
    torch.testing.assert_close(ours, own.float().log_softmax(-1), atol=1e-5, rtol=1e-5)
