"""Where models and data named in a spec live.

A spec names models and data the way a user would: a hub id ("Qwen/Qwen2.5-0.5B"), a local path,
or "toy:NAME" for the built-in countdown task, whose models and data ship inside the package, so
every machine starts from the same weights.
"""

from __future__ import annotations

import os
from pathlib import Path

TOY_SCHEME = "toy:"
TOY_DATA_FILES = {"train": "train.jsonl", "eval": "eval.jsonl", "test": "test.jsonl"}


SHIPPED_TOY_DIR = Path(__file__).parent / "toy" / "assets"


def toy_dir() -> Path:
    """The built-in task's folder: $DISTILL_TOY_DIR (a rebuild, say), else the one shipped in the package."""
    folder = os.environ.get("DISTILL_TOY_DIR")
    return Path(folder).expanduser() if folder else SHIPPED_TOY_DIR


def default_toy_build_dir() -> Path:
    """Where `distill toy build` writes by default: $DISTILL_HOME/toy-build (else ~/.cache/distill/toy-build)."""
    home = os.environ.get("DISTILL_HOME")
    base = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "distill"
    return base.expanduser() / "toy-build"


def resolve_model_path(name: str) -> Path | str:
    """'toy:student' -> the toy folder's student; a path stays a path; a hub id stays a string."""
    if name.startswith(TOY_SCHEME):
        return toy_dir() / name[len(TOY_SCHEME) :]
    if looks_like_local_path(name):
        return Path(name).expanduser()
    return name


def resolve_data_path(name: str) -> Path:
    if name.startswith(TOY_SCHEME):
        split = name[len(TOY_SCHEME) :]
        return toy_dir() / "data" / TOY_DATA_FILES.get(split, split)
    return Path(name).expanduser()


def looks_like_local_path(name: str) -> bool:
    """True for toy names, existing paths and anything that cannot be a hub id ('org/name')."""
    if name.startswith(TOY_SCHEME) or Path(name).expanduser().exists():
        return True
    if name.startswith(("/", "./", "../", "~")) or "\\" in name:
        return True
    return name.count("/") > 1
