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
from torch import nn

from core_distill.data import SequenceBatch
from core_distill.losses import DenseTeacher, SparseTeacher
from core_distill.models import causal_lm, completion_hidden, head_of, load_model, unwrap_parallel


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

    def __init__(self, model: nn.Module, adapter_off: bool = False):
        self._model = model
        self._adapter_off = adapter_off  # LoRA student as its own fixed teacher: base weights only

    @property
    def model(self) -> nn.Module:
        return self._model

    @torch.no_grad()
    def score(self, batch: SequenceBatch, *, cacheable: bool = False) -> DenseTeacher:
        context = unwrap_parallel(self._model).disable_adapter() if self._adapter_off else nullcontext()
        with context:
            hidden = completion_hidden(self._model, batch)
        head = head_of(self._model)
        head.weight = head.weight.detach()
        return DenseTeacher(hidden.detach(), head)


def build_teacher(spec, student: nn.Module, *, dtype: torch.dtype, device: torch.device) -> LocalTeacher:
    """The teacher a spec asks for. The student must already carry its LoRA adapters, if any."""
    if spec.teacher_server_url:
        raise NotImplementedError("teacher_server_url: remote teachers are not available in this version")
    if spec.opsd == "dynamic":
        return LocalTeacher(student)  # the live student, scored without gradients
    if spec.opsd == "fixed":
        if spec.lora:
            return LocalTeacher(student, adapter_off=True)  # no second copy of the weights
        frozen = copy.deepcopy(causal_lm(student)).requires_grad_(False).eval()
        return LocalTeacher(frozen)
    model = load_model(spec.teacher, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    return LocalTeacher(model.to(device).requires_grad_(False).eval())
