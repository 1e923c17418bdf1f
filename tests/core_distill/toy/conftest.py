from __future__ import annotations

from pathlib import Path

import pytest

from core_distill.toy.build import build_toy


@pytest.fixture(scope="session")
def quick_toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One miniature toy build (the countdown task, tiny models) shared by the toy tests: (folder, manifest)."""
    folder = tmp_path_factory.mktemp("toy")
    return folder, build_toy(folder, seed=0, quick=True, progress=False)


@pytest.fixture
def toy_env(quick_toy, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The miniature build as the `toy:` folder."""
    monkeypatch.setenv("DISTILL_TOY_DIR", str(quick_toy[0]))
    return quick_toy[0]
