"""Many live views at once: does the API stay responsive while a team watches its runs?

    python benchmarks/viewers.py                      # PostgreSQL (own database) when it runs, else SQLite
    python benchmarks/viewers.py --viewers 50 --pollers 30 --seconds 60

Starts `distill api` (team mode: API, dashboard, reaper; DISTILL_AUTH=on, one token) in a subprocess on
a database of its own (created and dropped: tests/services.make_database) and Redis, with --runs running
runs of --points points per key. Then, for --seconds: --viewers clients each hold the SSE stream of a
run open (/api/runs/{id}/events; a publisher adds a metrics event per run every second), --pollers clients
each GET /api/runs/{id}/metrics every --poll-interval seconds, and a probe GETs /api/health twice a second.
Prints the health latency (p50, p95, max), the responses by status per kind, timeouts, and PostgreSQL's
connections to the database (most seen; most `idle in transaction`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from bench_service import KEYS, fill, percentile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.services import TestRedis, free_port, make_database, stop_group, wait_until_serving  # noqa: E402

REQUEST_TIMEOUT = 30.0  # a request slower than this is a timeout (the figure the issue counted)


def prepare(runs: int, points: int) -> tuple[str, list[int]]:
    """Schema, a token and `runs` running runs with metric points; (token, run ids)."""
    from sqlalchemy import update
    from sqlmodel import Session

    from app.auth import create_token
    from app.db import get_engine
    from app.models import Run, RunStatus

    _, run_ids = fill(points, runs)  # the first run holds the points; the others are small
    with Session(get_engine()) as session:
        session.exec(update(Run).values(status=RunStatus.running))
        session.commit()
        token = create_token(session=session, name="bench")
    get_engine().dispose()
    return token, run_ids


def start_api(port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


class Tally:
    """Responses by (kind, status or error name), and every health latency."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.health: list[float] = []

    def record(self, kind: str, outcome: int | str) -> None:
        self.outcomes[(kind, str(outcome))] += 1


async def timed_get(client: httpx.AsyncClient, tally: Tally, kind: str, path: str) -> float | None:
    start = time.perf_counter()
    try:
        response = await client.get(path)
    except httpx.TimeoutException:
        tally.record(kind, "timeout")
        return None
    except httpx.TransportError as exc:
        tally.record(kind, type(exc).__name__)
        return None
    tally.record(kind, response.status_code)
    return time.perf_counter() - start


async def viewer(client: httpx.AsyncClient, tally: Tally, run_id: int, deadline: float) -> None:
    """Hold a run's live stream open until the deadline; reopen it (counted) if it fails or ends."""
    while time.perf_counter() < deadline:
        try:
            async with client.stream("GET", f"/api/runs/{run_id}/events") as response:
                tally.record("stream open", response.status_code)
                if response.status_code == 200:
                    async for _ in response.aiter_lines():
                        if time.perf_counter() >= deadline:
                            return
        except httpx.TimeoutException:
            tally.record("stream open", "timeout")
        except httpx.TransportError as exc:
            tally.record("stream open", type(exc).__name__)
        await asyncio.sleep(1.0)


async def poller(client: httpx.AsyncClient, tally: Tally, run_id: int, interval: float, deadline: float) -> None:
    path = f"/api/runs/{run_id}/metrics?keys={','.join(KEYS)}&max_points=500"
    while time.perf_counter() < deadline:
        await timed_get(client, tally, "metrics", path)
        await asyncio.sleep(interval)


async def health_probe(client: httpx.AsyncClient, tally: Tally, deadline: float) -> None:
    while time.perf_counter() < deadline:
        latency = await timed_get(client, tally, "health", "/api/health")
        tally.health.append(REQUEST_TIMEOUT if latency is None else latency)
        await asyncio.sleep(0.5)


async def publisher(redis_url: str, run_ids: list[int], deadline: float) -> None:
    """One metrics event per run per second, as live runs send them."""
    from app import events

    client = events.redis_client(redis_url)
    step = 0
    while time.perf_counter() < deadline:
        step += 1
        point = {"step": step, "key": "loss", "value": 1.0 / step, "wall_time": time.time()}
        for run_id in run_ids:
            await asyncio.to_thread(events.publish, client, run_id, "metrics", {"points": [point]})
        await asyncio.sleep(1.0)


async def pg_sampler(database_url: str, samples: list[tuple[int, int]], deadline: float) -> None:
    """Every 2 s: (connections to the database, of them `idle in transaction`)."""
    import psycopg

    admin, name = database_url.rsplit("/", 1)
    query = (
        "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%%') FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()"
    )
    async with await psycopg.AsyncConnection.connect(f"{admin}/postgres", autocommit=True) as conn:
        while time.perf_counter() < deadline:
            samples.append(await (await conn.execute(query, (name,))).fetchone())
            await asyncio.sleep(2.0)


async def load(args: argparse.Namespace, base: str, token: str, run_ids: list[int], env: dict) -> tuple[Tally, list]:
    tally, pg_samples = Tally(), []
    deadline = time.perf_counter() + args.seconds
    timeout = httpx.Timeout(REQUEST_TIMEOUT, read=None)  # a stream waits for events as long as it likes
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout, limits=limits) as streams,
        httpx.AsyncClient(base_url=base, headers=headers, timeout=REQUEST_TIMEOUT, limits=limits) as requests,
    ):
        tasks = [viewer(streams, tally, run_ids[i % len(run_ids)], deadline) for i in range(args.viewers)]
        tasks += [
            poller(requests, tally, run_ids[i % len(run_ids)], args.poll_interval, deadline)
            for i in range(args.pollers)
        ]
        tasks += [health_probe(requests, tally, deadline), publisher(env["DISTILL_REDIS_URL"], run_ids, deadline)]
        if env["DISTILL_DATABASE_URL"].startswith("postgresql"):
            tasks.append(pg_sampler(env["DISTILL_DATABASE_URL"], pg_samples, deadline))
        await asyncio.gather(*tasks)
    return tally, pg_samples


def report(args: argparse.Namespace, tally: Tally, pg_samples: list[tuple[int, int]], database: str) -> None:
    health = tally.health
    print(f"\n{args.viewers} viewers (SSE), {args.pollers} pollers of /metrics every {args.poll_interval:g} s, "
          f"{args.seconds:.0f} s, database {database}, load average now {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"health: {len(health)} probes, p50 {percentile(health, 50) * 1000:.0f} ms, "
          f"p95 {percentile(health, 95) * 1000:.0f} ms, max {max(health) * 1000:.0f} ms")  # fmt: skip
    print("| kind | outcome | count |\n|---|---|---|")
    for (kind, outcome), count in sorted(tally.outcomes.items()):
        print(f"| {kind} | {outcome} | {count} |")
    timeouts = sum(count for (_, outcome), count in tally.outcomes.items() if outcome == "timeout")
    print(f"timeouts (> {REQUEST_TIMEOUT:g} s): {timeouts}")
    if pg_samples:
        print(f"PostgreSQL connections to the database: at most {max(s[0] for s in pg_samples)}, "
              f"at most {max(s[1] for s in pg_samples)} idle in transaction ({len(pg_samples)} samples)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--pollers", type=int, default=30)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--points", type=int, default=5000, help="points per key on the first run")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-viewers-"))
    database, redis_server = make_database(tmp), TestRedis(tmp)
    env = {
        "DISTILL_HOME": str(tmp),
        "DISTILL_DATABASE_URL": database.url,
        "DISTILL_REDIS_URL": redis_server.url,
        "DISTILL_AUTH": "on",
        "DISTILL_LOST_AFTER_SECONDS": "86400",
    }  # fmt: skip  (no worker: the runs stay running)
    os.environ.update(env)
    server = None
    try:
        token, run_ids = prepare(args.runs, args.points)
        port, log = free_port(), tmp / "api.log"
        base = f"http://127.0.0.1:{port}"
        server = start_api(port, log)
        wait_until_serving(f"{base}/openapi.json", server, log, timeout=300)  # 200 once the app is built
        print(f"API up on {base}; load average {os.getloadavg()[0]:.1f}; starting the load")
        tally, pg_samples = asyncio.run(load(args, base, token, run_ids, env))
        report(args, tally, pg_samples, database.url.split("@")[-1])
    finally:
        if server is not None:
            stop_group(server, 30)
        from app.db import get_engine

        get_engine().dispose()
        database.drop()
        redis_server.flush()
        redis_server.close()


if __name__ == "__main__":
    main()
