"""Dashboard load times with many long runs, points sent per series, and server memory over time.

    python benchmarks/bench_dashboard.py                          # SQLite in a temp dir, 10-minute soak
    python benchmarks/bench_dashboard.py --minutes 3              # shorter soak
    python benchmarks/bench_dashboard.py --database-url postgresql://postgres@127.0.0.1:5432/bench_ui

1. Writes 50 runs x 10,000 steps x 6 metric keys (3M points) straight into the database.
2. Times the handlers behind the runs table, a 10-run comparison, a live view and one refresh tick.
3. Starts the real app (uvicorn, create_app) and times the same views in headless Chromium, from
   navigation to the table rows / the comparison's curves being drawn.
4. Leaves a page on a live view of a run that keeps logging (a writer appends a step a second) and
   samples the server's RSS, to see whether memory grows while a page is left open.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
KEYS = ("loss", "loss/kd", "div/fkl", "div/rkl", "div/jsd", "perf/tokens_per_sec")


def timed(fn, repeat: int = 5) -> tuple[float, object]:
    """Median seconds of `repeat` calls (the first, cold one included in the list) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def seed(n_runs: int, steps: int) -> list[int]:
    from sqlmodel import Session

    from app.db import get_engine, init_db
    from tests.ui.factories import add_run

    init_db()
    ids = []
    t0 = time.perf_counter()
    with Session(get_engine()) as session:
        for i in range(n_runs):
            spec = {"beta": round(i / n_runs, 2), "lmbda": 1.0, "loss_top_k": (0, 8, 64)[i % 3], "max_steps": steps}
            run = add_run(session, name=f"sweep {i}", spec=spec, tags=["bench"], steps=steps, keys=KEYS, seed=i % 7)
            ids.append(run.id)
    print(f"seeded {n_runs} runs x {steps} steps x {len(KEYS)} keys in {time.perf_counter() - t0:.0f} s")
    return ids


def bench_handlers(run_ids: list[int]) -> dict[str, float]:
    from ui import app as dashboard
    from ui import compare, live, runs

    out: dict[str, float] = {}
    out["runs table"], (table, _) = timed(lambda: runs.runs_table())
    assert len(table) == len(run_ids)
    ten = ", ".join(map(str, run_ids[:10]))
    out["10-run compare"], (frames, *_rest) = timed(lambda: compare.compare(ten, compare.DEFAULT_KEYS))
    out["compare max points/series"] = max(int(f.groupby("series").size().max()) for f in frames if len(f))
    out["live view (7 charts)"], live_frames = timed(lambda: live.chart_frames(run_ids[0]))
    out["live max points/series"] = max(int(f.groupby("series").size().max()) for f in live_frames if len(f))
    out["refresh tick (probe)"], _ = timed(lambda: live.probe(run_ids[0]), repeat=50)
    out["runs table tick"], _ = timed(dashboard.table_fingerprint, repeat=50)
    return out


def start_server(port: int, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stdout=log.open("w"), stderr=subprocess.STDOUT)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_browser(url: str, run_ids: list[int], server: subprocess.Popen, minutes: float) -> dict[str, object]:
    from playwright.sync_api import expect, sync_playwright

    # the default comparison shows loss, div/fkl, div/rkl and eval/exact_match: 3 of them have curves here,
    # so the page is done when 3 plots x 10 runs = 30 lines are drawn

    expect.set_options(timeout=120_000)  # a busy 2-core machine: measure, do not give up
    out: dict[str, object] = {}
    ids = ",".join(map(str, run_ids[:10]))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        t0 = time.perf_counter()
        page.goto(f"{url}/ui/")  # a first, cold load: the browser caches the page's assets
        expect(page.get_by_text(f"{len(run_ids)} run(s) match")).to_be_visible(timeout=180_000)
        out["runs table page, cold"] = time.perf_counter() - t0
        views = (
            ("runs table page", f"{url}/ui/", lambda: expect(page.get_by_text(f"{len(run_ids)} run(s) match")).to_be_visible()),
            ("10-run compare page, data in", f"{url}/ui/?compare={ids}",
             lambda: expect(page.locator("#compare-link")).to_contain_text("?compare=")),
            ("10-run compare page, drawn", f"{url}/ui/?compare={ids}",
             lambda: page.wait_for_function("() => document.querySelectorAll('.compare-plot g.mark-line path').length >= 30")),
        )  # fmt: skip
        for name, target, done in views:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                page.goto(target)
                done()
                times.append(time.perf_counter() - t0)
            out[name] = statistics.median(times)
        out["points per series in the page"] = page.evaluate(
            """() => Math.max(...[...document.querySelectorAll('.compare-plot g.mark-line path')]
                .map(e => ((e.getAttribute('d') || '').match(/L/g) || []).length + 1))"""
        )

        # a page left on a live run; the run keeps logging one step a second
        stop = threading.Event()
        writer = threading.Thread(target=keep_logging, args=(run_ids[0], stop), daemon=True)
        writer.start()
        page.goto(f"{url}/ui/?run={run_ids[0]}")
        expect(page.locator("#live-header")).to_contain_text(f"Run {run_ids[0]}")
        samples = []
        t_end = time.monotonic() + minutes * 60
        while True:
            samples.append((time.monotonic(), rss_mb(server.pid)))
            if time.monotonic() >= t_end:
                break
            time.sleep(min(30.0, max(t_end - time.monotonic(), 0.1)))
        stop.set()
        writer.join()
        out["rss samples"] = [(round(t - samples[0][0]), round(mb, 1)) for t, mb in samples]
        out["steps seen by the page"] = page.locator("#live-header").inner_text()
        browser.close()
    return out


def keep_logging(run_id: int, stop: threading.Event) -> None:
    from sqlalchemy import func, insert, select, update
    from sqlmodel import Session

    from app.db import get_engine
    from app.models import MetricPoint, Run

    with Session(get_engine()) as session:
        step = session.execute(select(func.max(MetricPoint.step)).where(MetricPoint.run_id == run_id)).scalar() or 0
        session.execute(update(Run).where(Run.id == run_id).values(status="running"))
        session.commit()
        while not stop.wait(1.0):
            step += 1
            rows = [{"run_id": run_id, "step": step, "key": k, "value": 1.0 / step, "wall_time": time.time()} for k in KEYS]
            session.execute(insert(MetricPoint), rows)
            session.execute(update(Run).where(Run.id == run_id).values(last_step=step))
            session.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="", help="empty = SQLite in a temp dir")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the live page is left open")
    parser.add_argument("--port", type=int, default=8767)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench_dashboard_"))
    os.environ["DISTILL_HOME"] = str(home)
    os.environ["DISTILL_DATABASE_URL"] = args.database_url or f"sqlite:///{home / 'distill.db'}"
    os.environ.setdefault("DISTILL_REDIS_URL", "redis://127.0.0.1:6379/15")
    run_ids = seed(args.runs, args.steps)

    print("\nhandler (server side, median of 5; ticks median of 50):")
    for name, value in bench_handlers(run_ids).items():
        print(f"  {name:28s} {value * 1000:8.1f} ms" if isinstance(value, float) else f"  {name:28s} {value:8d}")

    server = start_server(args.port, home / "server.log")
    try:
        time.sleep(3)
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{args.port}/ui/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit((home / "server.log").read_text())
            time.sleep(0.5)
        print(f"\nserver RSS after start: {rss_mb(server.pid):.0f} MB")
        result = bench_browser(f"http://127.0.0.1:{args.port}", run_ids, server, args.minutes)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\nbrowser (navigation until drawn, median of 3):")
    for name in ("runs table page, cold", "runs table page", "10-run compare page, data in", "10-run compare page, drawn"):
        print(f"  {name:32s} {result[name] * 1000:8.0f} ms")
    print(f"  most points in one drawn line    {result['points per series in the page']:8d}")
    samples = result["rss samples"]
    print(f"\nserver RSS with a live page open {args.minutes:g} min (s, MB): {samples}")
    print(f"  growth first->last sample: {samples[-1][1] - samples[0][1]:+.1f} MB; page header: {result['steps seen by the page']!r}")


if __name__ == "__main__":
    main()
