"""The database engine and sessions. Tables are created by Alembic migrations (app/migrations)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from app.settings import get_settings

CONNECT_TIMEOUT_SECONDS = 10


def make_engine(url: str) -> Engine:
    """An engine for `url`, its pool sized by DISTILL_DB_POOL_SIZE and DISTILL_DB_MAX_OVERFLOW (docs/service.md)."""
    settings = get_settings()
    pool = {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        in_memory = not path or path == ":memory:"
        if not in_memory:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # an in-memory database lives in one connection (SingletonThreadPool): nothing to size
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **({} if in_memory else pool)
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record) -> None:  # API, worker and reaper write concurrently
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # a server that does not answer fails a connect in seconds (app.db_retry retries it), never hangs it
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **pool)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().effective_database_url)


OUTSIDE_REQUESTS = 10  # connections kept for what holds no request session: health, the reaper, stream checks


def request_session_limit() -> int:
    """How many requests may hold a session at once: the pool's ceiling less OUTSIDE_REQUESTS.

    A request's session may wait for a worker thread (to run or serialize the route) while it holds a
    connection; were every connection held so, the threads waiting for one could never get it. Requests
    past this limit wait for a slot without a thread, and what runs outside a request keeps its share."""
    settings = get_settings()
    return max(1, settings.db_pool_size + settings.db_max_overflow - OUTSIDE_REQUESTS)


def get_session() -> Iterator[Session]:
    with Session(get_engine()) as session:
        yield session


def init_db(engine: Engine | None = None) -> None:
    """Bring the schema up to date with `alembic upgrade head` (idempotent; runs at every API and worker start).

    Processes starting together take a lock first (a PostgreSQL advisory lock, or a file lock next
    to the SQLite file), so only one of them creates the tables.
    """
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    engine = engine or get_engine()
    config = Config(str(Path(__file__).with_name("alembic.ini")))
    with _migration_lock(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(74657301)"))  # held until this transaction ends
        config.attributes["connection"] = connection
        tables = inspect(connection)
        if tables.has_table("experiment") and not tables.has_table("alembic_version"):
            command.stamp(config, "0001")  # a database made by create_all before migrations existed
        command.upgrade(config, "head")


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(Path(database).expanduser().with_suffix(".migrate.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
