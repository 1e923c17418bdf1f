"""What a teacher is: something that scores a batch of completions.

A teacher scores a batch laid out in its own frame (for OPSD its prompt differs from the
student's; the completion tokens are the same) and returns log-prob targets for the fused loss,
one row per completion token in the same order as the student's. Every backend (local, remote,
vLLM server, cache) builds on this module; none of them imports the factory.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from core_distill.data.batches import SequenceBatch
from core_distill.losses import DenseTeacher, SparseTeacher


class Teacher(Protocol):
    def score(self, batch: SequenceBatch, *, cacheable: bool = False) -> DenseTeacher | SparseTeacher:
        """Targets for the completion tokens of `batch` (in the teacher's frame).

        `cacheable` marks batches whose completions come from the dataset (not sampled this step),
        which a teacher may answer from its log-prob cache.
        """

    @property
    def model(self) -> nn.Module:
        """A module that can `generate` (for seq_kd)."""


def batch_rows(batch: SequenceBatch) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of each row, padding removed."""
    prompt_part = batch.input_ids[:, : batch.prompt_width]
    prompt_mask = batch.attention_mask[:, : batch.prompt_width].bool()
    return [
        (prompt_part[i][prompt_mask[i]].tolist(), batch.completion_ids[i][batch.completion_mask[i]].tolist())
        for i in range(batch.input_ids.shape[0])
    ]
