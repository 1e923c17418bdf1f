"""The API under test: `create_app(ui=False)` in a TestClient, on the session's real database and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session, SQLModel

from app.db import get_engine


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A spec on the miniature toy build that would train in seconds."""
    spec = {"student": "toy:student", "teacher": "toy:teacher", "train_data": "toy:train", "eval_data": "toy:eval",
            "max_steps": 3, "batch_size": 2, "max_new_tokens": 8, "eval_examples": 4, "lmbda": 0.5}  # fmt: skip
    return {**spec, **overrides}


def row_counts() -> dict[str, int]:
    """Rows per table: 'nothing was written' is these numbers not moving."""
    with Session(get_engine()) as session:
        return {
            t.name: session.execute(select(func.count()).select_from(t)).scalar_one()
            for t in SQLModel.metadata.sorted_tables
        }


@pytest.fixture
def client(service_env) -> Iterator[TestClient]:
    from app.main import create_app

    with TestClient(create_app(ui=False)) as test_client:
        yield test_client


def post_experiment(client: TestClient, name: str = "exp", **body: Any) -> dict[str, Any]:
    body.setdefault("spec", tiny_spec())
    response = client.post("/api/experiments", json={"name": name, **body})
    assert response.status_code == 201, response.text
    return response.json()
