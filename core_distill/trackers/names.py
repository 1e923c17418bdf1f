"""The trackers `report_to` may name, TRL's forms of the field, and what each needs installed.

Apart from the adapters (core_distill/trackers/__init__.py), so that the spec can check the field without
importing what reports to them.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

TrackerName = Literal["mlflow", "wandb", "tensorboard", "trackio"]
TRACKERS: tuple[str, ...] = ("mlflow", "wandb", "tensorboard", "trackio")
# the module each tracker needs (tensorboard: its event writer, through torch.utils.tensorboard)
MODULES = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard", "trackio": "trackio"}
INSTALL_HINT = "pip install 'distill-service[trackers]'"


def normalize_report_to(value: Any) -> list[str]:
    """TRL's forms of `report_to` as a list: None, "none" or [] = none; "mlflow" or "mlflow,wandb" = those.

    Raises:
        ValueError: naming the unknown tracker and the known ones.
    """
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ValueError("must be a tracker name or a list of them")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"tracker names are strings, not {type(item).__name__}")
        name = item.strip().lower()
        if name in ("", "none"):
            continue
        if name not in TRACKERS:
            raise ValueError(f"unknown tracker {item!r}; choose from {', '.join(TRACKERS)} or 'none'")
        if name not in names:
            names.append(name)
    return names


def missing_packages(names: list[str]) -> dict[str, str]:
    """{tracker: what to install} for each named tracker whose package is not importable here."""
    return {
        name: f"needs the {MODULES[name]!r} package, which is not installed: {INSTALL_HINT}"
        for name in names
        if importlib.util.find_spec(MODULES[name]) is None
    }
