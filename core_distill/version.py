"""The installed distribution's version: `distill --version` and the model card's "with distill-service X"."""

from __future__ import annotations

PACKAGE = "distill-service"  # the distribution's name in pyproject.toml


def package_version() -> str:
    """The installed distribution's version (its metadata, so a wheel and an editable install agree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown (run from a source tree that is not installed)"
