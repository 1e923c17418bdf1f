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

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

STAT_KEYS = ("fkl", "rkl", "jsd", "entropy_student", "entropy_teacher", "coverage")
COVERAGE_K = 8  # teacher top-K used for `topk/coverage` when the loss itself is full-vocabulary
_TAIL_FLOOR = 1e-12  # keeps log(tail mass) finite when K covers (almost) all the mass


# --- per-token divergences on log-probs (N, V) -> (N,) ------------------------------------------
def log_softmax_fp32(logits: Tensor, temperature: float = 1.0) -> Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def kl_div(p_logp: Tensor, q_logp: Tensor) -> Tensor:
    """KL(P || Q) per row, from log-probs. (N, V) -> (N,)"""
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def jsd_per_token(s_logp: Tensor, t_logp: Tensor, beta: float) -> Tensor:
    """Generalized JSD per row with the endpoints special-cased exactly as TRL does. (N, V) -> (N,)"""
    if beta == 0.0:
        return kl_div(t_logp, s_logp)
    if beta == 1.0:
        return kl_div(s_logp, t_logp)
    m_logp = torch.logaddexp(s_logp + math.log1p(-beta), t_logp + math.log(beta))
    return beta * kl_div(t_logp, m_logp) + (1.0 - beta) * kl_div(s_logp, m_logp)


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


# --- top-K + tail bucket -------------------------------------------------------------------------
def tail_logmass(top_logp: Tensor) -> Tensor:
    """log(1 - sum(exp(top_logp))) per row: the log mass outside the K kept tokens. (N, K) -> (N,)"""
    inside = torch.logsumexp(top_logp, dim=-1).clamp(max=-_TAIL_FLOOR)
    return torch.log(-torch.expm1(inside))  # expm1 stays accurate when the tail is tiny


def outside_logmass(logp: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Exact log mass outside `ids` from full log-probs, and the mask of the outside tokens.

    Summing the outside directly (rather than 1 - inside) keeps a tiny tail accurate. (N, V) -> (N,)
    """
    outside = torch.ones_like(logp, dtype=torch.bool).scatter_(-1, ids, False)
    tail = torch.logsumexp(logp.masked_fill(~outside, float("-inf")), dim=-1)
    return tail.clamp(min=math.log(_TAIL_FLOOR)), outside


def with_tail(top_logp: Tensor, tail: Tensor | None = None) -> Tensor:
    """Append the tail bucket: an exact coarse-graining of the distribution into K+1 outcomes. (N, K+1)"""
    return torch.cat([top_logp, (tail_logmass(top_logp) if tail is None else tail).unsqueeze(-1)], dim=-1)


def topk_tail_jsd(student_logits: Tensor, teacher_logits: Tensor, k: int, beta: float, temperature: float = 1.0) -> Tensor:
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


def sampled_token_logprobs(hidden: Tensor, head: Head, targets: Tensor, temperature: float = 1.0, chunk_size: int = 0) -> Tensor:
    """log p(target) per position, chunked, without gradients. hidden (N, H), targets (N,) -> (N,)"""
    chunk_size = chunk_size or auto_chunk_size(head.weight.shape[0])
    out = torch.empty(hidden.shape[0], device=hidden.device)
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk_size):
            logp = log_softmax_fp32(head.logits(hidden[start : start + chunk_size]), temperature)
            out[start : start + chunk_size] = logp.gather(-1, targets[start : start + chunk_size, None]).squeeze(-1)
    return out


# --- the fused, chunked training loss -----------------------------------------------------------
@dataclass
class Head:
    """An lm_head as used by a causal LM: logits = scale * (h @ W.T + b), then optional softcap."""

    weight: Tensor  # (V, H)
    bias: Tensor | None = None
    logit_scale: float = 1.0
    softcap: float | None = None

    def logits(self, hidden: Tensor) -> Tensor:
        """(n, H) -> (n, V) fp32"""
        z = F.linear(hidden.to(self.weight.dtype), self.weight, self.bias).float() * self.logit_scale
        if self.softcap:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z

    def grad_to_raw(self, logits: Tensor, grad: Tensor) -> Tensor:
        """Chain d loss / d logits back through the softcap and the scale."""
        if self.softcap:
            grad = grad * (1.0 - (logits / self.softcap) ** 2)
        return grad * self.logit_scale


@dataclass
class DenseTeacher:
    """Teacher log-probs computed a chunk at a time from its hidden states: (N, H_t) x head."""

    hidden: Tensor
    head: Head

    def logits(self, start: int, end: int) -> Tensor:
        with torch.no_grad():
            return self.head.logits(self.hidden[start:end])

    def logp(self, start: int, end: int, temperature: float) -> Tensor:
        return log_softmax_fp32(self.logits(start, end), temperature)


@dataclass
class SparseTeacher:
    """Teacher top-K ids and log-probs with the log tail mass, e.g. from a teacher server.

    Log-probs must already be at the loss temperature. Shapes: ids (N, K), logp (N, K), tail (N,),
    target_logp (N,): the log-prob of each position's actual completion token (MiniLLM needs it).
    """

    ids: Tensor
    logp: Tensor
    tail: Tensor | None = None
    target_logp: Tensor | None = None


@dataclass
class DistillTerms:
    """What one fused pass returns. `loss` carries gradients; the rest are detached."""

    loss: Tensor
    kd_per_token: Tensor  # (N,)
    student_logp: Tensor  # (N,) log p_S(target) at the loss temperature
    teacher_logp: Tensor  # (N,) log p_T(target) at the loss temperature
    stat_sums: dict[str, float] = field(default_factory=dict)


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
) -> DistillTerms:
    """Distillation loss over N completion positions, chunked, with analytic gradients.

    loss = (sum_t kd_weight * JSD_beta(S_t, T_t) - sum_t w_t * log p_S(y_t)) / normalizer

    Args:
        hidden: (N, H) student hidden states at the positions that predict each target.
        head: the student's lm_head.
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
    chunk_size = chunk_size or auto_chunk_size(head.weight.shape[0])
    weights = torch.zeros(n, device=hidden.device) if token_weights is None else token_weights.float()
    outputs = _ChunkOutputs.empty(n, hidden.device)
    loss = _FusedDistill.apply(
        hidden, head.weight, head.bias, head, teacher, targets, weights, outputs,
        beta, temperature, top_k, kd_weight, normalizer, chunk_size,
    )  # fmt: skip
    return DistillTerms(loss, outputs.kd, outputs.student_logp, outputs.teacher_logp, outputs.stat_sums)


@dataclass
class _ChunkOutputs:
    kd: Tensor
    student_logp: Tensor
    teacher_logp: Tensor
    stat_sums: dict[str, float]

    @classmethod
    def empty(cls, n: int, device: torch.device) -> _ChunkOutputs:
        zeros = lambda: torch.zeros(n, device=device)  # noqa: E731
        return cls(zeros(), zeros(), zeros(), dict.fromkeys(STAT_KEYS, 0.0))


class _FusedDistill(torch.autograd.Function):
    """Forward computes the loss and its gradient chunk by chunk; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, head, teacher, targets, token_weights, outputs,
                beta, temperature, top_k, kd_weight, normalizer, chunk_size):  # fmt: skip
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        want_grad = need_h or need_w or need_b  # False under torch.no_grad (evaluation)
        grad_hidden = torch.zeros_like(hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end]
            logits = head.logits(h)  # (n, V) fp32
            if isinstance(teacher, DenseTeacher) and top_k == 0:  # the hot path: one fused kernel
                loss_sum, g_logits = _dense_chunk(logits, teacher.logits(start, end), targets[start:end],
                                                  token_weights[start:end], outputs, start, beta=beta,
                                                  temperature=temperature, kd_weight=kd_weight, want_grad=want_grad)  # fmt: skip
                total += loss_sum
                if want_grad:
                    g_logits = head.grad_to_raw(logits, g_logits.div_(normalizer))
                    _accumulate_grads(g_logits, h, weight, start, end, grad_hidden, grad_weight, grad_bias)
                continue
            s_logp = F.log_softmax(logits / temperature, dim=-1)
            t_logp = _teacher_chunk(teacher, start, end, temperature)
            loss_sum, g_logp = _chunk_loss_and_grad(
                s_logp, t_logp, targets[start:end], token_weights[start:end], outputs, start,
                beta=beta, top_k=top_k, kd_weight=kd_weight, want_grad=want_grad,
            )  # fmt: skip
            total += loss_sum
            if not want_grad:
                continue
            # d/dz of log_softmax(z / T): (g - p * sum(g)) / T, then back through softcap/scale.
            g_logits = (g_logp - s_logp.exp() * g_logp.sum(-1, keepdim=True)) / (temperature * normalizer)
            g_logits = head.grad_to_raw(logits, g_logits)
            _accumulate_grads(g_logits, h, weight, start, end, grad_hidden, grad_weight, grad_bias)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        ctx.flags = (need_h, need_w, need_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total / normalizer

    @staticmethod
    def backward(ctx, grad_output):
        saved = list(ctx.saved_tensors)
        need_h, need_w, need_b = ctx.flags
        # in place: the saved gradients are used once, and the head's is as big as the head
        grad_hidden = saved.pop(0).mul_(grad_output) if need_h else None
        grad_weight = saved.pop(0).mul_(grad_output).to(ctx.dtypes[0]) if need_w else None
        grad_bias = saved.pop(0).mul_(grad_output).to(ctx.dtypes[1]) if need_b else None
        return (grad_hidden, grad_weight, grad_bias) + (None,) * 11


def _accumulate_grads(g_logits, h, weight, start, end, grad_hidden, grad_weight, grad_bias) -> None:
    """d loss / d logits (n, V) -> gradients of the hidden states, the head weight and bias."""
    if grad_hidden is not None:
        grad_hidden[start:end] = (g_logits.to(weight.dtype) @ weight).to(grad_hidden.dtype)
    if grad_weight is not None:
        grad_weight.addmm_(g_logits.t(), h.float())
    if grad_bias is not None:
        grad_bias += g_logits.sum(0)


def _dense_chunk(logits, teacher_logits, targets, token_weights, outputs, start, *, beta, temperature, kd_weight, want_grad):
    """Full-vocabulary chunk through the fused (compiled when possible) kernel.

    Returns the chunk's summed loss and d loss / d logits (n, V), or None without gradients.
    """
    kernel = _dense_kernel_compiled() if logits.shape[-1] >= COMPILE_MIN_VOCAB else _dense_kernel
    kd, g_logits, s_target, t_target, stats = kernel(
        logits, teacher_logits, targets, token_weights.float(), temperature, beta, kd_weight, want_grad
    )
    end = start + logits.shape[0]
    outputs.kd[start:end], outputs.student_logp[start:end], outputs.teacher_logp[start:end] = kd, s_target, t_target
    for key, value in zip(STAT_KEYS, stats.tolist(), strict=True):
        outputs.stat_sums[key] += value
    loss_sum = kd_weight * kd.sum() - (token_weights * s_target).sum()
    if g_logits is not None:  # the one-hot part of -w * d log p_S(y) / dz
        g_logits.scatter_add_(-1, targets.unsqueeze(-1), (-token_weights / temperature).unsqueeze(-1).to(g_logits.dtype))
    return loss_sum.detach(), g_logits


def _dense_kernel(logits, teacher_logits, targets, token_weights, temperature: float, beta: float, kd_weight: float, want_grad: bool):
    """Everything a full-vocabulary chunk needs from its (n, V) logits, in as few passes as possible.

    Returns kd (n,), d loss / d logits without the one-hot target part (n, V) or None,
    log p_S(y) (n,), log p_T(y) (n,) and the stat sums in STAT_KEYS order (6,).
    """
    s_logp = torch.log_softmax(logits / temperature, dim=-1)
    t_logp = torch.log_softmax(teacher_logits / temperature, dim=-1)
    s, t = s_logp.exp(), t_logp.exp()
    diff = s_logp - t_logp  # log(s / t)
    fkl = -(t * diff).sum(-1)  # KL(T || S)
    rkl = (s * diff).sum(-1)  # KL(S || T)
    if beta == 0.0:
        kd, g = fkl, -t
    elif beta == 1.0:
        kd, g = rkl, s * (diff + 1.0)
    else:
        m_logp = torch.logaddexp(s_logp + math.log1p(-beta), t_logp + math.log(beta))
        kd = beta * (t * (t_logp - m_logp)).sum(-1) + (1.0 - beta) * (s * (s_logp - m_logp)).sum(-1)
        g = (1.0 - beta) * s * (s_logp - m_logp)
    jsd = kd if beta == 0.5 else jsd_per_token(s_logp, t_logp, 0.5)
    coverage = s.gather(-1, t_logp.topk(COVERAGE_K, dim=-1).indices).sum()
    stats = torch.stack([fkl.sum(), rkl.sum(), jsd.sum(), -(s * s_logp).sum(), -(t * t_logp).sum(), coverage])
    g_logits = None
    if want_grad:  # chain through log_softmax(z / T): (g - s * sum(g)) / T, plus w * s from -w log p_S(y)
        g_logits = (kd_weight * (g - s * g.sum(-1, keepdim=True)) + token_weights.unsqueeze(-1) * s) / temperature
    s_target = s_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    t_target = t_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return kd, g_logits, s_target, t_target, stats


COMPILE_MIN_VOCAB = 16384  # below this the eager kernel is fast enough and compiling is not worth it
_COMPILED: dict[str, object] = {}


def _dense_kernel_compiled():
    """torch.compile fuses the kernel's ~20 elementwise passes into a few (about 5x faster on CPU
    at a 151,936-token vocabulary). Falls back to eager, once and for all, if compiling fails."""
    import os

    if os.environ.get("DISTILL_COMPILE", "1") == "0":
        return _dense_kernel
    if "kernel" not in _COMPILED:
        compiled = torch.compile(_dense_kernel, dynamic=True)

        def guarded(*args):
            if _COMPILED.get("failed"):
                return _dense_kernel(*args)
            try:
                return compiled(*args)
            except Exception as exc:  # no C++ compiler, unsupported backend, ...
                import warnings

                warnings.warn(f"torch.compile of the loss kernel failed, using eager mode: {exc}", stacklevel=2)
                _COMPILED["failed"] = True
                return _dense_kernel(*args)

        _COMPILED["kernel"] = guarded
    return _COMPILED["kernel"]


def _teacher_chunk(teacher: DenseTeacher | SparseTeacher | None, start: int, end: int, temperature: float):
    if teacher is None:
        return None
    if isinstance(teacher, DenseTeacher):
        return teacher.logp(start, end, temperature)
    tail = None if teacher.tail is None else teacher.tail[start:end].float()
    target = None if teacher.target_logp is None else teacher.target_logp[start:end].float()
    return SparseTeacher(teacher.ids[start:end], teacher.logp[start:end].float(), tail, target)


def _chunk_loss_and_grad(
    s_logp: Tensor,
    t_logp: Tensor | SparseTeacher | None,
    targets: Tensor,
    token_weights: Tensor,
    outputs: _ChunkOutputs,
    start: int,
    *,
    beta: float,
    top_k: int,
    kd_weight: float,
    want_grad: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Loss summed over the chunk's tokens and its gradient w.r.t. the student log-probs. (n, V)"""
    end = start + s_logp.shape[0]
    g_logp = None
    loss_sum = torch.zeros((), device=s_logp.device)
    s_target = s_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    outputs.student_logp[start:end] = s_target
    if t_logp is not None:
        with torch.no_grad():
            kd, g_kd = _divergence_and_grad(s_logp, t_logp, beta, top_k, want_grad and kd_weight != 0)
            _accumulate_stats(outputs.stat_sums, s_logp, t_logp, top_k)
            outputs.kd[start:end] = kd
            outputs.teacher_logp[start:end] = _teacher_target_logp(t_logp, targets)
        if kd_weight:
            loss_sum = loss_sum + kd_weight * kd.sum()
            if want_grad:
                g_logp = g_kd.mul_(kd_weight) if kd_weight != 1 else g_kd
    # sampled-token term: -w_t log p_S(y_t)
    loss_sum = loss_sum - (token_weights * s_target).sum()
    if want_grad:
        if g_logp is None:
            g_logp = torch.zeros_like(s_logp)
        g_logp.scatter_add_(-1, targets.unsqueeze(-1), -token_weights.unsqueeze(-1))
    return loss_sum.detach(), g_logp


def _divergence_and_grad(s_logp: Tensor, t_logp: Tensor | SparseTeacher, beta: float, top_k: int, want_grad: bool = True):
    """Per-token divergence (n,) and its gradient w.r.t. the student log-probs (n, V) or None."""
    if isinstance(t_logp, Tensor) and top_k == 0:
        return jsd_per_token(s_logp, t_logp, beta), (_jsd_grad(s_logp, t_logp, beta) if want_grad else None)
    if isinstance(t_logp, Tensor):
        t_top, ids = t_logp.topk(top_k, dim=-1)
        t_coarse = with_tail(t_top, outside_logmass(t_logp, ids)[0])
    else:
        ids, t_coarse = t_logp.ids, with_tail(t_logp.logp, t_logp.tail)
    s_tail, outside = outside_logmass(s_logp, ids)
    s_coarse = with_tail(s_logp.gather(-1, ids), s_tail)  # (n, K+1)
    if not want_grad:
        return jsd_per_token(s_coarse, t_coarse, beta), None
    g_coarse = _jsd_grad(s_coarse, t_coarse, beta)
    # d tail / d s_logp[j] = p_S(j) / tail mass for the tokens outside the top K
    g = torch.zeros_like(s_logp).scatter_(-1, ids, g_coarse[:, :-1])
    g += g_coarse[:, -1:] * (s_logp - s_tail.unsqueeze(-1)).exp() * outside
    return jsd_per_token(s_coarse, t_coarse, beta), g


def _jsd_grad(s_logp: Tensor, t_logp: Tensor, beta: float) -> Tensor:
    """d JSD_beta / d log p_S, treating each log-prob as free (the softmax is chained by the caller)."""
    s = s_logp.exp()
    if beta == 0.0:  # forward KL: -sum t log s
        return -t_logp.exp()
    if beta == 1.0:  # reverse KL: d/ds [s (log s - log t)] = log s - log t + 1
        return s * (s_logp - t_logp + 1.0)
    m_logp = torch.logaddexp(s_logp + math.log1p(-beta), t_logp + math.log(beta))
    return s * (1.0 - beta) * (s_logp - m_logp)


def _teacher_target_logp(t_logp: Tensor | SparseTeacher, targets: Tensor) -> Tensor:
    if isinstance(t_logp, Tensor):
        return t_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if t_logp.target_logp is not None:
        return t_logp.target_logp
    hit = t_logp.ids == targets.unsqueeze(-1)  # a target outside the top K gets the tail's log mass
    tail = tail_logmass(t_logp.logp) if t_logp.tail is None else t_logp.tail
    return torch.where(hit.any(-1), (t_logp.logp * hit).sum(-1), tail)


def _accumulate_stats(sums: dict[str, float], s_logp: Tensor, t_logp: Tensor | SparseTeacher, top_k: int) -> None:
    """Add the chunk's summed forward/reverse KL, JSD(0.5), entropies and top-K coverage."""
    if isinstance(t_logp, SparseTeacher):  # only the coarse distributions are known
        s_c = with_tail(s_logp.gather(-1, t_logp.ids), outside_logmass(s_logp, t_logp.ids)[0])
        t_c = with_tail(t_logp.logp, t_logp.tail)
        s_logp, t_logp_dense, coverage_ids = s_c, t_c, None
        sums["coverage"] += s_c[:, :-1].exp().sum().item()
    else:
        t_logp_dense = t_logp
        coverage_ids = t_logp.topk(top_k or COVERAGE_K, dim=-1).indices
    s, t = s_logp.exp(), t_logp_dense.exp()
    diff = s_logp - t_logp_dense
    sums["fkl"] += -(t * diff).sum().item()
    sums["rkl"] += (s * diff).sum().item()
    sums["jsd"] += jsd_per_token(s_logp, t_logp_dense, 0.5).sum().item()
    sums["entropy_student"] += -(s * s_logp).sum().item()
    sums["entropy_teacher"] += -(t * t_logp_dense).sum().item()
    if coverage_ids is not None:
        sums["coverage"] += s.gather(-1, coverage_ids).sum().item()

