"""`--set FIELD=VALUE` on the command line: the pairs `distill run` and `distill toy build` override with.

A module of its own so that the toy commands (core_distill/toy/cli.py) need not import the CLI that mounts them.
"""

from __future__ import annotations

import typer


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """{field: value}, each value read as YAML (`lmbda=1.0` is a float, `lora=true` a bool)."""
    import yaml

    overrides: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"expected FIELD=VALUE, got {pair!r}", param_hint="--set")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides
