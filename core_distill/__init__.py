"""The distillation engine: spec, losses, training loop, generation and teachers.

Imports no web, database or queue code. `run` is imported lazily so that reading a spec
(the API server does) does not import torch.
"""

from core_distill.reporting import JsonlReporter, NullReporter, Reporter
from core_distill.spec import DistillSpec, SpecError

__all__ = ["DistillSpec", "SpecError", "Reporter", "NullReporter", "JsonlReporter", "run"]


def __getattr__(name: str):
    if name == "run":
        from core_distill.train import run

        return run
    raise AttributeError(name)
