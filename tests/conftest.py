from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.families import FamilyPairs
from tests.tiny_models import TinyWorkspace, build_workspace

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> TinyWorkspace:
    """A tiny student, a bigger teacher (same char-level tokenizer) and addition data, on disk."""
    return build_workspace(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def family_pairs(tmp_path_factory: pytest.TempPathFactory) -> FamilyPairs:
    """`family_pairs("gemma2")`: a family's tiny tokenizer, student, teacher and chat data (tests/helpers/families.py),
    built on first use (about a second) and kept for the session."""
    return FamilyPairs(tmp_path_factory.mktemp("families"))


# --- the service: real database and Redis -----------------------------------------------------------
@pytest.fixture(scope="session")
def _service_backends(tmp_path_factory: pytest.TempPathFactory):
    from tests.services import TestRedis, make_database

    tmp = tmp_path_factory.mktemp("service")
    database, redis_server = make_database(tmp), TestRedis(tmp)
    yield database, redis_server
    from app.db import get_engine

    get_engine().dispose()
    database.drop()
    redis_server.close()


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL server of the module's own, which its tests may stop and start (outages)."""
    from tests.pg_instance import PgInstance

    server = PgInstance.create_or_skip()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def own_backends(own_postgres, tmp_path_factory: pytest.TempPathFactory):
    """What `_service_backends` gives, on `own_postgres`: a module returns it from its own `_service_backends`
    fixture to put service_env, client and worker on a server it can stop."""
    from tests.services import TestDatabase, TestRedis

    redis_server = TestRedis(tmp_path_factory.mktemp("own-backends"))
    yield TestDatabase(own_postgres.url, lambda: None), redis_server  # the server goes with its database
    from app.db import get_engine

    get_engine().dispose()
    redis_server.close()


@pytest.fixture
def service_env(_service_backends, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy_dir: Path):
    """Settings pointing at a fresh schema and an empty Redis db; DISTILL_HOME in tmp. Yields the Settings."""
    from sqlmodel import SQLModel

    from app.db import get_engine, init_db
    from app.settings import get_settings

    database, redis_server = _service_backends
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DISTILL_DATABASE_URL", database.url)
    monkeypatch.setenv("DISTILL_REDIS_URL", redis_server.url)
    monkeypatch.delenv("DISTILL_AUTH", raising=False)
    monkeypatch.delenv("DISTILL_ALLOWED_PATHS", raising=False)
    get_settings.cache_clear()
    get_engine.cache_clear()
    engine = get_engine()
    init_db(engine)
    redis_server.flush()
    yield get_settings()
    # empty every table (children first) so the next test starts clean on the same database
    with engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    get_settings.cache_clear()
    get_engine.cache_clear()


@pytest.fixture(scope="session")
def _toy_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature toy task (2-digit addition, tiny models; seconds), built once per session."""
    from core_distill.toy.build import build_toy

    folder = tmp_path_factory.mktemp("toy")
    build_toy(folder, seed=0, quick=True, progress=False)
    return folder


@pytest.fixture
def toy_dir(_toy_build: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DISTILL_TOY_DIR set to the miniature build, so specs can name toy:student, toy:train, ..."""
    monkeypatch.setenv("DISTILL_TOY_DIR", str(_toy_build))
    return _toy_build


@pytest.fixture
def client(service_env):
    """The REST API in-process (`create_app(ui=False)`, no dashboard) in a TestClient, on service_env's backends."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(ui=False)) as test_client:
        yield test_client
