"""`distill sweep` against the real API served over HTTP (uvicorn in a thread, the session's database and Redis)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
import yaml
from sqlmodel import Session
from typer.testing import CliRunner

from app import run_state
from app.auth import create_token
from app.cli import cli
from app.db import get_engine
from app.main import create_app
from app.settings import get_settings
from tests.helpers.factories import row_counts
from tests.helpers.servers import serve_in_thread
from tests.helpers.specs import tiny_spec
from tests.services import free_port

runner = CliRunner()


@pytest.fixture
def server(service_env, monkeypatch):
    monkeypatch.delenv("DISTILL_TOKEN", raising=False)
    with serve_in_thread(create_app(ui=False)) as url:
        monkeypatch.setenv("DISTILL_SERVER", url)
        yield url


def sweep(*args: str):
    return runner.invoke(cli, ["sweep", *args])


def submit(path: Path, *args: str) -> str:
    """`distill sweep submit`; the new sweep's id (ids are not reset between tests on PostgreSQL)."""
    result = sweep("submit", str(path), *args)
    assert result.exit_code == 0, result.output
    return result.output.split()[1].rstrip(":")


def write_sweep(folder: Path, **fields) -> Path:
    """A sweep file whose base spec is a spec file beside it (`spec_file:`)."""
    (folder / "base.yaml").write_text(yaml.safe_dump(tiny_spec()))
    body = {"name": "cli", "spec_file": "base.yaml", "grid": {"lmbda": [0.0, 1.0]}, "seeds": [0, 1]} | fields
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_submit_show_cancel(server, tmp_path):
    submitted = sweep("submit", str(write_sweep(tmp_path)))
    assert submitted.exit_code == 0, submitted.output
    sweep_id = submitted.output.split()[1].rstrip(":")
    assert f"sweep {sweep_id}: 4 runs in 2 groups queued" in submitted.output

    shown = sweep("show", sweep_id)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"sweep {sweep_id} 'cli': queued, 4 runs: 4 queued"
    assert lines[1].split() == ["group", "done"] and lines[2].split() == ["lmbda=0.0", "0/2"]

    cancelled = sweep("cancel", sweep_id)
    assert cancelled.exit_code == 0 and "4 cancelled" in cancelled.output, cancelled.output
    again = sweep("cancel", sweep_id)
    assert again.exit_code == 2 and f"error: sweep {sweep_id} has no queued or running run left" in again.output
    waited = sweep("wait", sweep_id, "--interval", "0.1")  # a cancelled sweep has finished: the table, exit code 1
    assert waited.exit_code == 1 and "cancelled, 4 runs: 4 cancelled" in waited.output


def test_wait_follows_the_runs_until_the_sweep_has_finished(server, tmp_path):
    sweep_id = submit(write_sweep(tmp_path, seeds=[0]))
    view = httpx.get(f"{server}/api/sweeps/{sweep_id}", timeout=30).json()
    run_ids = [r["run_id"] for g in view["groups"] for r in g["runs"]]

    def worker() -> None:  # what a worker does to each run, one after the other
        for run_id in run_ids:
            with Session(get_engine()) as session:
                assert run_state.claim_run(session=session, run_id=run_id, worker="w", gpu="cpu")
                run_state.finish_run(session=session, run_id=run_id, status="succeeded", last_step=3)

    thread = threading.Thread(target=worker)
    thread.start()
    waited = sweep("wait", sweep_id, "--interval", "0.1")
    thread.join(60)
    assert waited.exit_code == 0, waited.output
    assert "finished, 2 runs: 2 succeeded" in waited.output and "lmbda=1.0  1/1" in waited.output


def test_errors_are_one_clear_line(server, tmp_path, monkeypatch):
    before = row_counts()
    bad = sweep("submit", str(write_sweep(tmp_path, grid={"lmbd": [0.0]})))
    assert bad.exit_code == 2
    assert bad.output.strip() == "error: grid.lmbd: is not a spec field; did you mean 'lmbda'?"
    missing = sweep("submit", str(write_sweep(tmp_path, spec_file="nowhere.yaml")))
    assert missing.exit_code == 2 and "spec_file: cannot read" in missing.output
    assert sweep("show", "999999").output.strip() == "error: no sweep with id 999999"
    assert row_counts() == before

    down = sweep("show", "1", "--server", f"http://127.0.0.1:{free_port()}")
    assert down.exit_code == 2 and "cannot reach the distill service" in down.output
    assert len(down.output.strip().splitlines()) == 1

    monkeypatch.setenv("DISTILL_AUTH", "on")
    get_settings.cache_clear()
    with Session(get_engine()) as session:
        token = create_token(session=session, name="ada")
    with serve_in_thread(create_app(ui=False)) as url:
        refused = sweep("show", "1", "--server", url)
        assert refused.exit_code == 2 and "needs a valid API token: pass --token or set DISTILL_TOKEN" in refused.output
        sweep_id = submit(write_sweep(tmp_path), "--server", url, "--token", token)
        monkeypatch.setenv("DISTILL_TOKEN", token)
        assert "'cli' (ada)" in sweep("show", sweep_id, "--server", url).output
