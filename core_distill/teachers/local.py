"""A teacher in this process: a frozen model scored without gradients, dense or as top-K targets."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from core_distill.data.batches import SequenceBatch
from core_distill.losses import DenseTeacher, Head, SparseTeacher, auto_chunk_size, log_softmax_fp32, outside_logmass
from core_distill.models import completion_hidden, cut_vocabulary, head_of, unwrap_parallel, vocab_size


class LocalTeacher:
    """A frozen model in this process, in eval mode, never receiving gradients."""

    def __init__(self, model: nn.Module, adapter_off: bool = False, identity: str = "",
                 offload_to: torch.device | None = None):  # fmt: skip
        self._model = model
        self._adapter_off = adapter_off  # LoRA student as its own fixed teacher: base weights only
        self.identity = identity  # names the weights for the log-prob cache ("" = not cacheable)
        self._offload_to = offload_to  # teacher_placement offload: lives on CPU, visits this device to score

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def head_rows(self) -> int:
        """Rows of the teacher's lm_head, before any cut."""
        return vocab_size(self._model)

    def cut(self, width: int) -> None:
        """Score over ids 0 .. width-1 only (core_distill/data/vocab.py); the cache names the cut weights apart."""
        cut_vocabulary(self._model, width)
        if self.identity and width != self.head_rows:
            self.identity = f"{self.identity}-cut{width}"

    @torch.no_grad()
    def score(self, batch: SequenceBatch, *, cacheable: bool = False) -> DenseTeacher:
        context = unwrap_parallel(self._model).disable_adapter() if self._adapter_off else nullcontext()
        if self._offload_to is not None:
            self._model.to(self._offload_to)
        with context:
            hidden = completion_hidden(self._model, batch)
        head = head_of(self._model)
        head.weight = head.weight.detach()  # on the device: the loss's chunks still read it after the move back
        if self._offload_to is not None:
            self._model.to("cpu")
        return DenseTeacher(hidden.detach(), head)

    @torch.no_grad()
    def score_sparse(self, batch: SequenceBatch, *, top_k: int, temperature: float) -> SparseTeacher:
        """Top-K + tail targets, the form a teacher cache stores."""
        dense = self.score(batch)
        targets = batch.completion_ids[batch.completion_mask]
        return sparse_targets(dense.hidden, dense.head, targets, top_k=top_k, temperature=temperature)[0]


@torch.no_grad()
def sparse_targets(
    hidden: Tensor, head: Head, next_ids: Tensor, *, top_k: int, temperature: float,
    extra_ids: Tensor | None = None, chunk_size: int = 0,
) -> tuple[SparseTeacher, Tensor | None]:  # fmt: skip
    """The teacher's top-K (plus caller-chosen ids) with log-probs, tail mass and target log-probs.

    Args:
        hidden: (N, H) teacher hidden states at the positions that predict `next_ids`.
        head: the teacher's lm_head.
        next_ids: (N,) the token that actually follows each position.
        extra_ids: (N, M) ids to score as well (e.g. the student's own top tokens); they join the
            support, whose width stays K + M: overlaps are filled with the teacher's next-ranked ids.
    Returns:
        SparseTeacher with ids (N, K + M) sorted by teacher log-prob (the first K are its top K),
        logp (N, K + M), tail (N,) = log mass outside the ids, target_logp (N,); and the log-probs
        of `extra_ids` (N, M) or None. Everything at `temperature`.
    """
    n = hidden.shape[0]
    width = top_k + (0 if extra_ids is None else extra_ids.shape[1])
    chunk_size = chunk_size or auto_chunk_size(head.weight.shape[0])
    ids = torch.empty(n, width, dtype=torch.long, device=hidden.device)
    logp_out = torch.empty(n, width, device=hidden.device)
    tail = torch.empty(n, device=hidden.device)
    target_logp = torch.empty(n, device=hidden.device)
    extra_logp = None if extra_ids is None else torch.empty(extra_ids.shape, device=hidden.device)
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        logp = log_softmax_fp32(head.logits(hidden[start:end]), temperature)  # (n, V)
        if extra_ids is None:
            top, top_ids = logp.topk(width, dim=-1)
        else:  # force the extra ids in, then let the teacher's ranking fill the remaining slots
            chosen = extra_ids[start:end]
            ranking = logp.scatter(-1, chosen, float("inf"))
            top_ids = ranking.topk(width, dim=-1).indices
            top, order = logp.gather(-1, top_ids).sort(dim=-1, descending=True)
            top_ids = top_ids.gather(-1, order)
            extra_logp[start:end] = logp.gather(-1, chosen)
        ids[start:end], logp_out[start:end] = top_ids, top
        tail[start:end] = outside_logmass(logp, top_ids)[0]
        target_logp[start:end] = logp.gather(-1, next_ids[start:end, None]).squeeze(-1)
    return SparseTeacher(ids, logp_out, tail, target_logp), extra_logp
