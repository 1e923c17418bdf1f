"""Specs on the miniature toy build (`toy_dir`): tiny models, a few steps, seconds to train."""

from __future__ import annotations

from typing import Any

from core_distill.spec import DistillSpec

TINY_FIELDS: dict[str, Any] = {
    "student": "toy:student", "teacher": "toy:teacher", "train_data": "toy:train", "eval_data": "toy:eval",
    "max_steps": 3, "batch_size": 2, "max_new_tokens": 8, "eval_examples": 4, "lmbda": 0.5,
}  # fmt: skip

# A run a worker trains to the end: no evaluation, a checkpoint every two steps, a learning rate that moves.
TRAINING_FIELDS: dict[str, Any] = {
    "max_steps": 4,
    "eval_data": "",
    "eval_every": 0,
    "save_every": 2,
    "learning_rate": 1e-3,
}


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """The JSON body's `spec` of a run that would train in seconds (what the API and the dashboard submit)."""
    return {**TINY_FIELDS, **overrides}


def training_spec(**overrides: Any) -> DistillSpec:
    """A parsed spec for the worker tests: a toy run of a few seconds, checkpointing, no evaluation."""
    return DistillSpec.parse(tiny_spec(**TRAINING_FIELDS) | overrides)
