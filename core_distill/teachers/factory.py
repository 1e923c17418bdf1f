"""The teacher a spec asks for: a local model, a `distill teacher serve` server or a vLLM server,
behind the log-prob cache when the spec turns it on; and the vocabulary both heads share.

This module imports the backends; no backend imports it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from core_distill.data.vocab import cut_line, shared_width
from core_distill.models import causal_lm, cut_vocabulary, load_model, vocab_size, vocab_width
from core_distill.teachers.base import Teacher
from core_distill.teachers.cache import CachedTeacher, TeacherCache, model_identity
from core_distill.teachers.local import LocalTeacher


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
        teacher = CachedTeacher(teacher, TeacherCache(), identity=teacher.identity, top_k=spec.loss_top_k,
                                temperature=spec.kd_temperature)  # fmt: skip
    return teacher


def share_vocabulary(student: nn.Module, teacher, token_ids: int) -> None:
    """Cut the student's and the teacher's heads to the tokenizer's `token_ids` ids when their sizes
    differ (core_distill/data/vocab.py); `vocabulary_note` says so in the run's header.

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
        from core_distill.teachers.vllm import connect_vllm_teacher

        return connect_vllm_teacher(spec, student)
    if spec.teacher_server_url:
        from core_distill.teachers.remote import connect_teacher

        return connect_teacher(spec, student)
    dtype_name = str(dtype).removeprefix("torch.")
    if spec.attn_implementation != "auto":  # another kernel, other log-probs (in the last bits): its own cache entries
        dtype_name += f"+{spec.attn_implementation}"
    if spec.opsd == "dynamic":
        return LocalTeacher(student)  # the live student, scored without gradients
    if spec.opsd == "fixed":
        identity = model_identity(spec.student, dtype_name)  # the initial student's weights, as on disk
        if spec.lora:
            return LocalTeacher(student, adapter_off=True, identity=identity)  # no second copy of the weights
        frozen = copy.deepcopy(causal_lm(student)).requires_grad_(False).eval()
        return _placed(frozen, spec.teacher_placement, device, identity)
    model = load_model(spec.teacher, dtype=dtype, trust_remote_code=spec.trust_remote_code,
                       attn_implementation=spec.attn_implementation)  # fmt: skip
    return _placed(model.requires_grad_(False).eval(), spec.teacher_placement, device, model_identity(spec.teacher, dtype_name))


def _placed(model: nn.Module, placement: str, device: torch.device, identity: str) -> LocalTeacher:
    """A local teacher where `teacher_placement` says: a full copy here, FSDP2 shards, or CPU memory."""
    if placement == "offload":
        return LocalTeacher(model.to("cpu"), identity=identity, offload_to=device)
    model.to(device)
    if placement == "sharded":
        from core_distill.distributed import shard

        shard(model)  # its root unit (embeddings, norm, head) stays gathered after the first forward
    return LocalTeacher(model, identity=identity)

