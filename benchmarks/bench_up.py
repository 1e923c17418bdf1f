"""`distill up` from start to an answering port: what a new user waits for after the install.

    python benchmarks/bench_up.py               # 3 starts, each in a fresh DISTILL_HOME on a free port
    python benchmarks/bench_up.py --repeats 5
    git archive f670867 | tar -x -C /tmp/before && python benchmarks/bench_up.py --repo /tmp/before  # the baseline

Each start runs the real `distill up --gpus 0` (embedded Redis, SQLite, the API and one CPU worker)
and records, from the moment the command is started: /api/health answering 200, the URL printed,
and /api/health listing nothing as still starting (the API, the dashboard and the worker are up).
Then it sends Ctrl-C and waits for the clean stop.
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.services import free_port  # noqa: E402


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return json.loads(response.read()) if response.status == 200 else None
    except OSError:
        return None


def one_start(timeout: float, repo: Path) -> dict[str, float]:
    port, home = free_port(), tempfile.mkdtemp(prefix="bench-up-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")} | {"DISTILL_HOME": home}
    start = time.monotonic()
    up = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(port), "--gpus", "0"], cwd=repo,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    seen: dict[str, float] = {}

    def read() -> None:
        for line in up.stdout:  # type: ignore[union-attr]
            if "open http://" in line and "url" not in seen:
                seen["url"] = time.monotonic() - start

    threading.Thread(target=read, daemon=True).start()
    try:
        while time.monotonic() - start < timeout:
            answer = health(port)
            if answer is not None:
                seen.setdefault("health", time.monotonic() - start)
                if not answer.get("starting") and answer.get("status") == "ok":
                    seen["all_up"] = time.monotonic() - start
                    break
            time.sleep(0.05)
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(180)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--repo", type=Path, default=ROOT, help="Checkout to run (e.g. an older commit, unpacked).")
    args = parser.parse_args()
    rows = []
    for i in range(args.repeats):
        load = os.getloadavg()[0]
        seen = one_start(args.timeout, args.repo)
        rows.append(seen)
        shown = "  ".join(f"{k} {v:.2f} s" for k, v in seen.items())
        print(f"start {i + 1}: {shown}  (load average {load:.1f})", flush=True)
    for key in ("health", "url", "all_up"):
        values = [row[key] for row in rows if key in row]
        if values:
            print(f"{key:>7}: median {statistics.median(values):.2f} s, max {max(values):.2f} s over {len(values)}")


if __name__ == "__main__":
    main()
