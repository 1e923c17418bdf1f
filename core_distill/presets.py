"""The example specs shipped with the package: the one place that says where they are.

They live in `core_distill/examples/` as package data, so a wheel install (no source tree) carries
them; the repository's `examples/` is a link to that folder, for the README's `distill run
examples/...` commands. The API's `/api/presets`, the dashboard's preset list and its sweep
examples all read them through this module.
"""

from __future__ import annotations

from pathlib import Path

# pip installs a wheel unpacked, so the package's data folder is a real directory beside this file
EXAMPLES_DIR = Path(__file__).resolve().with_name("examples")
SWEEPS_DIR = EXAMPLES_DIR / "sweeps"


def spec_presets(folder: Path | None = None) -> dict[str, Path]:
    """The example specs (examples/*.yaml, one per distillation method), by file stem, sorted.

    A missing folder is an error, not an empty list: it means a broken install (package data left out)."""
    folder = folder or EXAMPLES_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"the example specs' folder {folder} is missing: is the package installed with its data?")
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def sweep_examples(folder: Path | None = None) -> dict[str, Path]:
    """The example sweep files (examples/sweeps/*.yaml), by file stem, sorted."""
    return spec_presets(folder or SWEEPS_DIR)
