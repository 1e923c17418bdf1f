"""Make rows through the real API and read them back from the real database."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session, SQLModel

from app.db import get_engine
from app.models import Run
from core_distill.spec import DistillSpec
from tests.helpers.specs import tiny_spec

T = TypeVar("T")


def post_experiment(client: TestClient, name: str = "exp", **body: Any) -> dict[str, Any]:
    """POST /api/experiments (created and queued, 201); the response body."""
    body.setdefault("spec", tiny_spec())
    response = client.post("/api/experiments", json={"name": name, **body})
    assert response.status_code == 201, response.text
    return response.json()


def launch(client: TestClient, spec: DistillSpec, name: str = "test") -> int:
    """Create and queue an experiment of `spec`; the queued run's id."""
    return post_experiment(client, name, spec=spec.model_dump(mode="json"))["run_id"]


def row_counts() -> dict[str, int]:
    """Rows per table: 'nothing was written' is these numbers not moving."""
    with Session(get_engine()) as session:
        return {
            t.name: session.execute(select(func.count()).select_from(t)).scalar_one()
            for t in SQLModel.metadata.sorted_tables
        }


def read_run(run_id: int) -> Run:
    with Session(get_engine()) as session:
        return session.get(Run, run_id)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, worker=None) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` s with the worker's log tail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            log = worker.log_text()[-4000:] if worker else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n--- worker log tail ---\n{log}")
        time.sleep(0.2)
