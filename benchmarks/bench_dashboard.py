"""Dashboard load times with many long runs, live-stream latency, and server memory over time.

    python benchmarks/bench_dashboard.py                          # SQLite in a temp dir, 30-minute soak
    python benchmarks/bench_dashboard.py --minutes 3 --runs 12    # shorter
    python benchmarks/bench_dashboard.py --database-url postgresql://postgres@127.0.0.1:5432/bench_ui

1. Writes 50 runs x 10,000 steps x 6 metric keys (3M points) straight into the database.
2. Times the handlers behind the runs table, a 10-run comparison, a live view's history and one refresh tick.
3. Starts the real app (uvicorn, create_app) and times the views in headless Chromium, from
   navigation to the table rows / the comparison's charts being drawn.
4. Streaming latency: a page on the live view of a running run; the worker's DatabaseReporter (the
   real one: buffered DB write, then XADD onto the run's Redis stream) logs steps; the chart script
   records when each point arrived and was drawn (window.distillCharts.draws). Latency = drawn minus
   the wall time log() stamped on the point (same machine, same clock).
5. Leaves that page open while the run keeps logging a step a second and samples the server's RSS.

The Launch form alone (page load, then a preset plus four field edits typed key by key), against this
tree's app or a server already running (`--url`, e.g. another checkout's, for a before/after):

    python benchmarks/bench_dashboard.py --form                       # starts the app on SQLite
    python benchmarks/bench_dashboard.py --form --url http://127.0.0.1:8000

It reports the page load (navigation until the runs table's load event answered, cold then the
median of 3), the time from picking the preset until the YAML pane shows all four edits, and how
many events the page sent to the server meanwhile (the refresh timers' ticks left out).
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
    from sqlmodel import Session

    from app.db import get_engine
    from app.metrics_query import downsample_series
    from app.services import comparison
    from ui import app as dashboard
    from ui import compare, live, runs

    out: dict[str, float] = {}
    out["runs table"], (table, _) = timed(lambda: runs.runs_table())
    assert len(table) == len(run_ids)
    ten = ", ".join(map(str, run_ids[:10]))
    out["10-run compare (tables)"], _ = timed(lambda: compare.compare(ten, compare.DEFAULT_KEYS))
    budget = compare.points_per_series(10)
    with Session(get_engine()) as session:
        out["10-run compare (curves)"], series = timed(
            lambda: comparison.series(
                session=session, run_ids=run_ids[:10], keys=compare.DEFAULT_KEYS, max_points=budget, x="step"
            )
        )
        out["compare max points/series"] = max(len(p) for by_key in series.values() for p in by_key.values())
        out["live history (all keys)"], history = timed(
            lambda: downsample_series(session, run_ids[0], KEYS, max_points=500)
        )
        out["live max points/series"] = max(len(p) for p in history.values())
    out["refresh tick (probe)"], _ = timed(lambda: live.probe(run_ids[0]), repeat=50)
    out["runs table tick"], _ = timed(dashboard.table_fingerprint, repeat=50)
    return out


def start_server(port: int, log: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:create_app",
        "--factory",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stdout=log.open("w"), stderr=subprocess.STDOUT)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def bench_browser(url: str, run_ids: list[int], server: subprocess.Popen, minutes: float) -> dict[str, object]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)  # a busy 2-core machine: measure, do not give up
    out: dict[str, object] = {}
    ids = ",".join(map(str, run_ids[:10]))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        t0 = time.perf_counter()
        page.goto(f"{url}/ui/")  # a first, cold load: the browser caches the page's assets
        expect(page.get_by_text(f"{len(run_ids)} run(s) match")).to_be_visible(timeout=180_000)
        out["runs table page, cold"] = time.perf_counter() - t0
        # the default comparison: loss, div/fkl, div/rkl, eval/exact_match (no data here: a "no data" note)
        drawn = "() => window.distillCharts && window.distillCharts.compareDrawn.length > 0"
        views = (
            ("runs table page", f"{url}/ui/", lambda: expect(page.get_by_text(f"{len(run_ids)} run(s) match")).to_be_visible()),
            ("10-run compare page, data in", f"{url}/ui/?compare={ids}",
             lambda: expect(page.locator("#compare-link")).to_contain_text("?compare=")),
            ("10-run compare page, drawn", f"{url}/ui/?compare={ids}", lambda: page.wait_for_function(drawn)),
        )  # fmt: skip
        in_page = []
        for name, target, done in views:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                page.goto(target)
                done()
                times.append(time.perf_counter() - t0)
                if name.endswith("drawn"):
                    in_page.append(page.evaluate("() => window.distillCharts.compareDrawn[0].ms") / 1000)
            out[name] = statistics.median(times)
        out["10-run compare, fetch + draw in the page"] = statistics.median(in_page)
        out["points per series in the page"] = page.evaluate(
            "() => Math.max(...[...document.querySelectorAll('.distill-compare .distill-chart')].filter(d => d.data)"
            ".flatMap(d => d.data.map(t => t.x.length)))"
        )
        out["charts in the comparison"] = page.evaluate(
            "() => [...document.querySelectorAll('.distill-compare .distill-chart')].filter(d => d.data).length"
        )

        # streaming: a page on a running run; the worker's reporter logs 4 steps a second for 30 s
        run_id = run_ids[0]
        set_running(run_id)  # before the page opens: a finished run's stream ends at once
        page.goto(f"{url}/ui/?run={run_id}")
        expect(page.locator(".distill-status")).to_contain_text("following the run live")
        stop = threading.Event()
        writer = threading.Thread(target=keep_logging, args=(run_id, stop, 0.25), daemon=True)
        writer.start()
        time.sleep(30)
        stop.set()
        writer.join()
        page.wait_for_timeout(3000)
        draws = page.evaluate("() => window.distillCharts.draws")
        latency = [(d["drawn"] - d["logged"]) / 1000 for d in draws]
        out["streamed points drawn"] = len(latency)
        out["log to drawn p50"] = percentile(latency, 50)
        out["log to drawn p95"] = percentile(latency, 95)
        out["log to drawn max"] = max(latency)
        out["log to arrived p95"] = percentile([(d["arrived"] - d["logged"]) / 1000 for d in draws], 95)

        # the same page left open while the run keeps logging a step a second
        stop = threading.Event()
        writer = threading.Thread(target=keep_logging, args=(run_id, stop, 1.0), daemon=True)
        writer.start()
        samples = []
        t_end = time.monotonic() + minutes * 60
        while True:
            heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize / 1048576 : -1")
            samples.append((time.monotonic(), rss_mb(server.pid), heap))
            if time.monotonic() >= t_end:
                break
            time.sleep(min(30.0, max(t_end - time.monotonic(), 0.1)))
        stop.set()
        writer.join()
        out["rss samples"] = [(round(t - samples[0][0]), round(mb, 1), round(heap, 1)) for t, mb, heap in samples]
        out["points drawn while open"] = page.evaluate("() => window.distillCharts.draws.length")
        out["steps seen by the page"] = page.locator("#live-header").inner_text().splitlines()[0]
        browser.close()
    return out


FORM_EDITS = (("max_steps", "40"), ("batch_size", "2"), ("max_new_tokens", "8"), ("eval_examples", "4"))
# the refresh timers and the redraws they start: not the form's doing
TICKS = ("table_tick", "sweeps_tick", "live_tick", "hosts_markdown", "runs_table", "run_summary", "sweeps_table",
         "show_sweep")  # fmt: skip


def bench_form(url: str, repeat: int = 3) -> dict[str, object]:
    """Page load, and a preset plus FORM_EDITS typed key by key (Tab after each), in headless Chromium."""
    import json

    import httpx
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=300_000)
    names = {d["id"]: d.get("api_name") for d in httpx.get(f"{url}/ui/config", timeout=120).json()["dependencies"]}
    out: dict[str, object] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(300_000)
        sent: list[str] = []

        def on_request(request) -> None:
            if request.method == "POST" and "/queue/join" in request.url:
                name = str(names.get(json.loads(request.post_data or "{}").get("fn_index"), "?"))
                if not name.rstrip("_0123456789").startswith(TICKS):
                    sent.append(name)

        page.on("request", on_request)
        loads = []
        for _ in range(repeat + 1):  # the first one cold
            t0 = time.perf_counter()
            page.goto(f"{url}/ui/")
            expect(page.get_by_text("run(s) match")).to_be_visible()
            loads.append(time.perf_counter() - t0)
        out["page load, cold"], out["page load"] = loads[0], statistics.median(loads[1:])

        edits, counts = [], []
        for _ in range(repeat):
            page.goto(f"{url}/ui/")
            expect(page.get_by_text("run(s) match")).to_be_visible()
            page.get_by_role("tab", name="Launch").click()
            page.get_by_role("button", name="Data").click()
            page.get_by_role("button", name="Training").click()
            pane = page.locator("#spec-yaml .cm-content")
            sent.clear()
            t0 = time.perf_counter()
            page.get_by_label("preset (examples/)").click()
            page.get_by_role("option", name="On-policy GKD (λ=1, β=0.5)").click()
            expect(page.locator("#form-message")).to_contain_text("Loaded preset")
            for field, value in FORM_EDITS:
                box = page.locator(f"#spec-{field} input").first
                box.click()
                box.press("Control+a")
                box.type(value, delay=80)  # a quick typist
                box.press("Tab")
            for field, value in FORM_EDITS:
                expect(pane).to_contain_text(f"{field}: {value}")
            edits.append(time.perf_counter() - t0)
            page.wait_for_timeout(1000)
            counts.append(len(sent))
        out["preset + 4 edits"] = statistics.median(edits)
        out["events sent for preset + 4 edits"] = statistics.median(counts)
        out["events sent (last try)"] = list(sent)
        browser.close()
    return out


def main_form(url: str | None, port: int) -> None:
    server = None
    if url is None:
        home = Path(tempfile.mkdtemp(prefix="bench_dashboard_"))
        os.environ["DISTILL_HOME"] = str(home)
        os.environ.setdefault("DISTILL_DATABASE_URL", f"sqlite:///{home / 'distill.db'}")
        os.environ.setdefault("DISTILL_REDIS_URL", "redis://127.0.0.1:6379/15")
        from app.db import init_db

        init_db()
        server, url = start_server(port, home / "server.log"), f"http://127.0.0.1:{port}"
        wait_serving(url, server, home / "server.log")
    try:
        result = bench_form(url)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    load = os.getloadavg()
    print(f"\nLaunch form at {url} (load average {load[0]:.1f}, {os.cpu_count()} CPUs):")
    for name in ("page load, cold", "page load", "preset + 4 edits"):
        print(f"  {name:36s} {result[name]:8.2f} s")
    print(f"  {'events sent for preset + 4 edits':36s} {result['events sent for preset + 4 edits']:8.0f}")
    print(f"  last try's events: {result['events sent (last try)']}")


def wait_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/ui/", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.5)


def set_running(run_id: int) -> None:
    from sqlalchemy import update
    from sqlmodel import Session

    from app.db import get_engine
    from app.models import Run

    with Session(get_engine()) as session:
        session.execute(update(Run).where(Run.id == run_id).values(status="running"))
        session.commit()


def keep_logging(run_id: int, stop: threading.Event, every: float) -> None:
    """The worker's side: a DatabaseReporter (DB write + Redis stream) logging a step every `every` s."""
    from sqlalchemy import func, select
    from sqlmodel import Session

    from app import events
    from app.db import get_engine
    from app.models import MetricPoint
    from worker.reporter import DatabaseReporter

    engine = get_engine()
    with Session(engine) as session:
        step = session.execute(select(func.max(MetricPoint.step)).where(MetricPoint.run_id == run_id)).scalar() or 0
    reporter = DatabaseReporter(run_id, engine=engine, redis_client=events.redis_client())
    try:
        while not stop.wait(every):
            step += 1
            reporter.log(step, {k: 1.0 / step for k in KEYS})
            reporter.should_stop()
    finally:
        reporter.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="", help="empty = SQLite in a temp dir")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long the live page is left open")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--form", action="store_true", help="only the page load and the Launch form's round trips")
    parser.add_argument("--url", default=None, help="with --form: a running server instead of this tree's app")
    args = parser.parse_args()
    if args.form:
        main_form(args.url, args.port)
        return

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
    for name in ("runs table page, cold", "runs table page", "10-run compare page, data in", "10-run compare page, drawn",
                 "10-run compare, fetch + draw in the page"):  # fmt: skip
        print(f"  {name:42s} {result[name] * 1000:8.0f} ms")
    print(f"  charts in the comparison / most points in one line: {result['charts in the comparison']} / "
          f"{result['points per series in the page']}")  # fmt: skip
    print(f"\nstreaming, worker log() to point drawn ({result['streamed points drawn']} points, 4 steps/s x 6 keys):")
    for name in ("log to drawn p50", "log to drawn p95", "log to drawn max", "log to arrived p95"):
        print(f"  {name:42s} {result[name] * 1000:8.0f} ms")
    samples = result["rss samples"]
    print(f"\nserver RSS, page JS heap with a live page open {args.minutes:g} min (s, MB, MB): {samples}")
    print(f"  growth first->last sample: {samples[-1][1] - samples[0][1]:+.1f} MB; points drawn: "
          f"{result['points drawn while open']}; page header: {result['steps seen by the page']!r}")  # fmt: skip


if __name__ == "__main__":
    main()
