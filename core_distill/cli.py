"""Engine commands of the `distill` CLI: `run`, `eval`, `push`, `compare` and `toy ...`.

The service commands (`up`, `api`, `worker`, `token`) are added in app/cli.py, so that this
module imports no web, database or queue code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from core_distill.overrides import parse_overrides
from core_distill.version import package_version

engine_cli = typer.Typer(no_args_is_help=True, add_completion=False, help="Distill large language models into small ones.")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"distill {package_version()}")
        raise typer.Exit()


@engine_cli.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Distill large language models into small ones: run experiments locally or as a service."""


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
        spec = DistillSpec.from_yaml(spec_file).with_overrides(parse_overrides(set_))
        notes = spec.preflight()
    except SpecError as exc:
        for field, msg in exc.errors.items():
            typer.secho(f"error: {field}: {msg}", fg="red", err=True)
        raise typer.Exit(2) from None
    if "RANK" not in os.environ:  # said once: not again by each process torchrun starts
        for field, msg in notes.items():
            typer.secho(f"note: {field}: {msg}", fg="yellow", err=True)

    from core_distill import distributed
    from core_distill.reporting import JsonlReporter, NullReporter
    from core_distill.train import run

    output_dir = output or Path("runs") / spec_file.stem
    if spec.gpus > 1 and not distributed.inside_launcher():
        raise typer.Exit(_relaunch(spec.gpus, spec_file, output_dir, set_, resume))
    reporter = JsonlReporter(output_dir) if distributed.is_main() else NullReporter()
    if distributed.is_main():  # and the spec's report_to trackers (core_distill/trackers), from rank 0 only
        from core_distill.trackers import run_with_trackers

        result = run_with_trackers(spec, output_dir, reporter, lambda r: run(spec, output_dir=output_dir, reporter=r,
                                                                              resume=resume, progress=True))  # fmt: skip
    else:
        result = run(spec, output_dir=output_dir, reporter=reporter, resume=resume, progress=True)
    distributed.shutdown()
    if distributed.is_main():
        from core_distill.hub import push_run_model

        hub_url = push_run_model(spec, result.model_dir, reporter, printed=True)  # warns and goes on if it fails
        _print_summary(result, reporter, hub_url)
    if distributed.inside_launcher():
        distributed.exit_rank(0)


def _relaunch(gpus: int, spec_file: Path, output_dir: Path, overrides: list[str], resume: bool) -> int:
    """`gpus: N > 1`: run this same command as N processes under torchrun; its exit code is ours."""
    import subprocess

    from core_distill.distributed import launcher_argv

    args = ["run", str(spec_file), "--output", str(output_dir), "--resume" if resume else "--no-resume"]
    for pair in overrides:
        args += ["--set", pair]
    typer.echo(f"launching {gpus} processes (torchrun)")
    return subprocess.run(launcher_argv(gpus, "core_distill.cli", args), check=False).returncode


def _print_summary(result, reporter, hub_url: str | None = None) -> None:
    import json

    last: dict[str, float] = {}
    for line in reporter.metrics_path.read_text().splitlines():
        last.update(json.loads(line)["metrics"])
    from core_distill.metric_keys import PRINTED as shown
    typer.echo(f"finished at step {result.step}" + (" (stopped early)" if result.stopped else ""))
    for key in shown:
        if key in last:
            typer.echo(f"  {key:<22} {last[key]:.4f}")
    typer.echo(f"  metrics: {reporter.metrics_path}")
    if result.model_dir:
        typer.echo(f"  model:   {result.model_dir}")
    if hub_url:
        typer.echo(f"  hub:     {hub_url}")


@engine_cli.command("spec")
def spec_command(
    markdown: Annotated[bool, typer.Option("--markdown", help="The field reference as Markdown (docs/spec.md).")] = False,
) -> None:
    """Print a spec with every field at its default and its help text, ready to edit."""
    from core_distill.spec import spec_reference_markdown, spec_template_yaml

    typer.echo(spec_reference_markdown() if markdown else spec_template_yaml(), nl=False)


@engine_cli.command("eval")
def eval_command(
    model: Annotated[str, typer.Argument(help="A model folder, toy:NAME, a hub id, or a run folder (its final/ model).")],
    data: Annotated[str, typer.Option(help="Data to score: test / eval / train (the toy splits) or a file.")] = "test",
    teacher: Annotated[
        str, typer.Option(help="Teacher for the divergences ('' = none).")
    ] = "toy:teacher",
    limit: Annotated[int, typer.Option(help="Score only the first N rows (0 = all).")] = 0,
    metric: Annotated[
        str,
        typer.Option(help="auto (countdown on the toy splits, else final_answer), countdown (the toy task's rules), "
                          "final_answer (after '####') or exact_match (whole completion)."),
    ] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="Longest completion.", min=1)] = 256,
    temperature: Annotated[
        float | None,
        typer.Option(help="Temperature of the sampled completions; 0 = greedy only (default: 1 with the countdown "
                          "metric, else 0).", min=0.0),
    ] = None,
    samples_per_prompt: Annotated[
        int, typer.Option(help="Sampled completions per row and seed (when --temperature > 0).", min=1)
    ] = 4,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds of the sampled completions, one draw each.")] = "0",
    show: Annotated[int, typer.Option("--show", "--samples", help="Completions to print (one per row, first seed).",
                                      min=0)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, with per-prompt results, instead of the table.")] = False,
) -> None:
    """Task accuracy of one model's greedy completions (one per prompt) and, at --temperature > 0, of
    --samples-per-prompt completions per row sampled from each of --seeds; the prompt-clustered standard
    error of each, distinct correct completions per prompt and the task's diversity measure
    (countdown: log-likelihood of correct walks under the task's generating process); the divergence
    to --teacher on the reference completions; a few completions. The headline 'accuracy' (also in
    --json) is the sampled one at --temperature > 0, else the greedy one."""
    import json

    from core_distill.model_eval import EvalError, evaluate_model, report_text

    try:
        seed_list = [int(part) for part in seeds.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {seeds!r}", param_hint="--seeds") from None
    try:
        report = evaluate_model(model, data, teacher=teacher or None, limit=limit, metric=metric,
                                max_new_tokens=max_new_tokens, n_samples=show, temperature=temperature,
                                samples_per_prompt=samples_per_prompt, seeds=seed_list, progress=True)  # fmt: skip
    except (EvalError, OSError) as exc:  # a model that cannot load (core_distill.models): one line, no traceback
        typer.secho(f"error: {_first_line(exc)}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else report_text(report))


@engine_cli.command("push")
def push_command(
    run: Annotated[Path, typer.Argument(help="A run folder (its final/ model) or a model folder.")],
    repo: Annotated[str, typer.Option("--repo", help="Hub repository: ORG/NAME, or NAME in the token's namespace.")],
    public: Annotated[bool, typer.Option("--public", help="Create the repository public (default: private).")] = False,
) -> None:
    """Send a finished run's model to the Hugging Face hub: final/ with its model card and spec.yaml, into a
    repository created private unless --public. The token is HF_TOKEN or the one `hf auth login` stored."""
    from core_distill.hub import HubError, push_folder

    try:
        folder = _model_folder(run)
        url = push_folder(folder, repo, private=not public)
    except (HubError, FileNotFoundError) as exc:
        typer.secho(f"error: {_first_line(exc)}", fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"pushed {folder} to {url}" + ("" if public else " (private)"))


def _model_folder(run: Path) -> Path:
    """The folder to upload: RUN/final, or RUN itself when it is a model folder; a card is written first when
    the folder has none (a run from before cards: from the run folder's spec.yaml and metrics.jsonl).

    Raises:
        FileNotFoundError: no model there, or no card and nothing to write one from.
    """
    from core_distill.model_card import CARD_FILE, card_from_run_folder

    folder = run / "final" if (run / "final").is_dir() else run
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no finished model at {run}: expected {run / 'final'} (a run folder) or a model "
                                "folder with config.json")  # fmt: skip
    if not (folder / CARD_FILE).is_file():
        card_from_run_folder(folder.parent, folder)
    return folder


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# The `distill` entry point (app/cli.py) sets this: (server, token, workers=, echo=, reuse=) -> a runner that
# trains on a running service, or None for the local pool. The engine itself imports no service code.
compare_runner_hook: Callable[..., Any] | None = None


@engine_cli.command("compare")
def compare_command(
    spec_files: Annotated[list[Path], typer.Argument(help="Spec files, one per method (examples/*.yaml).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps of every run (overrides max_steps).", min=1)] = 200,
    seeds: Annotated[
        int, typer.Option(help="Fresh training seeds of each chosen setting, scored on test: S+1 .. S+N.", min=1)
    ] = 5,
    selection_seed: Annotated[int, typer.Option(help="Training seed S of the sweep (selection on eval).", min=0)] = 0,
    learning_rates: Annotated[
        str, typer.Option(help="Comma-separated learning rates every method is swept over ('' = each spec's own).")
    ] = "1e-4,3e-4,1e-3,3e-3",
    temperatures: Annotated[
        str, typer.Option(help="Sampling temperatures for methods that sample, not MiniLLM ('' = the spec's own).")
    ] = "0.3,1.0",
    betas: Annotated[
        str, typer.Option(help="beta values for generalized-JSD methods, 0 < beta < 1 in the spec ('' = its own).")
    ] = "0.1,0.5,0.9",
    extend_edges: Annotated[
        bool, typer.Option(help="A chosen learning rate at a grid edge: sweep one more step past it (once).")
    ] = False,
    search: Annotated[
        str, typer.Option(help="'staged': every rate at the spec's own T and beta, then T x beta at the chosen "
                               "rate; 'grid': every combination (about twice the runs).")
    ] = "staged",
    samples_per_prompt: Annotated[int, typer.Option(help="Sampled completions per row and eval seed.", min=1)] = 4,
    eval_seeds: Annotated[str, typer.Option(help="Comma-separated evaluation seeds (sampling draws).")] = "0,1,2",
    decode_temperatures: Annotated[
        str, typer.Option(help="Temperatures the untrained student is decoded at; its best on eval is a baseline.")
    ] = "0.3,0.5,0.7,1.0",
    eval_every: Annotated[int, typer.Option(help="Learning-curve point every N steps.", min=1)] = 40,
    curve_examples: Annotated[int, typer.Option(help="Eval-split rows per learning-curve point.", min=1)] = 100,
    selection_examples: Annotated[int, typer.Option(help="Eval-split rows scored for selection (0 = all).", min=0)] = 0,
    test_examples: Annotated[int, typer.Option(help="Test rows scored at the end (0 = all).", min=0)] = 0,
    teacher: Annotated[str, typer.Option(help="Teacher of the baseline rows and the divergence columns.")] = "toy:teacher",
    test_data: Annotated[str, typer.Option(help="Held-out data of the final test: test (the toy split) or a file.")] = "test",
    workers: Annotated[int, typer.Option(help="Runs at a time, one thread each (0 = one per CPU core).", min=0)] = 0,
    allow_unequal_budgets: Annotated[
        bool, typer.Option(help="Compare specs with different rows per step (batch_size x grad_accum); the page says so.")
    ] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder of the runs and results.json.")] = Path(
        "runs/compare"
    ),
    doc: Annotated[Path, typer.Option(help="Markdown page to write.")] = Path("docs/results.md"),
    plot: Annotated[Path, typer.Option(help="PNG of eval score against steps, teacher tokens and wall time.")] = Path(
        "docs/results_accuracy.png"
    ),
    reuse: Annotated[
        bool, typer.Option(help="Keep finished runs and evaluations of an earlier comparison (resume).")
    ] = False,
    server: Annotated[
        str | None,
        typer.Option(help="A running service's URL: train there, as sweeps on its queue, and score here (default: "
                          "$DISTILL_SERVER when it answers, else the local pool)."),
    ] = None,
    token: Annotated[str | None, typer.Option(help="API token of --server (default: $DISTILL_TOKEN).")] = None,
) -> None:
    """Sweep every method over the same grid and select on eval (with intervals); train the chosen settings with
    fresh seeds and score them on test against the student and teacher (greedy, T 1, the student's best T); claim
    only what Bonferroni-adjusted bootstrap intervals support. Writes a page, a plot and results.json. Runs train
    in a local pool, or on a running service (--server, or DISTILL_SERVER) as a sweep on its queue."""
    import shlex
    import sys

    from core_distill.compare.runner import compare
    from core_distill.compare.settings import CompareError, CompareSettings
    from core_distill.model_eval import EvalError

    settings = CompareSettings(
        steps=steps, seeds=tuple(range(selection_seed + 1, selection_seed + 1 + seeds)), selection_seed=selection_seed,
        learning_rates=_floats(learning_rates, "--learning-rates"), temperatures=_floats(temperatures, "--temperatures"),
        betas=_floats(betas, "--betas"), extend_edges=extend_edges, search=search, samples_per_prompt=samples_per_prompt,
        eval_seeds=_ints(eval_seeds, "--eval-seeds"), decode_temperatures=_floats(decode_temperatures, "--decode-temperatures"),
        eval_every=eval_every, curve_examples=curve_examples, selection_examples=selection_examples,
        test_examples=test_examples, teacher=teacher, test_data=test_data, workers=workers,
        allow_unequal_budgets=allow_unequal_budgets,
    )  # fmt: skip
    command = shlex.join(["distill", *sys.argv[1:]])
    runner = None
    try:
        if compare_runner_hook is not None:
            runner = compare_runner_hook(server, token, workers=workers, echo=typer.echo, reuse=reuse)
        elif server:
            raise CompareError("--server needs the service: run `distill compare` (the service package's command)")
        compare(spec_files, settings, output_dir=output, doc_path=doc, plot_path=plot, command=command,
                echo=typer.echo, reuse=reuse, runner=runner)  # fmt: skip
    except (CompareError, EvalError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    finally:
        if runner is not None and hasattr(runner, "close"):
            runner.close()


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=option) from None


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=option) from None


from core_distill.toy.cli import toy_cli  # noqa: E402

engine_cli.add_typer(toy_cli, name="toy", help="The built-in countdown task.")


if __name__ == "__main__":  # `python -m core_distill.cli`: what the launcher runs in every process
    engine_cli()
