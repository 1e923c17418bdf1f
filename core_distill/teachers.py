"""Where the teacher's distribution comes from.

A teacher scores a batch laid out in its own frame (for OPSD its prompt differs from the
student's; the completion tokens are the same) and returns log-prob targets for the fused loss,
one row per completion token in the same order as the student's.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Protocol

import torch
from torch import Tensor, nn

from core_distill.data import SequenceBatch
from core_distill.losses import DenseTeacher, Head, SparseTeacher, auto_chunk_size, log_softmax_fp32, outside_logmass
from core_distill.models import (
    causal_lm,
    completion_hidden,
    cut_vocabulary,
    head_of,
    load_model,
    unwrap_parallel,
    vocab_size,
    vocab_width,
)
from core_distill.vocab import cut_line, shared_width


class Teacher(Protocol):
    def score(self, batch: SequenceBatch, *, cacheable: bool = False) -> DenseTeacher | SparseTeacher:
        """Targets for the completion tokens of `batch` (in the teacher's frame).

        `cacheable` marks batches whose completions come from the dataset (not sampled this step),
        which a teacher may answer from its log-prob cache.
        """

    @property
    def model(self) -> nn.Module:
        """A module that can `generate` (for seq_kd)."""


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
        """Score over ids 0 .. width-1 only (core_distill/vocab.py); the cache names the cut weights apart."""
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


def batch_rows(batch: SequenceBatch) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of each row, padding removed."""
    prompt_part = batch.input_ids[:, : batch.prompt_width]
    prompt_mask = batch.attention_mask[:, : batch.prompt_width].bool()
    return [
        (prompt_part[i][prompt_mask[i]].tolist(), batch.completion_ids[i][batch.completion_mask[i]].tolist())
        for i in range(batch.input_ids.shape[0])
    ]


def build_teacher(spec, student: nn.Module, *, dtype: torch.dtype, device: torch.device,
                  token_ids: int | None = None) -> Teacher:  # fmt: skip
    """The teacher a spec asks for. The student must already carry its LoRA adapters, if any.

    `token_ids` (the student tokenizer's ids): heads of different sizes are cut to them, on both
    models (`share_vocabulary`).
    """
    teacher = _uncached_teacher(spec, student, dtype=dtype, device=device)
    if token_ids is not None:
        share_vocabulary(student, teacher, token_ids)
    if spec.teacher_cache:
        from core_distill.teacher_cache import CachedTeacher, TeacherCache

        teacher = CachedTeacher(teacher, TeacherCache(), identity=teacher.identity, top_k=spec.loss_top_k,
                                temperature=spec.kd_temperature)  # fmt: skip
    return teacher


def share_vocabulary(student: nn.Module, teacher, token_ids: int) -> None:
    """Cut the student's and the teacher's heads to the tokenizer's `token_ids` ids when their sizes
    differ (core_distill/vocab.py); `vocabulary_note` says so in the run's header.

    A teacher that does not say its head's rows (a vLLM server checks the vocabulary itself) is left as is.
    """
    teacher_rows = getattr(teacher, "head_rows", None)
    width, problem = shared_width(vocab_size(student), teacher_rows, token_ids)
    if problem:
        raise ValueError(problem)
    if width is not None:
        cut_vocabulary(student, width)
        teacher.cut(width)


def vocabulary_note(student: nn.Module, teacher) -> str | None:
    """The header line of a cut made by `share_vocabulary` (None: both heads whole)."""
    teacher_rows = getattr(teacher, "head_rows", None)
    if teacher_rows is None or teacher_rows == vocab_size(student):
        return None
    return cut_line(vocab_size(student), teacher_rows, vocab_width(student))


def _uncached_teacher(spec, student: nn.Module, *, dtype: torch.dtype, device: torch.device):
    if spec.teacher_server_url and spec.teacher_server_api == "vllm":
        from core_distill.vllm_teacher import connect_vllm_teacher

        return connect_vllm_teacher(spec, student)
    if spec.teacher_server_url:
        from core_distill.remote_teacher import connect_teacher

        return connect_teacher(spec, student)
    dtype_name = str(dtype).removeprefix("torch.")
    if spec.attn_implementation != "auto":  # another kernel, other log-probs (in the last bits): its own cache entries
        dtype_name += f"+{spec.attn_implementation}"
    if spec.opsd == "dynamic":
        return LocalTeacher(student)  # the live student, scored without gradients
    if spec.opsd == "fixed":
        identity = _identity(spec.student, dtype_name)  # the initial student's weights, as on disk
        if spec.lora:
            return LocalTeacher(student, adapter_off=True, identity=identity)  # no second copy of the weights
        frozen = copy.deepcopy(causal_lm(student)).requires_grad_(False).eval()
        return _placed(frozen, spec.teacher_placement, device, identity)
    model = load_model(spec.teacher, dtype=dtype, trust_remote_code=spec.trust_remote_code,
                       attn_implementation=spec.attn_implementation)  # fmt: skip
    return _placed(model.requires_grad_(False).eval(), spec.teacher_placement, device, _identity(spec.teacher, dtype_name))


def _placed(model: nn.Module, placement: str, device: torch.device, identity: str) -> LocalTeacher:
    """A local teacher where `teacher_placement` says: a full copy here, FSDP2 shards, or CPU memory."""
    if placement == "offload":
        return LocalTeacher(model.to("cpu"), identity=identity, offload_to=device)
    model.to(device)
    if placement == "sharded":
        from core_distill.distributed import shard

        shard(model)  # its root unit (embeddings, norm, head) stays gathered after the first forward
    return LocalTeacher(model, identity=identity)


def _identity(name: str, dtype: str) -> str:
    from core_distill.teacher_cache import model_identity

    return model_identity(name, dtype)
