"""`distill sweep ...`: a client of a running service's /api/sweeps (submit a sweep file, show, cancel, wait).

A sweep file is YAML: `name`, the base spec inline (`spec:`) or as a spec file (`spec_file:`, relative to
the sweep file), a `grid` (field: [values]) or a list of `settings`, `seeds`, and optionally `search:
random` with `samples` and `search_seed`. The server validates every run's spec before it stores any.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

DEFAULT_SERVER = "http://127.0.0.1:8000"
FINISHED = ("finished", "cancelled")

sweep_cli = typer.Typer(no_args_is_help=True, help="Sweeps on a running service: a grid of settings x seeds, queued.")

ServerOption = Annotated[
    str | None, typer.Option("--server", help=f"The service's URL (default: $DISTILL_SERVER, else {DEFAULT_SERVER}).")
]
TokenOption = Annotated[str | None, typer.Option("--token", help="API token (default: $DISTILL_TOKEN).")]


class ClientError(Exception):
    """What went wrong, in one line."""


# --- talking to the service ----------------------------------------------------------------------
def _base(server: str | None) -> str:
    return (server or os.environ.get("DISTILL_SERVER") or DEFAULT_SERVER).rstrip("/")


def request(method: str, server: str | None, token: str | None, path: str, **kwargs: Any) -> Any:
    """One API call; the decoded JSON body, or ClientError saying in one line why not."""
    import httpx

    base, token = _base(server), token or os.environ.get("DISTILL_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, f"{base}/api{path}", headers=headers, timeout=120, **kwargs)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the distill service at {base} ({type(exc).__name__}): start it with "
                          "`distill up`, or point --server / DISTILL_SERVER at it") from None  # fmt: skip
    if response.status_code == 401:
        raise ClientError(f"{base} needs a valid API token: pass --token or set DISTILL_TOKEN")
    if response.status_code >= 400:
        raise ClientError(problem_line(response))
    return response.json()


def problem_line(response: Any) -> str:
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:300]}"
    if isinstance(detail, list):  # a 422: each problem as "where: what"
        parts = []
        for problem in detail:
            loc = [str(p) for p in problem.get("loc", []) if p != "body"]
            parts.append(f"{'.'.join(loc) or 'request'}: {problem.get('msg')}")
        return "; ".join(parts)
    return str(detail)


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg="red", err=True)
    return typer.Exit(2)


# --- the sweep file ------------------------------------------------------------------------------
def read_sweep_file(path: Path) -> dict[str, Any]:
    """The POST /api/sweeps body of a sweep file (its `spec_file`, if any, read and put inline as `spec`)."""
    from core_distill.spec import DuplicateKeyError, load_yaml

    try:
        document = load_yaml(path.read_text())
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    except DuplicateKeyError as exc:
        raise ClientError(f"{path}: {exc.key!r} {exc.detail}") from None
    except Exception as exc:  # yaml's errors: one line of where and what
        raise ClientError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise ClientError(f"{path} must be a YAML mapping (name, spec or spec_file, grid or settings, seeds)")
    body = dict(document)
    if "spec_file" in body:
        if "spec" in body:
            raise ClientError(f"{path}: give `spec` or `spec_file`, not both")
        spec_path = (path.parent / str(body.pop("spec_file"))).resolve()
        try:
            spec = load_yaml(spec_path.read_text()) or {}
        except OSError as exc:
            raise ClientError(f"spec_file: cannot read {spec_path}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise ClientError(f"spec_file: {spec_path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(spec, dict):
            raise ClientError(f"spec_file: {spec_path} must be a mapping of field: value")
        body["spec"] = spec
    body.setdefault("name", path.stem)
    body.setdefault("spec", {})
    return body


# --- printing ------------------------------------------------------------------------------------
def _score(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    sd = summary.get("sd")
    return f"{summary['mean']:.4f}" + (f" ± {sd:.4f}" if sd is not None else "") + f" (n={summary['n']})"


def sweep_table(view: dict[str, Any]) -> str:
    """A sweep as text: its line of status and counts, then one row per group with each metric's mean ± sd."""
    counts = ", ".join(f"{n} {status}" for status, n in view["counts"].items() if n)
    owner = f" ({view['owner']})" if view.get("owner") else ""
    lines = [f"sweep {view['id']} {view['name']!r}{owner}: {view['status']}, {view['runs']} runs: {counts}"]
    keys = view.get("metric_keys", [])
    header = ["group", "done", *keys]
    rows = [header]
    for group in view["groups"]:
        done = sum(1 for r in group["runs"] if r["status"] == "succeeded")
        rows.append([group["label"], f"{done}/{len(group['runs'])}", *(_score(group["metrics"].get(k)) for k in keys)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


# --- commands ------------------------------------------------------------------------------------
@sweep_cli.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(help="A sweep YAML file.")],
    server: ServerOption = None,
    token: TokenOption = None,
    wait: Annotated[bool, typer.Option(help="Then wait for it with a progress bar.")] = False,
) -> None:
    """Submit a sweep file: one run per (setting, seed) goes on the service's queue."""
    try:
        view = request("POST", server, token, "/sweeps", json=read_sweep_file(file))
    except ClientError as exc:
        raise _fail(exc) from None
    typer.echo(f"sweep {view['id']}: {view['runs']} runs in {len(view['groups'])} groups queued")
    typer.echo(f"  follow it: distill sweep wait {view['id']}   cancel it: distill sweep cancel {view['id']}")
    if wait:
        wait_command(view["id"], server=server, token=token)


@sweep_cli.command("show")
def show(
    sweep_id: Annotated[int, typer.Argument(help="The sweep's id.")],
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """The sweep's groups with their runs done and each final eval metric's mean ± sd over seeds."""
    try:
        typer.echo(sweep_table(request("GET", server, token, f"/sweeps/{sweep_id}")))
    except ClientError as exc:
        raise _fail(exc) from None


@sweep_cli.command("cancel")
def cancel(
    sweep_id: Annotated[int, typer.Argument(help="The sweep's id.")],
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel every unfinished run of the sweep (running ones stop at their next step)."""
    try:
        view = request("POST", server, token, f"/sweeps/{sweep_id}/cancel")
    except ClientError as exc:
        raise _fail(exc) from None
    typer.echo(f"sweep {sweep_id}: cancelled; " + ", ".join(f"{n} {s}" for s, n in view["counts"].items() if n))


@sweep_cli.command("wait")
def wait_command(
    sweep_id: Annotated[int, typer.Argument(help="The sweep's id.")],
    server: ServerOption = None,
    token: TokenOption = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.", min=0.05)] = 2.0,
) -> None:
    """A progress bar of finished runs until the sweep has finished, then its table (exit code 1 unless all succeeded)."""
    from tqdm import tqdm

    try:
        view = request("GET", server, token, f"/sweeps/{sweep_id}")
        with tqdm(total=view["runs"], desc=f"sweep {sweep_id}", unit="run", file=sys.stderr) as bar:
            while True:
                counts = view["counts"]
                bar.n = view["runs"] - counts["queued"] - counts["running"]
                bar.set_postfix_str(f"{counts['running']} running, {counts['queued']} queued", refresh=False)
                bar.refresh()
                if view["status"] in FINISHED:
                    break
                time.sleep(interval)
                view = request("GET", server, token, f"/sweeps/{sweep_id}")
    except ClientError as exc:
        raise _fail(exc) from None
    typer.echo(sweep_table(view))
    if view["counts"]["succeeded"] != view["runs"]:
        raise typer.Exit(1)
