"""uvicorn serving an ASGI app in a thread of the test process: the same settings, database and Redis,
over real HTTP (what a TestClient cannot show: streaming, keep-alive, connections held)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import uvicorn

from tests.services import free_port

START_TIMEOUT_SECONDS = 60.0


@contextmanager
def serve_in_thread(app, log_level: str = "warning", lifespan: str = "off") -> Iterator[str]:
    """Serve `app` on a free local port; yields its base URL ("http://127.0.0.1:PORT"). `lifespan="on"`
    runs the app's startup (the teacher server's batching loop lives there)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan=lifespan))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, f"uvicorn did not start on port {port}"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def address_of(url: str) -> tuple[str, int]:
    """(host, port) of a base URL, for http.client."""
    parts = urlsplit(url)
    return parts.hostname, parts.port


@contextmanager
def answering_teacher_url() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that answers the preflight's teacher-server probes (GET /info, GET /v1/models)
    and nothing else: (its base URL, the paths requested so far). For tests about which URLs a spec may
    name, where no teacher needs to score anything."""
    from fastapi import FastAPI, Request

    seen: list[str] = []
    app = FastAPI()

    @app.middleware("http")
    async def record(request: Request, call_next):
        seen.append(request.url.path)
        return await call_next(request)

    @app.get("/info")
    def info() -> dict:
        return {"model": "answering-stub"}

    @app.get("/v1/models")
    def models() -> dict:
        return {"data": [{"id": "answering-stub"}]}

    with serve_in_thread(app) as url:
        yield url, seen
