"""Alembic environment: the tables are the SQLModel metadata of app.models.

`init_db` hands over an open connection (config.attributes["connection"]); run by hand,
the URL comes from the service's settings (DISTILL_DATABASE_URL, else the SQLite file).
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from app.db import make_engine
from app.settings import get_settings

target_metadata = SQLModel.metadata


def run_with(connection) -> None:
    # batch mode lets later revisions alter SQLite tables (copy-and-move), a no-op on PostgreSQL
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    engine = make_engine(get_settings().effective_database_url)
    with engine.connect() as connection:
        run_with(connection)
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=get_settings().effective_database_url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
