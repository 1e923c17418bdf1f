"""Engine commands of the `distill` CLI: `run`, `eval`, `compare` and `toy ...`.

The service commands (`up`, `api`, `worker`, `token`) are added in app/cli.py, so that this
module imports no web, database or queue code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

engine_cli = typer.Typer(no_args_is_help=True, add_completion=False, help="Distill large language models into small ones.")


@engine_cli.callback()
def _root() -> None:
    """Distill large language models into small ones: run experiments locally or as a service."""


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    import yaml

    overrides: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"expected FIELD=VALUE, got {pair!r}", param_hint="--set")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@engine_cli.command("run")
def run_command(
    spec_file: Annotated[Path, typer.Argument(help="YAML spec (see examples/).", exists=True, dir_okay=False)],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (default: runs/<spec name>).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a field: --set lmbda=1.0 (repeatable).")] = [],  # noqa: B006
    resume: Annotated[bool, typer.Option(help="Continue from the run folder's last checkpoint if there is one.")] = True,
) -> None:
    """Run one distillation experiment locally, without the service."""
    from core_distill.spec import DistillSpec, SpecError

    try:
        spec = DistillSpec.from_yaml(spec_file).with_overrides(_parse_overrides(set_))
        spec.preflight()
    except SpecError as exc:
        for field, msg in exc.errors.items():
            typer.secho(f"error: {field}: {msg}", fg="red", err=True)
        raise typer.Exit(2) from None

    from core_distill.reporting import JsonlReporter
    from core_distill.train import run

    output_dir = output or Path("runs") / spec_file.stem
    reporter = JsonlReporter(output_dir)
    result = run(spec, output_dir=output_dir, reporter=reporter, resume=resume, progress=True)
    _print_summary(result, reporter)


def _print_summary(result, reporter) -> None:
    import json

    last: dict[str, float] = {}
    for line in reporter.metrics_path.read_text().splitlines():
        last.update(json.loads(line)["metrics"])
    shown = ["loss", "loss/kd", "div/fkl", "div/rkl", "eval/exact_match", "eval/div/fkl", "perf/tokens_per_sec"]
    typer.echo(f"finished at step {result.step}" + (" (stopped early)" if result.stopped else ""))
    for key in shown:
        if key in last:
            typer.echo(f"  {key:<22} {last[key]:.4f}")
    typer.echo(f"  metrics: {reporter.metrics_path}")
    if result.model_dir:
        typer.echo(f"  model:   {result.model_dir}")


@engine_cli.command("spec")
def spec_command(
    markdown: Annotated[bool, typer.Option("--markdown", help="The field reference as Markdown (docs/spec.md).")] = False,
) -> None:
    """Print a spec with every field at its default and its help text, ready to edit."""
    from core_distill.spec import spec_reference_markdown, spec_template_yaml

    typer.echo(spec_reference_markdown() if markdown else spec_template_yaml(), nl=False)


from core_distill.toy.cli import toy_cli  # noqa: E402

engine_cli.add_typer(toy_cli, name="toy", help="The built-in arithmetic task.")
