"""Team mode (DISTILL_AUTH=on) through the dashboard: bob cannot change alice's experiments and runs, through
the dashboard's Gradio endpoints (gradio_client with his token) or in a real browser logged in as him, and
is told why; alice, and an admin, can. The API and dashboard run in uvicorn on the test database and Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from app import run_state
from app.auth import create_token
from app.db import get_engine
from app.models import Experiment, ExperimentCreate, Run, RunStatus, Sweep
from app.services import experiments as experiment_service
from app.services import runs as run_service
from app.settings import get_settings
from core_distill.checkpoint import checkpoint_dir
from tests.helpers.specs import tiny_spec
from tests.ui.browser import CHROMIUM, CHROMIUM_ARGS, serve_dashboard


@pytest.fixture
def team(service_env, toy_dir, tmp_path, monkeypatch) -> Iterator[tuple[str, dict[str, str]]]:
    """(base URL, {name: token}) of a dashboard with auth on: alice and bob, and carol an admin."""
    monkeypatch.setenv("DISTILL_AUTH", "on")
    monkeypatch.setenv("DISTILL_ADMINS", "carol")
    get_settings.cache_clear()
    with Session(get_engine()) as session:
        tokens = {name: create_token(session=session, name=name) for name in ("alice", "bob", "carol")}
    with serve_dashboard(tmp_path, "ownership", ready_path="/api/health") as url:
        yield url, tokens


def alices_runs() -> tuple[int, int]:
    """Alice's experiment with a running run (a worker claimed it) and a cancelled one that has a checkpoint."""
    with Session(get_engine()) as session:
        experiment_in = ExperimentCreate(name="alice's sweep", tags=["mine"], notes="alice's notes", spec=tiny_spec())
        experiment, running = experiment_service.create_experiment(
            session=session, experiment_in=experiment_in, user="alice"
        )
        stopped = experiment_service.rerun_experiment(session=session, experiment_id=experiment.id, user="alice")
        run_state.claim_run(session=session, run_id=running.id, worker="gpu0@box", gpu="0")
        run_service.cancel_run(session=session, run_id=stopped.id, user="alice")  # queued -> cancelled
        folder = Path(get_settings().effective_runs_dir) / f"{stopped.id}-test"
        (checkpoint_dir(folder) / "step-00000002").mkdir(parents=True)
        (checkpoint_dir(folder) / "step-00000002" / "state.json").write_text("{}")  # what a worker leaves
        session.execute(Run.__table__.update().where(Run.__table__.c.id == stopped.id).values(output_dir=str(folder)))
        session.commit()
        return running.id, stopped.id


def state() -> dict:
    """What bob must not be able to change."""
    with Session(get_engine()) as session:
        experiment = session.execute(select(Experiment)).scalar_one()
        runs = session.execute(select(Run).order_by(Run.id)).scalars().all()
        return {
            "tags": experiment.tags,
            "notes": experiment.notes,
            "runs": [(r.id, r.status, r.attempt, r.cancel_requested) for r in runs],
            "count": session.execute(select(func.count()).select_from(Run)).scalar_one(),
        }


def dashboard_client(url: str, token: str):
    from gradio_client import Client

    return Client(f"{url}/ui/", headers={"Authorization": f"Bearer {token}"}, verbose=False)


@pytest.mark.slow
def test_only_owners_and_admins_change_experiments_through_the_dashboard_endpoints(team):
    url, tokens = team
    running, stopped = alices_runs()
    before = state()

    bob = dashboard_client(url, tokens["bob"])
    refused = {
        "save": bob.predict(running, "bob, was, here", "bob's notes", api_name="/save_tags_notes"),
        "cancel": bob.predict(running, api_name="/cancel_run"),
        "resume": bob.predict(stopped, api_name="/resume_run"),
        "rerun": bob.predict(running, api_name="/rerun_run"),
    }
    for action, message in refused.items():
        assert "bob may not" in message and "belongs to alice" in message, (action, message)
    assert refused["save"].startswith("**Not saved:**") and refused["cancel"].startswith("**cancel failed:**")
    assert state() == before  # nothing changed: tags, notes, statuses, attempts, no new run
    # and the REST API answers bob the same way beside it
    rest = httpx.post(f"{url}/api/runs/{running}/cancel", headers={"Authorization": f"Bearer {tokens['bob']}"})
    assert rest.status_code == 403 and "belongs to alice" in rest.json()["detail"]

    alice = dashboard_client(url, tokens["alice"])
    assert alice.predict(running, "a, b", "new notes", api_name="/save_tags_notes").startswith("Saved")
    assert alice.predict(running, api_name="/cancel_run") == f"Run {running} asked to stop (it checkpoints first)."
    assert alice.predict(stopped, api_name="/resume_run").startswith(f"Run {stopped} queued again (attempt 2)")
    assert "a fresh run of experiment" in alice.predict(running, api_name="/rerun_run")
    after = state()
    assert (after["tags"], after["notes"], after["count"]) == (["a", "b"], "new notes", 3)
    assert (running, RunStatus.running, 1, True) in after["runs"]  # asked to stop: the worker checkpoints first
    assert (stopped, RunStatus.queued, 2, False) in after["runs"]

    carol = dashboard_client(url, tokens["carol"])  # an admin (DISTILL_ADMINS)
    assert carol.predict(running, "audited", "", api_name="/save_tags_notes").startswith("Saved")


@pytest.mark.e2e
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_bob_in_a_browser_is_told_he_cannot_change_alices_run(team):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, tokens = team
    running, _ = alices_runs()
    before = state()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            assert context.request.post(f"{url}/api/login", data={"token": tokens["bob"]}).ok  # the cookie
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{url}/ui/")
            table = page.locator("#runs-table")
            sync_api.expect(table).to_contain_text("alice's sweep")
            selected = page.locator("#selected-run input")
            selected.fill(str(running))  # the run picked in the table lands here
            selected.press("Tab")
            message = page.locator("#run-action-message")

            page.once("dialog", lambda dialog: dialog.accept())  # Cancel asks first (ui/static/confirm.js)
            page.get_by_role("button", name="Cancel run").click()
            sync_api.expect(message).to_contain_text("bob may not cancel a run of experiment")
            sync_api.expect(message).to_contain_text("belongs to alice")
            page.get_by_label("notes").fill("bob was here")
            page.get_by_role("button", name="Save tags & notes").click()
            sync_api.expect(message).to_contain_text("Not saved")
            sync_api.expect(message).to_contain_text("bob may not edit")
        finally:
            browser.close()
    assert state() == before


@pytest.mark.slow
def test_a_sweep_launched_from_the_dashboard_is_its_users_and_only_they_cancel_it(team):
    import json

    url, tokens = team
    text = f"name: alice's grid\nspec: {json.dumps(tiny_spec())}\ngrid: {{beta: [0.0, 0.5]}}\nseeds: [0]\n"
    alice, bob = dashboard_client(url, tokens["alice"]), dashboard_client(url, tokens["bob"])
    message, sweep_id = alice.predict(text, api_name="/launch_sweep")
    assert message.startswith(f"Queued sweep {sweep_id} "), message
    with Session(get_engine()) as session:
        assert session.get(Sweep, sweep_id).owner == "alice"
        owners = session.execute(select(Experiment.owner).where(Experiment.sweep_id == sweep_id)).scalars().all()
    assert owners == ["alice", "alice"]
    refused = bob.predict(sweep_id, api_name="/cancel_sweep")
    assert "bob may not cancel sweep" in refused and "belongs to alice" in refused
    with Session(get_engine()) as session:
        statuses = session.execute(select(Run.status).join(Experiment).where(Experiment.sweep_id == sweep_id)).scalars()
        assert set(statuses) == {RunStatus.queued}
    assert alice.predict(sweep_id, api_name="/cancel_sweep") == f"Sweep {sweep_id} cancelled: 2 cancelled."
