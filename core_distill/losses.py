"""Distillation losses: generalized JSD, top-K with a tail bucket, sampled-token terms.

Conventions (GKD paper, TRL, ms-swift): S = student, T = teacher, log-probs over the vocabulary.
    beta = 0   forward KL(T || S)
    beta = 1   reverse KL(S || T)
    else       beta * KL(T || M) + (1 - beta) * KL(S || M),  M = beta * T + (1 - beta) * S
All math runs in fp32 and in log space. Changing what these functions return changes the
objective: the tests pin them against TRL and against a naive probability-space reference.

The training path never holds (B, L, V) logits: `fused_distill_loss` takes the student's hidden
states at completion positions only, projects them through the lm_head a chunk at a time and
computes the gradient of each chunk analytically in the forward pass (so backward needs no
logits and no recomputation). Peak logits memory is a few (chunk, V) buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core_distill.loss_kernels import (  # re-exported: the engine and the tests import them from here
    COMPILE_MIN_VOCAB,
    COVERAGE_K,
    STAT_KEYS,
    DenseTeacher,
    FusedInputs,
    Head,
    LossConfig,
    LossTerms,
    SparseTeacher,
    fused_apply,
    jsd_per_token,
    kl_div,
    log_softmax_fp32,
    outside_logmass,
    tail_logmass,
    with_tail,
)

__all__ = [
    "COMPILE_MIN_VOCAB", "COVERAGE_K", "STAT_KEYS", "DenseTeacher", "Head", "LossTerms", "SparseTeacher",
    "auto_chunk_size", "fused_distill_loss", "generalized_jsd", "jsd_per_token", "kl_div", "log_softmax_fp32",
    "outside_logmass", "policy_gradient_loss", "reverse_kl_advantages", "sampled_token_logprobs", "tail_logmass",
    "topk_tail_jsd", "with_tail",
]  # fmt: skip


# --- losses on full logits (reference path, evaluation, tests) ---------------------------------
def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> Tensor:
    """Mean generalized JSD over unmasked tokens.

    Args:
        student_logits: (B, T, V) or (N, V).
        teacher_logits: same shape.
        mask: (B, T) or (N,), True where a token counts; None = all tokens.
        beta: 0 = forward KL(teacher || student), 1 = reverse KL(student || teacher).
        temperature: both logit tensors are divided by it before the softmax.

    Returns:
        A scalar: the divergence summed over the vocabulary, averaged over counted tokens
        (TRL's `generalized_jsd_loss(..., labels, reduction="batchmean")`).
    """
    per_token = jsd_per_token(
        log_softmax_fp32(student_logits, temperature), log_softmax_fp32(teacher_logits, temperature), beta
    )
    if mask is None:
        return per_token.mean()
    mask = mask.bool()
    return per_token[mask].sum() / mask.sum().clamp_min(1)


def topk_tail_jsd(
    student_logits: Tensor, teacher_logits: Tensor, k: int, beta: float, temperature: float = 1.0
) -> Tensor:
    """Per-token generalized JSD on the teacher's top-K plus one tail bucket. (N, V) -> (N,)

    Both sides keep their true probabilities on the K ids (no renormalisation) and put the rest of
    their mass in the tail, so K = V gives the exact full-vocabulary loss and mass the student
    moves outside the teacher's top K is still penalised.
    """
    s_logp = log_softmax_fp32(student_logits, temperature)
    t_logp = log_softmax_fp32(teacher_logits, temperature)
    t_top, ids = t_logp.topk(k, dim=-1)
    s_coarse = with_tail(s_logp.gather(-1, ids), outside_logmass(s_logp, ids)[0])
    return jsd_per_token(s_coarse, with_tail(t_top, outside_logmass(t_logp, ids)[0]), beta)


# --- sampled-token objectives (MiniLLM / on-policy distillation) --------------------------------
def reverse_kl_advantages(
    teacher_logp: Tensor,
    student_logp: Tensor,
    mask: Tensor,
    gamma: float = 0.0,
    length_normalization: bool = True,
    from_next_token: bool = False,
) -> Tensor:
    """Per-token advantage of the sampled-token reverse-KL policy gradient, detached.

    r_t = log p_T(y_t) - log p_S(y_t). The advantage of token t is the discounted reward-to-go
    sum_{i>=t} gamma^(i-t) r_i (gamma = 0: r_t alone), optionally divided by the sum of its
    discounts over real tokens. With `from_next_token` the sum starts at i = t + 1 (gamma = 0:
    nothing): MiniLLM's long-term term, used beside the single-step decomposition, which already
    takes r_t's expectation exactly (counting r_t here too would follow the reverse-KL gradient twice).
    Padding gets advantage 0 and contributes nothing downstream.

    Args:
        teacher_logp, student_logp: (B, T) log-probs of the sampled tokens.
        mask: (B, T) True on completion tokens.
    Returns:
        (B, T) advantages.
    """
    mask = mask.to(teacher_logp.dtype)
    rewards = (teacher_logp - student_logp).detach() * mask
    future_mask, first_discount = mask, 1.0
    if from_next_token:  # shift left: token t sees gamma * (r_{t+1} + gamma r_{t+2} + ...); the last sees nothing
        rewards = torch.cat([rewards[:, 1:], torch.zeros_like(rewards[:, :1])], dim=1)
        future_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
        first_discount = gamma
    if gamma == 0.0:
        return rewards * mask * first_discount
    returns = torch.zeros_like(rewards)
    weights = torch.zeros_like(rewards)
    running_return = torch.zeros_like(rewards[:, 0])
    running_weight = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):  # right to left: reward-to-go
        running_return = rewards[:, t] + gamma * running_return
        running_weight = future_mask[:, t] + gamma * running_weight
        returns[:, t], weights[:, t] = running_return, running_weight
    returns, weights = returns * first_discount, weights * first_discount
    if length_normalization:
        returns = returns / weights.clamp_min(1e-4)
    return returns * mask


def policy_gradient_loss(student_logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE with a detached per-token advantage: -mean(A_t * log p_S(y_t)). Inputs (B, T)."""
    mask = mask.to(student_logp.dtype)
    return -(advantages.detach() * student_logp * mask).sum() / mask.sum().clamp_min(1)


def sampled_token_logprobs(
    hidden: Tensor, head: Head, targets: Tensor, temperature: float = 1.0, chunk_size: int = 0
) -> Tensor:
    """log p(target) per position, chunked, without gradients. hidden (N, H), targets (N,) -> (N,)"""
    chunk_size = chunk_size or auto_chunk_size(head.weight.shape[0])
    out = torch.empty(hidden.shape[0], device=hidden.device)
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk_size):
            logp = log_softmax_fp32(head.logits(hidden[start : start + chunk_size]), temperature)
            out[start : start + chunk_size] = logp.gather(-1, targets[start : start + chunk_size, None]).squeeze(-1)
    return out


# --- the fused, chunked training loss -----------------------------------------------------------
def auto_chunk_size(vocab_size: int, budget: int = 1 << 23) -> int:
    """Positions per chunk so that one (chunk, V) fp32 buffer holds about `budget` values."""
    return max(8, min(1024, budget // max(vocab_size, 1)))


def fused_distill_loss(
    hidden: Tensor,
    head: Head,
    teacher: DenseTeacher | SparseTeacher | None,
    targets: Tensor,
    *,
    beta: float,
    temperature: float = 1.0,
    top_k: int = 0,
    kd_weight: float = 1.0,
    token_weights: Tensor | None = None,
    normalizer: float = 1.0,
    chunk_size: int = 0,
) -> LossTerms:
    """Distillation loss over N completion positions, chunked, with analytic gradients.

    loss = (sum_t kd_weight * JSD_beta(S_t, T_t) - sum_t w_t * log p_S(y_t)) / normalizer

    Args:
        hidden: (N, H) student hidden states at the positions that predict each target.
        head: the student's lm_head (its weight must be the full (V, H) matrix: under FSDP, gathered).
        teacher: dense or sparse teacher log-probs for the same N positions; None when kd_weight = 0.
        targets: (N,) the completion token at each position.
        beta: generalized JSD interpolation (see module docstring).
        temperature: divides student and teacher logits inside the loss.
        top_k: 0 = full vocabulary; K > 0 = teacher's top K plus the tail bucket.
        kd_weight: weight of the divergence term (0 turns it off, e.g. pure SFT).
        token_weights: (N,) weights w_t of the sampled-token term (SFT: alpha; policy gradient: A_t).
        normalizer: divides the summed loss (the step's completion-token count, for
            gradient-accumulation-correct averaging).
        chunk_size: positions per chunk (0 = auto from the vocabulary size).
    """
    n = hidden.shape[0]
    config = LossConfig(
        beta, temperature, top_k, kd_weight, normalizer, chunk_size or auto_chunk_size(head.weight.shape[0])
    )
    weights = torch.zeros(n, device=hidden.device) if token_weights is None else token_weights.float()
    return fused_apply(hidden, FusedInputs(head, teacher, targets, weights, config))
