"""`distill toy build`: the built-in arithmetic task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

toy_cli = typer.Typer(no_args_is_help=True, add_completion=False, help="The built-in arithmetic task.")


@toy_cli.command("build")
def build_command(
    folder: Annotated[
        Path | None, typer.Argument(help="Where to write it (default: the toy folder, see `toy:` names).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data, the initialisations and the training order.")] = 0,
    quick: Annotated[
        bool, typer.Option(help="A miniature build in seconds (for tests; the models stay weak).")
    ] = False,
    teacher_steps: Annotated[
        int | None, typer.Option(help="Teacher training steps (default: the build's own).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the folder already holds a build.")] = False,
) -> None:
    """Generate the data, train a teacher from scratch on CPU and prepare a weak student."""
    from core_distill.paths import toy_dir
    from core_distill.toy.build import QUICK, ToyConfig, build_toy

    folder = folder or toy_dir()
    manifest_path = folder / "manifest.json"
    if manifest_path.exists() and not force:
        typer.echo(f"{folder} already holds a build ({manifest_path}); use --force to rebuild")
        return
    digits = (QUICK if quick else ToyConfig()).digits
    typer.echo(f"building the toy task into {folder} ({digits}-digit addition, seed {seed})")
    manifest = build_toy(folder, seed=seed, teacher_steps=teacher_steps, quick=quick)
    for name, info in manifest["models"].items():
        typer.echo(f"  {name}: {info['parameters']:,} parameters, test accuracy {info['test_accuracy']:.1%}")
    typer.echo(f"  built in {manifest['build_seconds']:.0f} s; use it in a spec as toy:student, toy:teacher, toy:train")
