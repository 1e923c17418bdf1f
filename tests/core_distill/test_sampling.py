"""The inverse-CDF token draw (generation/sampling.py): the distribution it follows, seeded, inside `generate`."""

from __future__ import annotations

import pytest
import torch

from core_distill.generation.sampling import inverse_cdf_draw, sample_completions
from core_distill.models import load_model, load_tokenizer

# chi-square bound at 9 degrees of freedom, P(X > 40) = 5e-6: a correct sampler fails it once in 200,000 seeds
CHI2_BOUND_DF9 = 40.0


def _chi_square(draws: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(draws, minlength=probs.numel()).double()
    expected = probs.double() * draws.numel()
    return float(((counts - expected) ** 2 / expected).sum())


# ten ids from 0.3 down to 0.005: the two-level draw crosses blocks of 4 ids (one block padded)
PROBS = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005])


def test_the_draws_follow_the_distribution():
    n = 200_000
    draws = inverse_cdf_draw(PROBS.expand(n, -1), torch.Generator().manual_seed(0), block=4)
    assert draws.shape == (n,) and draws.dtype == torch.long
    assert _chi_square(draws, PROBS) < CHI2_BOUND_DF9


def test_the_bound_rejects_a_sampler_of_a_slightly_different_distribution():
    """The test above can fail: draws of the distribution with two neighbours' odds swapped exceed the bound."""
    wrong = PROBS.clone()
    wrong[[7, 8]] = wrong[[8, 7]]  # 0.03 <-> 0.015
    draws = inverse_cdf_draw(wrong.expand(200_000, -1), torch.Generator().manual_seed(0), block=4)
    assert _chi_square(draws, PROBS) > 10 * CHI2_BOUND_DF9


def test_weights_need_not_sum_to_one_and_zero_weights_are_never_drawn():
    weights = torch.zeros(64)
    weights[[3, 40, 41]] = torch.tensor([2.0, 1.0, 1.0])  # the last ids have zero weight, as a cut head's rows
    draws = inverse_cdf_draw(weights.expand(40_000, -1), torch.Generator().manual_seed(1), block=16)
    counts = torch.bincount(draws, minlength=64)
    assert set(counts.nonzero().flatten().tolist()) == {3, 40, 41}
    assert counts[3] / 40_000 == pytest.approx(0.5, abs=0.01)


def test_the_same_generator_seed_gives_the_same_draws():
    probs = torch.softmax(torch.randn(16, 3000, generator=torch.Generator().manual_seed(4)), -1)
    a = inverse_cdf_draw(probs, torch.Generator().manual_seed(7))
    b = inverse_cdf_draw(probs, torch.Generator().manual_seed(7))
    c = inverse_cdf_draw(probs, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generate_with_the_inverse_cdf_draw_samples_the_models_next_token_distribution(tiny_workspace):
    """Through `generate`: the first sampled token of one prompt, 4,000 times, against softmax(logits / T)."""
    spec = tiny_workspace.spec()
    tokenizer, model = load_tokenizer(spec.student), load_model(spec.student, dtype=torch.float32)
    prompt = tokenizer("12+34=")["input_ids"]
    temperature = 0.1  # the random tiny model is nearly flat at 1: 0.1 puts 32 % on one id and 47 ids in play
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    probs = torch.softmax(logits.float() / temperature, -1)
    torch.manual_seed(0)
    first = sample_completions(model, [prompt] * 4000, pad_id=tokenizer.pad_token_id, eos_ids=set(),
                               max_new_tokens=1, temperature=temperature, max_batch=1000, draw="inverse_cdf")  # fmt: skip
    draws = torch.tensor([c[0] for c in first])
    # ids expected at least 5 times keep their own cell, the rest share one (the usual chi-square rule)
    keep = (probs * draws.numel() >= 5).nonzero().flatten()
    assert len(keep) >= 4, "the test needs a spread distribution"
    grouped = torch.where(torch.isin(draws, keep), draws, probs.numel())
    cells = torch.cat([probs, (1 - probs[keep].sum()).clamp_min(0).reshape(1)])
    used = torch.cat([keep, torch.tensor([probs.numel()])])
    counts = torch.bincount(grouped, minlength=probs.numel() + 1)[used].double()
    expected = cells[used].double() * draws.numel()
    stat = float(((counts - expected) ** 2 / expected.clamp_min(1e-12)).sum())
    df = len(used) - 1
    assert stat < df + 6 * (2 * df) ** 0.5, (stat, df)  # six standard deviations of the chi-square above its mean
    torch.manual_seed(0)
    again = sample_completions(model, [prompt] * 4000, pad_id=tokenizer.pad_token_id, eos_ids=set(),
                               max_new_tokens=1, temperature=temperature, max_batch=1000, draw="inverse_cdf")  # fmt: skip
    assert again == first  # seeded by the global generator, as the engine seeds it per step


def test_the_spec_picks_the_draw_of_the_students_and_the_seq_kd_teachers_rollouts(tiny_workspace):
    from core_distill.data.batches import encode_rows
    from core_distill.data.sources import read_rows
    from core_distill.generation.sampling import make_student_sampler
    from core_distill.generation.stops import eos_token_ids
    from core_distill.teachers.factory import build_teacher
    from core_distill.train import TEACHER, fill_completions

    spec = tiny_workspace.spec(lmbda=0.0, seq_kd=True, grad_accum=1, token_draw="inverse_cdf", temperature=1.5)
    tokenizer, student = load_tokenizer(spec.student), load_model(spec.student, dtype=torch.float32)
    assert make_student_sampler(spec, student).draw == "inverse_cdf"
    assert make_student_sampler(tiny_workspace.spec(), student).draw == "multinomial"  # the default
    teacher = build_teacher(spec, student, dtype=torch.float32, device=torch.device("cpu"))
    rows = encode_rows(read_rows(spec.train_data)[:4], tokenizer, max_prompt_length=64, max_completion_length=64,
                       source="t")  # fmt: skip
    eos, prompts = eos_token_ids(student, tokenizer), [e.prompt_ids for e in rows]
    by_draw = {}
    for draw in ("inverse_cdf", "multinomial"):
        torch.manual_seed(5)
        by_draw[draw] = sample_completions(teacher.model, prompts, pad_id=tokenizer.pad_token_id, eos_ids=eos,
                                           max_new_tokens=spec.max_new_tokens, temperature=1.5, draw=draw)  # fmt: skip
    torch.manual_seed(5)
    got = fill_completions(spec, [rows], [TEACHER], None, teacher, tokenizer, eos)[0]
    assert got == by_draw["inverse_cdf"] != by_draw["multinomial"]
