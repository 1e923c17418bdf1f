"""`distill api` answers at once: a small ASGI shell holds the port while the full app is built.

Importing the API (FastAPI, SQLModel, torch through the preflight checks) and building the Gradio
dashboard take seconds, minutes on a loaded machine. The shell imports only the standard library:
uvicorn serves it as soon as the socket is bound, and meanwhile it answers

    GET /api/health     200 {"status": "starting", "starting": ["api", "dashboard", ...]}
    GET /favicon.ico    the icon
    GET / /ui /ui/      a page that says what is still starting and reloads itself (503)

and holds every other request until the app is built, then hands it (and everything after) to the
app. The app's own lifespan (Gradio's queue) runs once it is built.

`distill up` writes the parts it starts itself (the workers) to DISTILL_HOME/startup.json; /api/health
lists them too, so one place says what is still starting.

Test hook: with DISTILL_START_GATE=FILE, the background build waits until FILE exists (tests/app/test_up.py
holds the build back that way and checks that the port answers meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("app.boot")

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]

STARTUP_FILE = "startup.json"
GATE_ENV = "DISTILL_START_GATE"
HOLD_SECONDS = 900.0  # a request that arrives during the build waits this long for it at most
REDIRECTED_PAGES = ("/", "/ui", "/ui/")


# --- what is still starting --------------------------------------------------------------------
def startup_file(home: Path) -> Path:
    return home / STARTUP_FILE


def write_starting(home: Path, starting: list[str]) -> None:
    """Record the parts `distill up` (this process) is still starting; [] removes the file."""
    path = startup_file(home)
    if not starting:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "starting": starting}))
    tmp.replace(path)  # readers see the old list or the new one, never half a file


def read_starting(home: Path) -> list[str]:
    """The parts a live `distill up` says it is still starting (none when it has exited)."""
    try:
        record = json.loads(startup_file(home).read_text())
        os.kill(int(record["pid"]), 0)  # a file left by a killed supervisor says nothing
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [str(part) for part in record.get("starting", [])]


def wait_for_gate(what: str) -> None:
    """The test hook: block until the file named by DISTILL_START_GATE exists (no-op when unset)."""
    gate = os.environ.get(GATE_ENV)
    if not gate:
        return
    log.warning("%s waits for %s (%s is set)", what, gate, GATE_ENV)
    while not Path(gate).exists():
        time.sleep(0.1)


# --- the icon ------------------------------------------------------------------------------------
def _icon_png(size: int = 32) -> bytes:
    """A 32x32 PNG drawn here: an amber funnel (distillation) on a dark square."""
    import struct
    import zlib

    def inside(x: float, y: float) -> bool:
        if 6 <= y < 17:  # the cone narrows from 22 px wide to 6
            half = 11 - (y - 6) * 8 / 11
            return abs(x - 16) <= half
        return 17 <= y < 27 and 13 <= x < 19  # the stem

    rows = b"".join(
        b"\0"
        + b"".join(bytes((245, 158, 11, 255) if inside(x + 0.5, y + 0.5) else (31, 41, 55, 255)) for x in range(size))
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


FAVICON_PNG = _icon_png()


async def send_bytes(send: Callable, status: int, body: bytes, content_type: str, headers: list | None = None) -> None:
    head = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


# --- the shell -----------------------------------------------------------------------------------
class StartingApp:
    """An ASGI app that serves the app `build()` returns once it exists, and answers by itself before."""

    def __init__(self, build: Callable[[], ASGIApp], home: Path, steps: list[str]):
        self.build = build
        self.home = home
        self.steps = list(steps)  # this process's parts still starting ("api", "dashboard"); the build pops them
        self.app: ASGIApp | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        self._ready: asyncio.Event | None = None
        self._inner: _Lifespan | None = None

    def done(self, step: str) -> None:
        """Called by the build (from its thread) when one of its steps is finished."""
        with contextlib.suppress(ValueError):
            self.steps.remove(step)
        print(f"{step}: ready after {time.monotonic() - self.started:.1f} s", flush=True)

    def starting(self) -> list[str]:
        return [*self.steps, *read_starting(self.home)]

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif self.app is not None:
            await self._forward(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/api/health":
            body = {"status": "starting", "database": "starting", "redis": "starting", "starting": self.starting()}
            await send_bytes(send, 200, json.dumps(body).encode(), "application/json")
        elif scope["type"] == "http" and scope["path"] == "/favicon.ico":
            await send_bytes(send, 200, FAVICON_PNG, "image/png")
        elif scope["type"] == "http" and scope["method"] == "GET" and scope["path"] in REDIRECTED_PAGES:
            await send_bytes(send, 503, self._page().encode(), "text/html; charset=utf-8", [(b"retry-after", b"1")])
        else:
            await self._hold(scope, receive, send)

    async def _hold(self, scope: Scope, receive: Callable, send: Callable) -> None:
        """Wait for the build, then serve the request as if it had come later."""
        assert self._ready is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), HOLD_SECONDS)
        if self.app is not None:
            await self._forward(scope, receive, send)
        elif scope["type"] == "http":
            detail = self.error or f"the service is still starting ({', '.join(self.starting())})"
            await send_bytes(send, 503, json.dumps({"detail": detail}).encode(), "application/json")
        # a websocket that arrives before the app: closed without an answer (Gradio reconnects)

    async def _forward(self, scope: Scope, receive: Callable, send: Callable) -> None:
        assert self.app is not None and self._inner is not None
        if self._inner.state:
            scope.setdefault("state", {}).update(self._inner.state)
        await self.app(scope, receive, send)

    def _page(self) -> str:
        parts = "".join(f"<li>{html.escape(part)}</li>" for part in self.starting())
        seconds = time.monotonic() - self.started
        return (
            "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='1'>"
            "<link rel='icon' href='/favicon.ico'><title>distill: starting</title></head>"
            "<body style='font-family:system-ui,sans-serif;margin:3em'>"
            f"<h2>distill is starting ({seconds:.0f} s)</h2><p>Still starting:</p><ul>{parts}</ul>"
            "<p>This page reloads itself; the dashboard appears when it is built.</p></body></html>"
        )

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        await receive()  # lifespan.startup
        self._ready = asyncio.Event()
        task = asyncio.create_task(self._load())
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        task.cancel()
        if self._inner is not None and self.app is not None:
            with contextlib.suppress(Exception):
                await self._inner.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def _load(self) -> None:
        assert self._ready is not None
        try:
            # a thread: imports and the dashboard build hold the GIL in bursts; the loop answers in between
            app = await asyncio.get_running_loop().run_in_executor(None, self.build)
            inner = _Lifespan(app)
            await inner.startup()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("the app failed to start")
            self.error = f"the app failed to start: {type(exc).__name__}: {exc}"
            self._ready.set()
            os._exit(1)  # nothing can serve; the supervisor (or the user) sees the exit and the logged error
        self._inner, self.app = inner, app
        self.steps.clear()
        self._ready.set()


class _Lifespan:
    """Runs an ASGI app's lifespan protocol by hand (startup now, shutdown later)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._started: asyncio.Future = asyncio.get_running_loop().create_future()
        self._stopped: asyncio.Future = asyncio.get_running_loop().create_future()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._started.set_result(None)
        elif kind == "lifespan.startup.failed":
            self._started.set_exception(RuntimeError(message.get("message", "startup failed")))
        elif kind.startswith("lifespan.shutdown") and not self._stopped.done():
            self._stopped.set_result(None)

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        self._task = asyncio.create_task(self.app(scope, self._inbox.get, self._send))
        await self._inbox.put({"type": "lifespan.startup"})
        await asyncio.wait({self._started, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done() and not self._started.done():
            self._task.result()  # raises the app's error
        self._started.result()

    async def shutdown(self) -> None:
        await self._inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(asyncio.shield(self._stopped), 30)
