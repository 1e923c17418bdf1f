"""The machinery under `core_distill.losses`: log-space divergence math, the per-chunk kernel and the
autograd Function that runs it chunk by chunk.

Layers, each used by the next:
    pair_terms      divergence of one student/teacher log-prob pair (n, M): value, gradient w.r.t. the
                    student log-probs, statistics. The ONLY place the beta endpoints are special-cased.
    chunk_terms     one chunk of positions: student logits (n, V) + a teacher chunk -> loss, d loss /
                    d logits, per-token outputs and summed statistics. Full vocabulary and top-K + tail
                    are the same code; top-K coarse-grains the pair and maps the gradient back.
    FusedDistill    autograd Function: loops over chunks, turns each chunk's d loss / d logits into
                    gradients of the hidden states and the lm_head at once, so backward only scales.
Nothing here synchronises with the host: statistics accumulate in a (6,) tensor.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

STAT_KEYS = ("fkl", "rkl", "jsd", "entropy_student", "entropy_teacher", "coverage")
COVERAGE_K = 8  # teacher top-K used for `topk/coverage` when the loss itself is full-vocabulary
COMPILE_MIN_VOCAB = 16384  # below this the eager kernel is fast enough and compiling is not worth it
_TAIL_FLOOR = 1e-12  # keeps log(tail mass) finite when K covers (almost) all the mass


# --- log-space primitives ---------------------------------------------------------------------------
def log_softmax_fp32(logits: Tensor, temperature: float = 1.0) -> Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def kl_div(p_logp: Tensor, q_logp: Tensor) -> Tensor:
    """KL(P || Q) per row, from log-probs. (N, V) -> (N,)"""
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


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


# --- one log-prob pair ------------------------------------------------------------------------------
class PairTerms(NamedTuple):
    kd: Tensor  # (n,) generalized JSD_beta per row
    grad: Tensor | None  # (n, M) d kd / d s_logp, each log-prob treated as free (softmax chained later)
    stats: Tensor | None  # (5,) summed fkl, rkl, jsd(0.5), entropy S, entropy T


def pair_terms(
    s_logp: Tensor, t_logp: Tensor, beta: float, *, want_grad: bool = False, want_stats: bool = False
) -> PairTerms:
    """Generalized JSD of a student/teacher log-prob pair (n, M), with the endpoints exactly as TRL:
    beta = 0 is KL(T || S), beta = 1 is KL(S || T) (the mixture formula would give 0 there)."""
    s, t = s_logp.exp(), t_logp.exp()
    diff = s_logp - t_logp if beta in (0.0, 1.0) or want_stats else None  # log(s / t)
    fkl = -(t * diff).sum(-1) if beta == 0.0 or want_stats else None  # KL(T || S)
    rkl = (s * diff).sum(-1) if beta == 1.0 or want_stats else None  # KL(S || T)
    grad = None
    if beta == 0.0:
        kd = fkl
        if want_grad:  # d/d log s of -sum t log s
            grad = -t
    elif beta == 1.0:
        kd = rkl
        if want_grad:  # d/d log s of sum s (log s - log t)
            grad = s * (diff + 1.0)
    else:
        m_logp = torch.logaddexp(s_logp + math.log1p(-beta), t_logp + math.log(beta))
        s_term = s * (s_logp - m_logp)
        kd = beta * (t * (t_logp - m_logp)).sum(-1) + (1.0 - beta) * s_term.sum(-1)
        if want_grad:  # the terms through M cancel: only (1 - beta) s log(s / m) remains
            grad = (1.0 - beta) * s_term
    stats = None
    if want_stats:
        jsd = kd if beta == 0.5 else pair_terms(s_logp, t_logp, 0.5).kd
        stats = torch.stack([fkl.sum(), rkl.sum(), jsd.sum(), -(s * s_logp).sum(), -(t * t_logp).sum()])
    return PairTerms(kd, grad, stats)


def jsd_per_token(s_logp: Tensor, t_logp: Tensor, beta: float) -> Tensor:
    """Generalized JSD per row. (N, V) -> (N,)"""
    return pair_terms(s_logp, t_logp, beta).kd


# --- the lm_head and the teachers the kernel consumes ------------------------------------------------
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
        return grad if self.logit_scale == 1.0 else grad * self.logit_scale  # no (n, V) copy for the usual 1


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

    def chunk(self, start: int, end: int) -> SparseTeacher:
        """Rows start:end in fp32."""
        cut = lambda x: None if x is None else x[start:end].float()  # noqa: E731
        return SparseTeacher(self.ids[start:end], self.logp[start:end].float(), cut(self.tail), cut(self.target_logp))


# --- one chunk of positions -------------------------------------------------------------------------
@dataclass(frozen=True)
class LossConfig:
    """The scalars of one fused loss call (see `fused_distill_loss`)."""

    beta: float
    temperature: float = 1.0
    top_k: int = 0  # 0 = full vocabulary; K > 0 = teacher's top K plus the tail bucket
    kd_weight: float = 1.0
    normalizer: float = 1.0
    chunk_size: int = 64


class LossTerms(NamedTuple):
    """What the loss returns, for one chunk of positions (`chunk_terms`) or for a whole fused pass
    (`fused_distill_loss`). All detached except the fused pass's `loss`."""

    loss: Tensor  # () a chunk: kd_weight * sum kd - sum w * log p_S(y), not normalised; a fused pass: that
    #                 over all chunks / normalizer, carrying gradients to hidden / weight / bias
    kd: Tensor  # (n,) JSD_beta per position
    student_logp: Tensor  # (n,) log p_S(y) at the loss temperature
    teacher_logp: Tensor  # (n,) log p_T(y) at the loss temperature
    stats: Tensor  # (6,) summed statistics in STAT_KEYS order, on the loss's device
    grad_logits: Tensor | None = None  # (n, V) d loss / d logits: a chunk's, with want_grad; else None

    @property
    def loss_sum(self) -> Tensor:
        """A chunk's un-normalised loss (the name the kernel tests read)."""
        return self.loss

    @property
    def kd_per_token(self) -> Tensor:
        return self.kd

    @property
    def stat_sums(self) -> dict[str, float]:
        """The statistics as floats. Host sync (`.tolist()`): read it once per pass."""
        return dict(zip(STAT_KEYS, self.stats.tolist(), strict=True))


def chunk_terms(
    logits: Tensor,
    teacher: Tensor | SparseTeacher | None,
    targets: Tensor,
    token_weights: Tensor,
    cfg: LossConfig,
    want_grad: bool,
) -> LossTerms:
    """The loss of one chunk and its gradient w.r.t. the student logits.

    Args:
        logits: (n, V) fp32 student logits (after scale/softcap).
        teacher: (n, V) fp32 teacher logits, a SparseTeacher chunk (log-probs at the loss
            temperature), or None (no divergence term: kd, teacher_logp and stats are zero).
        targets: (n,) completion tokens; token_weights: (n,) weights of -log p_S(y).
    """
    s_logp = torch.log_softmax(logits / cfg.temperature, dim=-1)  # (n, V)
    s_target = s_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    kd_grad = want_grad and cfg.kd_weight != 0.0
    g_logp = None  # d loss / d s_logp
    if teacher is None:
        kd, t_target, stats = torch.zeros_like(s_target), torch.zeros_like(s_target), s_logp.new_zeros(6)
    else:
        kd, g_logp, t_target, stats = _divergence_terms(s_logp, teacher, targets, cfg, kd_grad)
    loss_sum = cfg.kd_weight * kd.sum() - (token_weights * s_target).sum()
    grad_logits = None
    if want_grad:
        # the one chain rule through log_softmax(z / T): d/dz = (g - p * sum(g)) / T for g = d loss / d s_logp.
        # -w log p_S(y) has g = -w onehot(y), so its part is w (p - onehot(y)) / T: added without a (n, V) onehot.
        p, w = s_logp.exp(), token_weights.unsqueeze(-1)
        g = p * w if g_logp is None else cfg.kd_weight * (g_logp - p * g_logp.sum(-1, keepdim=True)) + p * w
        grad_logits = (g / cfg.temperature).scatter_add_(-1, targets.unsqueeze(-1), -w / cfg.temperature)
    return LossTerms(loss_sum.detach(), kd, s_target, t_target, stats, grad_logits)


def _divergence_terms(
    s_logp: Tensor, teacher: Tensor | SparseTeacher, targets: Tensor, cfg: LossConfig, want_grad: bool
):
    """kd (n,), d kd / d s_logp (n, V) or None, log p_T(y) (n,) and the (6,) statistics.

    The statistics describe the finest pair known: the full vocabulary for a dense teacher (also
    under top-K), the K+1 coarse-grained outcomes for a sparse one.
    """
    if isinstance(teacher, SparseTeacher):
        ids, t_pair = teacher.ids, with_tail(teacher.logp, teacher.tail)
        t_target = _sparse_target_logp(teacher, targets)
        t_full = None
    else:
        t_full = torch.log_softmax(teacher / cfg.temperature, dim=-1)  # (n, V)
        t_target = t_full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        ids = t_full.topk(cfg.top_k or COVERAGE_K, dim=-1).indices  # coverage ids, and the kept ids under top-K
        t_pair = t_full if cfg.top_k == 0 else with_tail(t_full.gather(-1, ids), outside_logmass(t_full, ids)[0])
    coverage = s_logp.gather(-1, ids).exp().sum().unsqueeze(0)
    if t_full is not None and cfg.top_k == 0:  # full vocabulary: one pair for the loss and the stats
        kd, grad, stats = pair_terms(s_logp, t_full, cfg.beta, want_grad=want_grad, want_stats=True)
        return kd, grad, t_target, torch.cat([stats, coverage])
    s_tail, outside = outside_logmass(s_logp, ids)
    s_pair = with_tail(s_logp.gather(-1, ids), s_tail)  # (n, K+1)
    kd, g_pair, stats = pair_terms(s_pair, t_pair, cfg.beta, want_grad=want_grad, want_stats=t_full is None)
    if t_full is not None:
        stats = pair_terms(s_logp, t_full, 0.5, want_stats=True).stats
    grad = None
    if want_grad:  # back from K+1 outcomes: d tail / d s_logp[j] = p_S(j) / tail mass outside the K ids
        grad = torch.zeros_like(s_logp).scatter(-1, ids, g_pair[:, :-1])
        grad = grad + g_pair[:, -1:] * (s_logp - s_tail.unsqueeze(-1)).exp() * outside
    return kd, grad, t_target, torch.cat([stats, coverage])


def _sparse_target_logp(teacher: SparseTeacher, targets: Tensor) -> Tensor:
    """log p_T(y): given, or read from the K ids, or (a target outside them) the tail's log mass."""
    if teacher.target_logp is not None:
        return teacher.target_logp
    hit = teacher.ids == targets.unsqueeze(-1)
    tail = tail_logmass(teacher.logp) if teacher.tail is None else teacher.tail
    return torch.where(hit.any(-1), (teacher.logp * hit).sum(-1), tail)


_COMPILED: dict[str, object] = {}


def chunk_kernel(vocab_size: int, dense_full_vocab: bool):
    """`chunk_terms`, compiled for the full-vocabulary dense case at large vocabularies.

    torch.compile fuses its ~20 elementwise passes over (n, V) into a few (about 5x faster on CPU at a
    151,936-token vocabulary). Other cases run eager. A failed compile falls back to eager for good.
    """
    if not dense_full_vocab or vocab_size < COMPILE_MIN_VOCAB or os.environ.get("DISTILL_COMPILE", "1") == "0":
        return chunk_terms
    if "kernel" not in _COMPILED:
        compiled = torch.compile(chunk_terms, dynamic=True)

        def guarded(*args):
            if _COMPILED.get("failed"):
                return chunk_terms(*args)
            try:
                return compiled(*args)
            except Exception as exc:  # no C++ compiler, unsupported backend, ...
                warnings.warn(f"torch.compile of the loss kernel failed, using eager mode: {exc}", stacklevel=2)
                _COMPILED["failed"] = True
                return chunk_terms(*args)

        _COMPILED["kernel"] = guarded
    return _COMPILED["kernel"]


# --- the autograd Function --------------------------------------------------------------------------
@dataclass
class FusedInputs:
    """Everything of one fused call that is not a differentiable tensor."""

    head: Head
    teacher: DenseTeacher | SparseTeacher | None
    targets: Tensor  # (N,)
    token_weights: Tensor  # (N,) fp32
    config: LossConfig


def fused_apply(hidden: Tensor, inputs: FusedInputs) -> LossTerms:
    """Run the chunked loss over hidden (N, H) through `inputs.head`, with gradients where they are needed."""
    head = inputs.head
    return LossTerms(*FusedDistill.apply(hidden, head.weight, head.bias, inputs))


class FusedDistill(torch.autograd.Function):
    """Forward computes the loss and its gradient chunk by chunk; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, inputs: FusedInputs):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        want_grad = need_h or need_w or need_b  # False under torch.no_grad (evaluation)
        cfg, head, teacher = inputs.config, inputs.head, inputs.teacher
        n, device = hidden.shape[0], hidden.device
        grads = _GradBuffers(hidden, weight, bias, need_h, need_w, need_b)
        kd, s_target, t_target = (torch.zeros(n, device=device) for _ in range(3))
        stats = torch.zeros(len(STAT_KEYS), device=device)
        total = torch.zeros((), device=device)
        kernel = chunk_kernel(weight.shape[0], isinstance(teacher, DenseTeacher) and cfg.top_k == 0)
        for start in range(0, n, cfg.chunk_size):
            end = min(start + cfg.chunk_size, n)
            h = hidden[start:end]
            logits = head.logits(h)  # (n, V) fp32
            if isinstance(teacher, DenseTeacher):
                t_chunk = teacher.logits(start, end)
            else:
                t_chunk = None if teacher is None else teacher.chunk(start, end)
            out = kernel(logits, t_chunk, inputs.targets[start:end], inputs.token_weights[start:end], cfg, want_grad)
            kd[start:end], s_target[start:end], t_target[start:end] = out.kd, out.student_logp, out.teacher_logp
            stats += out.stats
            total += out.loss
            if want_grad:
                grads.add(
                    head.grad_to_raw(logits, out.grad_logits.div_(cfg.normalizer)), h, start, end
                )  # in place: (n, V)
        ctx.save_for_backward(*grads.saved())
        ctx.flags = (need_h, need_w, need_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(kd, s_target, t_target, stats)
        return total / cfg.normalizer, kd, s_target, t_target, stats

    @staticmethod
    def backward(ctx, grad_loss, *_unused):
        saved = list(ctx.saved_tensors)
        need_h, need_w, need_b = ctx.flags
        # in place: the saved gradients are used once, and the head's is as big as the head
        grad_hidden = saved.pop(0).mul_(grad_loss) if need_h else None
        grad_weight = saved.pop(0).mul_(grad_loss).to(ctx.dtypes[0]) if need_w else None
        grad_bias = saved.pop(0).mul_(grad_loss).to(ctx.dtypes[1]) if need_b else None
        return grad_hidden, grad_weight, grad_bias, None


class _GradBuffers:
    """Gradients of the hidden states, head weight and bias, filled chunk by chunk in the forward."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, need_h: bool, need_w: bool, need_b: bool):
        self.weight = weight
        self.hidden = torch.zeros_like(hidden) if need_h else None
        self.head = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        self.bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None

    def add(self, grad_logits: Tensor, h: Tensor, start: int, end: int) -> None:
        """d loss / d logits (n, V) of rows start:end -> the three gradients."""
        if self.hidden is not None:
            self.hidden[start:end] = (grad_logits.to(self.weight.dtype) @ self.weight).to(self.hidden.dtype)
        if self.head is not None:
            self.head.addmm_(grad_logits.t(), h.float())
        if self.bias is not None:
            self.bias += grad_logits.sum(0)

    def saved(self) -> list[Tensor]:
        return [g for g in (self.hidden, self.head, self.bias) if g is not None]
