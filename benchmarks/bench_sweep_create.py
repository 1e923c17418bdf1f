"""How long creating a big sweep takes: `app.services.sweeps.create_sweep` of N runs, in-process.

    PYTHONPATH=$PWD python benchmarks/bench_sweep_create.py        # SQLite in a temp dir, 300 runs
    PYTHONPATH=$PWD python benchmarks/bench_sweep_create.py --database-url postgresql://postgres@127.0.0.1:5432/bench

A live CPU host is announced first (one slot), so the scheduling passes see a host and book one run,
as on a running `distill up`. Redis: 127.0.0.1:6379 db 13 when it answers (flushed), else embedded.
Prints the seconds of each repeat (validation, storing, scheduling and publishing all included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_service import redis_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="settings x seeds (10 seeds per setting)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    os.environ["DISTILL_HOME"] = str(tmp)
    os.environ["DISTILL_DATABASE_URL"] = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    url, server = redis_url(tmp)
    os.environ["DISTILL_REDIS_URL"] = url
    os.environ["DISTILL_SWEEP_MAX_RUNS"] = str(max(args.runs, 1000))

    import redis
    from sqlmodel import Session, SQLModel

    from app.db import get_engine, init_db
    from app.models import SweepCreate
    from app.services import booking
    from app.services.sweeps import create_sweep

    engine = get_engine()
    init_db(engine)
    seeds = list(range(10))
    settings = [{"learning_rate": round(1e-5 * (i + 1), 8)} for i in range(max(1, args.runs // len(seeds)))]
    spec = {"student": "toy:student", "teacher": "toy:teacher", "max_steps": 3, "batch_size": 2, "max_new_tokens": 8}
    times = []
    for _ in range(args.repeat):
        redis.Redis.from_url(url).flushdb()
        with engine.begin() as conn:
            for table in reversed(SQLModel.metadata.sorted_tables):
                conn.execute(table.delete())
        with Session(engine) as session:
            booking.announce_host(session=session, name="bench@host", labels=["cpu"], queue="bench-host")
            booking.host_heartbeat(session=session, name="bench@host")
            body = SweepCreate.model_validate({"name": "bench", "spec": spec, "settings": settings, "seeds": seeds})
            start = time.perf_counter()
            view = create_sweep(session=session, sweep_in=body, user=None)
            times.append(time.perf_counter() - start)
        print(f"{view.runs} runs created in {times[-1]:.2f} s", flush=True)
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"median {statistics.median(times):.2f} s over {len(times)} repeats; load average {load}")
    engine.dispose()
    if server is not None:
        server.shutdown()


if __name__ == "__main__":
    main()
