"""The `distill` command: engine commands from core_distill.cli plus the service's own."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from core_distill import cli as engine
from core_distill.cli import engine_cli

cli = engine_cli


def _compare_runner(server, token, **kwargs):  # noqa: ANN001, ANN202  (core_distill.cli.compare_runner_hook)
    from app.sweep_runner import service_runner

    return service_runner(server, token, **kwargs)


engine.compare_runner_hook = _compare_runner  # `distill compare --server URL` trains on the service

# --- `distill teacher serve`: the teacher server (app/teacher_server.py) ---------------------------
teacher_cli = typer.Typer(no_args_is_help=True, help="Serve a teacher to training runs on other machines.")


@teacher_cli.command("serve")
def teacher_serve(
    model: Annotated[str, typer.Argument(help="Teacher model: hub id or local directory.")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for other machines).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8600,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    max_top_k: Annotated[int, typer.Option(help="Largest top_k a client may ask for.")] = 1024,
    max_batch_tokens: Annotated[int, typer.Option(help="Tokens per shared forward pass.")] = 16384,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more requests.")] = 5.0,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow the model's own Python code.")] = False,
) -> None:
    """Serve MODEL's top-K log-probs over HTTP (binary arrays), batching requests of all clients."""
    from app.teacher_server import serve

    try:
        serve(model, host=host, port=port, dtype=dtype, device=device, max_top_k=max_top_k,
              max_batch_tokens=max_batch_tokens, batch_wait_ms=batch_wait_ms, trust_remote_code=trust_remote_code)  # fmt: skip
    except (OSError, ValueError) as exc:  # a model that cannot load: say why, without a traceback
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


cli.add_typer(teacher_cli, name="teacher")


# --- the service: `distill up`, `distill api`, `distill worker`, `distill token ...` ---------------
@cli.command("up")
def up_command(
    host: Annotated[str, typer.Option(help="Interface of the API and dashboard.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API and dashboard.")] = 8000,
    gpus: Annotated[
        int | None, typer.Option(help="GPUs the worker offers, 0..N-1 (default: every GPU; 0 = one CPU slot).")
    ] = None,
) -> None:
    """Start everything on this machine: Redis, the API and dashboard, a worker for its GPUs. Ctrl-C stops it."""
    from app.embedded import up

    raise typer.Exit(up(host=host, port=port, gpus=gpus))


@cli.command("api")
def api_command(
    host: Annotated[str | None, typer.Option(help="Interface (default: DISTILL_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: DISTILL_PORT).")] = None,
    reaper: Annotated[bool, typer.Option(help="Mark runs whose worker stopped sending heartbeats as lost.")] = True,
    access_log: Annotated[
        bool, typer.Option(help="Log every request; by default successful dashboard polls and reads are not logged.")
    ] = False,
) -> None:
    """Serve the REST API and the dashboard (team mode: workers run elsewhere with `distill worker`).

    The port answers at once (app/boot.py); the API and the dashboard are built in the background.
    """
    import threading

    import uvicorn

    from app.boot import StartingApp, wait_for_gate
    from app.settings import get_settings

    settings = get_settings()
    stop = threading.Event()

    def build():
        wait_for_gate("the app build")
        from app.db import init_db
        from app.main import create_app
        from app.services.dispatch import start_reaper

        init_db()
        if reaper:
            start_reaper(stop)
        return create_app(progress=shell.done)

    shell = StartingApp(build, settings.home, steps=["api", "dashboard"])
    config = uvicorn.Config(shell, host=host or settings.host, port=port or settings.port)
    if not access_log:
        logging.getLogger("uvicorn.access").addFilter(quiet_access_log)
    try:
        uvicorn.Server(config).run()
    finally:
        stop.set()


REDIRECTED_PAGES = ("/", "/ui", "/ui/")  # app.boot's "starting" page (not imported here: app.boot is read lazily)


def quiet_access_log(record: logging.LogRecord) -> bool:
    """Keep what matters in the terminal: changes (POST, PUT, PATCH, DELETE to /api) and every error.
    Successful reads, and the dashboard's own traffic (its polls are POSTs to /ui/gradio_api), are dropped."""
    try:
        _, method, path, _, status = record.args  # type: ignore[misc]  # uvicorn's access-log arguments
    except (TypeError, ValueError):
        return True
    if int(status) == 503 and method == "GET" and path in REDIRECTED_PAGES:
        return False  # the "starting" page reloading itself every second
    if int(status) >= 400:
        return True
    return method not in ("GET", "HEAD", "OPTIONS") and not str(path).startswith("/ui")


@cli.command("worker")
def worker_command(
    gpus: Annotated[
        str | None,
        typer.Option(
            help="GPU indices this host offers, e.g. 0,1, or 'cpu' (default: every visible GPU, else one CPU slot)."
        ),
    ] = None,
    gpu: Annotated[str | None, typer.Option(help="One GPU index (the same as --gpus N).", hidden=True)] = None,
    name: Annotated[str | None, typer.Option(help="Host name (default: gpu0-1@machine, cpu@machine).")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    quiet: Annotated[bool, typer.Option(help="No Celery start banner (what `distill up` uses).")] = False,
) -> None:
    """Run this machine's worker host: it announces its GPUs, and runs get booked on them (one pool process per GPU)."""
    from worker.launch import run_worker

    run_worker(gpus=gpus if gpus is not None else gpu, name=name, loglevel=loglevel, quiet=quiet)


token_cli = typer.Typer(no_args_is_help=True, help="API tokens for DISTILL_AUTH=on.")


@token_cli.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who holds it; their experiments are owned by this name.")],
) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from sqlmodel import Session

    from app.auth import create_token
    from app.db import get_engine, init_db

    init_db()
    with Session(get_engine()) as session:
        try:
            token = create_token(session=session, name=name)
        except ValueError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
    typer.echo(token)
    typer.echo(f"token for {name!r}: send it as 'Authorization: Bearer <token>'; it is not shown again", err=True)


@token_cli.command("list")
def token_list() -> None:
    """Token names and when they were created and last used."""
    from sqlmodel import Session

    from app.auth import list_tokens
    from app.db import get_engine, init_db

    init_db()
    with Session(get_engine()) as session:
        for token in list_tokens(session=session):
            typer.echo(
                f"{token.name}\tcreated {token.created_at:%Y-%m-%d %H:%M}\tlast used {token.last_used_at or 'never'}"
            )


@token_cli.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Delete a token: requests with it are refused from now on."""
    from sqlmodel import Session

    from app.auth import revoke_token
    from app.db import get_engine, init_db

    init_db()
    with Session(get_engine()) as session:
        removed = revoke_token(session=session, name=name)
    if not removed:
        typer.secho(f"error: no token named {name!r}", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {name!r}")


cli.add_typer(token_cli, name="token")

# --- `distill sweep ...`: a client of a running service (app/sweep_cli.py) --------------------------
from app.sweep_cli import sweep_cli  # noqa: E402  (registered beside the commands above)

cli.add_typer(sweep_cli, name="sweep")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
