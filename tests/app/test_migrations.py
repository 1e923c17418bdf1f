"""The schema comes from Alembic migrations, and the migrations match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from app.db import init_db, make_engine


def test_migrations_match_the_models(service_env):
    from app.db import get_engine

    with get_engine().connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() is not None
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == [], (
        f"models changed without a migration (alembic -c app/alembic.ini revision --autogenerate): {diff}"
    )


def test_init_db_is_idempotent_and_adopts_a_create_all_database(tmp_path):
    fresh = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    init_db(fresh)
    init_db(fresh)  # every API and worker start runs it again
    assert {"experiment", "run", "metricpoint", "alembic_version"} <= set(inspect(fresh).get_table_names())

    older = make_engine(f"sqlite:///{tmp_path / 'older.db'}")
    SQLModel.metadata.create_all(older)  # a database made before migrations existed
    with older.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO experiment (name, tags, notes, spec, created_at) VALUES ('kept', '[]', '', '{}', '2026-01-01')"
            )
        )
    init_db(older)
    with older.connect() as conn:
        assert conn.execute(text("SELECT name FROM experiment")).scalar_one() == "kept"
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
