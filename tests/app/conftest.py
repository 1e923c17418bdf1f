"""Fixtures the API tests share."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from app.auth import create_token
from app.db import get_engine
from app.settings import get_settings


@pytest.fixture
def token(service_env, monkeypatch) -> str:
    """Auth on, and a bearer token of the user 'ada'."""
    monkeypatch.setenv("DISTILL_AUTH", "on")
    get_settings.cache_clear()
    with Session(get_engine()) as session:
        return create_token(session=session, name="ada")
