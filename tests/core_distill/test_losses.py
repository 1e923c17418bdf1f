"""The loss pinned against TRL, against a naive probability-space reference, and against autograd.

Any change that moves these numbers changes the objective and must say so.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core_distill.losses import (
    DenseTeacher,
    Head,
    SparseTeacher,
    fused_distill_loss,
    generalized_jsd,
    jsd_per_token,
    log_softmax_fp32,
    policy_gradient_loss,
    reverse_kl_advantages,
    tail_logmass,
    topk_tail_jsd,
)

pytestmark = pytest.mark.filterwarnings("ignore")


def trl_gkd_loss():
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


def naive_jsd(student_logits, teacher_logits, labels, beta, temperature):
    """Probability-space reference written independently of losses.py (float64)."""
    s = torch.softmax(student_logits.double() / temperature, -1)
    t = torch.softmax(teacher_logits.double() / temperature, -1)
    if beta == 0:
        per = (t * (t.log() - s.log())).sum(-1)
    elif beta == 1:
        per = (s * (s.log() - t.log())).sum(-1)
    else:
        m = beta * t + (1 - beta) * s
        per = beta * (t * (t.log() - m.log())).sum(-1) + (1 - beta) * (s * (s.log() - m.log())).sum(-1)
    mask = labels != -100
    return per[mask].sum() / mask.sum()


def random_case(seed, b=3, t=7, v=11, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, t, v, generator=g) * scale).float()
    te = (torch.randn(b, t, v, generator=g) * scale).float()
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[0, 0] = True
    labels = torch.where(mask, torch.zeros(b, t, dtype=torch.long), torch.full((b, t), -100))
    return s, te, mask, labels


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_generalized_jsd_matches_trl_value_and_gradient(beta, temperature, seed):
    s, t, mask, labels = random_case(seed)
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    ours = generalized_jsd(s1, t, mask=mask, beta=beta, temperature=temperature)
    theirs = trl_gkd_loss()(s2, t, labels=labels, beta=beta, temperature=temperature, reduction="batchmean")
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5, rel=1e-5)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-5, rtol=1e-4)


def test_generalized_jsd_without_mask_averages_every_token():
    s, t, _, _ = random_case(3)
    all_valid = torch.zeros(s.shape[:2], dtype=torch.long)
    theirs = trl_gkd_loss()(s, t, labels=all_valid, beta=0.3, reduction="batchmean")
    assert generalized_jsd(s, t, beta=0.3).item() == pytest.approx(theirs.item(), abs=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
def test_generalized_jsd_matches_naive_probability_reference(beta):
    s, t, mask, labels = random_case(42, b=2, t=3, v=5, scale=1.0)
    expected = naive_jsd(s, t, labels, beta, 2.0)
    assert generalized_jsd(s, t, mask, beta=beta, temperature=2.0).item() == pytest.approx(expected.item(), abs=1e-6)


def test_endpoints_are_forward_and_reverse_kl():
    s = torch.tensor([[[0.1, 0.9]]]).log().float()
    t = torch.tensor([[[0.9, 0.1]]]).log().float()
    assert generalized_jsd(s, t, beta=1.0).item() == pytest.approx(0.8 * math.log(9), abs=1e-5)
    assert generalized_jsd(s, t, beta=0.0).item() == pytest.approx(0.8 * math.log(9), abs=1e-5)
    assert generalized_jsd(s, s, beta=0.5).item() == pytest.approx(0.0, abs=1e-7)


def test_jsd_beta_swaps_with_one_minus_beta():
    s, t, _, _ = random_case(5)
    ls, lt = log_softmax_fp32(s), log_softmax_fp32(t)
    torch.testing.assert_close(jsd_per_token(ls, lt, 0.3), jsd_per_token(lt, ls, 0.7), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(jsd_per_token(ls, lt, 0.1), jsd_per_token(lt, ls, 0.1))


# --- fused chunked loss == autograd through full logits --------------------------------------------
def head_case(seed, n=13, h=6, v=17, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).float()
    w_s = torch.randn(v, h, generator=g).float()
    b_s = torch.randn(v, generator=g).float() if bias else None
    h_t = torch.randn(n, h + 2, generator=g).float()
    w_t = torch.randn(v, h + 2, generator=g).float()
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, w_s, b_s, h_t, w_t, targets


def autograd_reference(hidden, w_s, b_s, h_t, w_t, targets, beta, temperature, top_k, token_weights, normalizer, softcap=None):
    z = F.linear(hidden, w_s, b_s)
    zt = h_t @ w_t.t()
    if softcap:
        z, zt = softcap * torch.tanh(z / softcap), softcap * torch.tanh(zt / softcap)
    if top_k:
        kd = topk_tail_jsd(z, zt, top_k, beta, temperature)
    else:
        kd = jsd_per_token(log_softmax_fp32(z, temperature), log_softmax_fp32(zt, temperature), beta)
    logp_y = log_softmax_fp32(z, temperature).gather(-1, targets[:, None]).squeeze(-1)
    return (kd.sum() - (token_weights * logp_y).sum()) / normalizer


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("top_k", [0, 4])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_fused_loss_equals_autograd_in_value_and_gradients(beta, top_k, chunk_size):
    hidden, w_s, b_s, h_t, w_t, targets = head_case(7, bias=True)
    weights = torch.rand(hidden.shape[0], generator=torch.Generator().manual_seed(1)).float()
    ref_params = [x.clone().requires_grad_() for x in (hidden, w_s, b_s)]
    ref = autograd_reference(*ref_params, h_t, w_t, targets, beta, 1.5, top_k, weights, 9.0)
    ref.backward()

    params = [x.clone().requires_grad_() for x in (hidden, w_s, b_s)]
    terms = fused_distill_loss(
        params[0], Head(params[1], params[2]), DenseTeacher(h_t, Head(w_t)), targets,
        beta=beta, temperature=1.5, top_k=top_k, token_weights=weights, normalizer=9.0, chunk_size=chunk_size,
    )  # fmt: skip
    terms.loss.backward()
    assert terms.loss.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    for ours, theirs in zip(params, ref_params, strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4)


def test_fused_loss_through_softcap_and_logit_scale():
    hidden, w_s, _, h_t, w_t, targets = head_case(8)
    weights = torch.zeros(hidden.shape[0])
    h1 = hidden.clone().requires_grad_()
    ref = autograd_reference(h1, w_s, None, h_t, w_t, targets, 0.5, 1.0, 0, weights, 1.0, softcap=2.0)
    ref.backward()
    h2 = hidden.clone().requires_grad_()
    terms = fused_distill_loss(
        h2, Head(w_s, softcap=2.0), DenseTeacher(h_t, Head(w_t, softcap=2.0)), targets, beta=0.5, chunk_size=4
    )
    terms.loss.backward()
    assert terms.loss.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_top_k_covering_the_vocabulary_is_the_exact_loss(beta):
    hidden, w_s, _, h_t, w_t, targets = head_case(9, v=12)
    exact, full = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    teacher = DenseTeacher(h_t, Head(w_t))
    a = fused_distill_loss(exact, Head(w_s), teacher, targets, beta=beta, top_k=0)
    b = fused_distill_loss(full, Head(w_s), teacher, targets, beta=beta, top_k=12)
    a.loss.backward()
    b.loss.backward()
    assert b.loss.item() == pytest.approx(a.loss.item(), abs=1e-5)
    torch.testing.assert_close(full.grad, exact.grad, atol=1e-5, rtol=1e-4)


def test_top_k_tail_is_a_lower_bound_that_tightens_with_k():
    s, t, _, _ = random_case(11, v=40)
    s, t = s.reshape(-1, 40), t.reshape(-1, 40)
    exact = jsd_per_token(log_softmax_fp32(s), log_softmax_fp32(t), 0.5).sum()
    values = [topk_tail_jsd(s, t, k, 0.5).sum().item() for k in (1, 4, 16, 40)]
    assert all(v <= exact.item() + 1e-5 for v in values)  # coarse-graining never increases a divergence
    assert values == sorted(values)
    assert values[-1] == pytest.approx(exact.item(), abs=1e-4)


def test_sparse_teacher_gives_the_same_loss_as_its_dense_top_k():
    hidden, w_s, _, h_t, w_t, targets = head_case(10)
    t_logp = log_softmax_fp32(h_t @ w_t.t())
    top, ids = t_logp.topk(5, -1)
    dense = fused_distill_loss(hidden, Head(w_s), DenseTeacher(h_t, Head(w_t)), targets, beta=0.7, top_k=5)
    sparse = fused_distill_loss(hidden, Head(w_s), SparseTeacher(ids, top, tail_logmass(top)), targets, beta=0.7, top_k=5)
    assert sparse.loss.item() == pytest.approx(dense.loss.item(), abs=1e-6)
    torch.testing.assert_close(sparse.teacher_logp, dense.teacher_logp.where(
        (ids == targets[:, None]).any(-1), tail_logmass(top)), atol=1e-6, rtol=1e-5)  # fmt: skip


def test_sft_term_is_cross_entropy():
    hidden, w_s, _, _, _, targets = head_case(12)
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    ce = F.cross_entropy(h1 @ w_s.t(), targets, reduction="sum") * 0.5 / 4.0
    ce.backward()
    terms = fused_distill_loss(
        h2, Head(w_s), None, targets, beta=0.5, kd_weight=0.0, token_weights=torch.full((13,), 0.5), normalizer=4.0
    )
    terms.loss.backward()
    assert terms.loss.item() == pytest.approx(ce.item(), abs=1e-5)
    torch.testing.assert_close(h2.grad, h1.grad, atol=1e-5, rtol=1e-4)


def test_frozen_head_gets_no_gradient_and_stats_are_reported():
    hidden, w_s, _, h_t, w_t, targets = head_case(13)
    h = hidden.clone().requires_grad_()
    terms = fused_distill_loss(h, Head(w_s), DenseTeacher(h_t, Head(w_t)), targets, beta=0.5)
    terms.loss.backward()
    assert h.grad is not None and w_s.grad is None
    s_logp, t_logp = log_softmax_fp32(hidden @ w_s.t()), log_softmax_fp32(h_t @ w_t.t())
    assert terms.stat_sums["fkl"] == pytest.approx(jsd_per_token(s_logp, t_logp, 0.0).sum().item(), rel=1e-5)
    assert terms.stat_sums["rkl"] == pytest.approx(jsd_per_token(s_logp, t_logp, 1.0).sum().item(), rel=1e-5)
    coverage = s_logp.exp().gather(-1, t_logp.topk(8, -1).indices).sum().item()
    assert terms.stat_sums["coverage"] == pytest.approx(coverage, rel=1e-5)


# --- sampled-token reverse KL (MiniLLM / on-policy distillation) ----------------------------------
def test_advantages_gamma_zero_is_the_detached_log_ratio_with_padding_masked():
    t = torch.tensor([[-1.0, -2.0, -3.0]])
    s = torch.tensor([[-1.5, -1.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    adv = reverse_kl_advantages(t, s, mask)
    torch.testing.assert_close(adv, torch.tensor([[0.5, -1.0, 0.0]]))
    assert not adv.requires_grad


def test_advantages_discounted_reward_to_go_with_length_normalization():
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    s = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])  # rewards 1, 2, 3 and a padded slot
    mask = torch.tensor([[True, True, True, False]])
    raw = reverse_kl_advantages(t, s, mask, gamma=0.5, length_normalization=False)
    torch.testing.assert_close(raw, torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]))
    norm = reverse_kl_advantages(t, s, mask, gamma=0.5, length_normalization=True)
    torch.testing.assert_close(norm, torch.tensor([[2.75 / 1.75, 3.5 / 1.5, 3.0, 0.0]]))


def test_advantages_from_the_next_token_leave_out_the_current_one():
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    s = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])  # rewards 1, 2, 3 and a padded slot
    mask = torch.tensor([[True, True, True, False]])
    # gamma 0: no long-term term at all (the single-step decomposition has the current token)
    assert reverse_kl_advantages(t, s, mask, gamma=0.0, from_next_token=True).abs().sum() == 0
    raw = reverse_kl_advantages(t, s, mask, gamma=0.5, length_normalization=False, from_next_token=True)
    torch.testing.assert_close(raw, torch.tensor([[0.5 * 2 + 0.25 * 3, 0.5 * 3, 0.0, 0.0]]))  # sum_{i>t} gamma^(i-t) r_i
    norm = reverse_kl_advantages(t, s, mask, gamma=0.5, length_normalization=True, from_next_token=True)
    torch.testing.assert_close(norm, torch.tensor([[3.5 / 1.5, 3.0, 0.0, 0.0]]))


def test_the_policy_gradient_of_one_token_is_an_unbiased_estimate_of_the_exact_reverse_kl_gradient():
    """Why the current token's log-ratio must not be in the advantage beside the single-step term:
    in expectation over the sampled token, its policy gradient already IS the reverse-KL gradient."""
    torch.manual_seed(0)
    student_logits = torch.randn(7, requires_grad=True)
    teacher_logp = torch.log_softmax(torch.randn(7), -1)
    student_logp = torch.log_softmax(student_logits, -1)
    exact = torch.autograd.grad((student_logp.exp() * (student_logp - teacher_logp)).sum(), student_logits)[0]
    expected_pg = torch.zeros(7)
    for token in range(7):  # E_{y ~ p_S}[ -A(y) grad log p_S(y) ], A(y) = log p_T(y) - log p_S(y)
        logp = torch.log_softmax(student_logits, -1)
        advantage = (teacher_logp[token] - logp[token]).detach()
        grad = torch.autograd.grad(-advantage * logp[token], student_logits)[0]
        expected_pg += logp[token].exp().detach() * grad
    torch.testing.assert_close(expected_pg, exact, atol=1e-6, rtol=1e-5)


def test_policy_gradient_pushes_up_tokens_the_teacher_prefers():
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    tokens = torch.tensor([[0, 1]])
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    adv = torch.tensor([[2.0, -1.0]])
    policy_gradient_loss(logp, adv, torch.ones(1, 2, dtype=torch.bool)).backward()
    # loss = -(A0 log p(y0) + A1 log p(y1)) / 2 and d log p_y / dz = onehot(y) - 1/3
    expected = torch.tensor([[[-2 / 3, 1 / 3, 1 / 3], [-1 / 6, 1 / 3, -1 / 6]]])
    torch.testing.assert_close(logits.grad, expected, atol=1e-6, rtol=1e-5)


def test_compiled_kernel_at_a_large_vocabulary_matches_autograd():
    """Vocabularies >= COMPILE_MIN_VOCAB go through torch.compile; same values and gradients."""
    from core_distill.losses import COMPILE_MIN_VOCAB

    hidden, w_s, _, h_t, w_t, targets = head_case(21, n=9, h=8, v=COMPILE_MIN_VOCAB + 3)
    weights = torch.full((9,), 0.25)
    ref_h, ref_w = hidden.clone().requires_grad_(), w_s.clone().requires_grad_()
    ref = autograd_reference(ref_h, ref_w, None, h_t, w_t, targets, 0.5, 1.3, 0, weights, 5.0)
    ref.backward()
    h, w = hidden.clone().requires_grad_(), w_s.clone().requires_grad_()
    terms = fused_distill_loss(h, Head(w), DenseTeacher(h_t, Head(w_t)), targets, beta=0.5, temperature=1.3,
                               token_weights=weights, normalizer=5.0, chunk_size=4)  # fmt: skip
    terms.loss.backward()
    assert terms.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(h.grad, ref_h.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w.grad, ref_w.grad, atol=1e-6, rtol=1e-4)


# --- the per-chunk kernel alone, and bf16 on CUDA -----------------------------------------------------
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("top_k", [0, 4])
def test_chunk_terms_equal_autograd_on_the_logits(beta, top_k):
    """`chunk_terms` (what every chunk of the fused loss runs) against autograd through one chunk's logits."""
    from core_distill.loss_kernels import LossConfig, chunk_terms

    hidden, w_s, _, h_t, w_t, targets = head_case(14)
    logits, t_logits = (hidden @ w_s.t()).requires_grad_(), h_t @ w_t.t()
    weights = torch.rand(hidden.shape[0], generator=torch.Generator().manual_seed(2))
    kd = topk_tail_jsd(logits, t_logits, top_k, beta, 1.5) if top_k else jsd_per_token(
        log_softmax_fp32(logits, 1.5), log_softmax_fp32(t_logits, 1.5), beta)  # fmt: skip
    logp_y = log_softmax_fp32(logits, 1.5).gather(-1, targets[:, None]).squeeze(-1)
    ref = 0.7 * kd.sum() - (weights * logp_y).sum()
    ref.backward()

    cfg = LossConfig(beta=beta, temperature=1.5, top_k=top_k, kd_weight=0.7)
    out = chunk_terms(logits.detach(), t_logits, targets, weights, cfg, want_grad=True)
    assert out.loss_sum.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    torch.testing.assert_close(out.grad_logits, logits.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.kd, kd.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.student_logp, logp_y.detach())
    t_logp = log_softmax_fp32(t_logits, 1.5)
    torch.testing.assert_close(out.teacher_logp, t_logp.gather(-1, targets[:, None]).squeeze(-1))
    s_logp = log_softmax_fp32(logits.detach(), 1.5)  # statistics: always over the full vocabulary here
    assert out.stats[0].item() == pytest.approx(jsd_per_token(s_logp, t_logp, 0.0).sum().item(), rel=1e-5)
    assert out.stats[2].item() == pytest.approx(jsd_per_token(s_logp, t_logp, 0.5).sum().item(), rel=1e-5)
    no_grad = chunk_terms(logits.detach(), t_logits, targets, weights, cfg, want_grad=False)
    assert no_grad.grad_logits is None and no_grad.loss_sum.item() == pytest.approx(out.loss_sum.item())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("top_k", [0, 16])
def test_bf16_fused_loss_on_cuda_matches_the_float32_cpu_loss(top_k):
    """bf16 weights and hidden states on the GPU (the compiled kernel at this vocabulary) against fp32 on CPU."""
    from core_distill.losses import COMPILE_MIN_VOCAB

    hidden, w_s, _, h_t, w_t, targets = head_case(15, n=96, h=64, v=COMPILE_MIN_VOCAB + 7)
    weights = torch.full((96,), 0.3)
    results = {}
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        # the same bf16-representable inputs on both sides: what differs is only where and how it is computed
        h = hidden.to(torch.bfloat16).to(device, dtype).requires_grad_()
        w = w_s.to(torch.bfloat16).to(device, dtype).requires_grad_()
        teacher = DenseTeacher(h_t.to(torch.bfloat16).to(device, dtype), Head(w_t.to(torch.bfloat16).to(device, dtype)))
        terms = fused_distill_loss(h, Head(w), teacher, targets.to(device), beta=0.5, temperature=1.2, top_k=top_k,
                                   token_weights=weights.to(device), normalizer=96.0, chunk_size=32)  # fmt: skip
        terms.loss.backward()
        results[device] = (terms.loss.item(), h.grad.float().cpu(), w.grad.float().cpu(), terms.stat_sums)
    (loss_ref, gh_ref, gw_ref, stats_ref), (loss, gh, gw, stats) = results["cpu"], results["cuda"]
    assert loss == pytest.approx(loss_ref, rel=2e-2)
    for ours, ref in ((gh, gh_ref), (gw, gw_ref)):  # bf16 logits: relative error of the whole gradient
        assert ((ours - ref).norm() / ref.norm()).item() < 3e-2
    for key in ("fkl", "rkl", "jsd"):
        assert stats[key] == pytest.approx(stats_ref[key], rel=3e-2)
