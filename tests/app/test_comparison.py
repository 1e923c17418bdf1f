"""Comparing runs is one service (app/services/comparison.py): the API and the dashboard agree on how many
runs, which are unknown, and which spec fields differ."""

from __future__ import annotations

from sqlmodel import Session

from app.db import get_engine
from app.services.comparison import MAX_COMPARED
from tests.ui.factories import add_run
from ui import compare


def test_the_api_and_the_dashboard_compare_the_same_runs_the_same_way(client):
    with Session(get_engine()) as session:
        runs = [add_run(session, name=f"r{i}", spec={"beta": i / 10, "max_steps": 10}) for i in range(MAX_COMPARED + 1)]
    ids = [r.id for r in runs]

    too_many = client.get("/api/compare", params={"run_ids": ",".join(map(str, ids))})
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["msg"] == f"compare 1 to {MAX_COMPARED} runs, got {MAX_COMPARED + 1}"
    assert "Cannot compare:** compare 1 to 10 runs, got 11" in _ui_message(", ".join(map(str, ids)))

    unknown = client.get("/api/compare", params={"run_ids": f"{ids[0]},999999"})
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no run with id 999999"
    assert "no run with id 999999" in _ui_message(f"{ids[0]} 999999")

    body = client.get("/api/compare", params={"run_ids": f"{ids[0]},{ids[3]}"}).json()
    differing = [f["name"] for f in body["fields"] if f["differs"]]
    _, diff, _, _ = compare.compare(f"{ids[0]},{ids[3]}", ["loss"])
    assert differing == list(diff["field"]) == ["beta"]


def _ui_message(run_text: str) -> str:
    from ui import app as dashboard

    return dashboard.compare_outputs(run_text, ["loss"], 0.0, "step")[-1]
