from __future__ import annotations

import os

import pytest

from tests.tiny_models import TinyWorkspace, build_workspace

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> TinyWorkspace:
    """A tiny student, a bigger teacher (same char-level tokenizer) and addition data, on disk."""
    return build_workspace(tmp_path_factory.mktemp("tiny"))
