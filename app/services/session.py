"""The dashboard's unit of work: a session on the service layer's engine, so ui/ never opens one itself.

A REST route gets its session from `app.api.deps.SessionDep`; a dashboard handler has no request scope,
so it takes one here and passes it to the same service functions the route calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlmodel import Session

from app.db import get_engine


@contextmanager
def open_session() -> Iterator[Session]:
    with Session(get_engine()) as session:
        yield session
