"""A PostgreSQL server of a test's own (initdb into a temporary folder, a free port), which the test may
stop and start again: database outages without touching the shared server on 5432."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.services import free_port

PG_BIN = Path(os.environ.get("DISTILL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
DATABASE = "distill"
PG_CTL_TIMEOUT_SECONDS = 120


class PgInstance:
    """initdb, pg_ctl start/stop (as user postgres when run as root); `url` is the service's database."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="distill-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", DATABASE)

    @classmethod
    def create_or_skip(cls) -> PgInstance:
        missing = [name for name in ("initdb", "pg_ctl", "createdb") if not (PG_BIN / name).exists()]
        if missing:
            pytest.skip(f"no PostgreSQL binaries in {PG_BIN} ({', '.join(missing)} missing; set DISTILL_TEST_PG_BIN)")
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: initdb refuses root")
        return cls()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as when a database server goes away."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        argv = [*self._as_postgres, str(PG_BIN / program), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PG_CTL_TIMEOUT_SECONDS)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stdout}{done.stderr}")
