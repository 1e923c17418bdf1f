"""The live stream over a real HTTP server: replay, follow, resume with Last-Event-ID, end on a final status."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from app import events
from app.main import create_app
from tests.helpers.servers import serve_in_thread


@pytest.fixture
def server(service_env) -> Iterator[str]:
    """The API over real HTTP in a thread of this process (same settings, database and Redis)."""
    with serve_in_thread(create_app(ui=False)) as url:
        yield url


def read_events(response: httpx.Response, count: int | None = None) -> list[dict]:
    """Parse text/event-stream until `count` events arrived (or the server ended the stream)."""
    received: list[dict] = []
    event: dict = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue  # keep-alive comment
        if not line:
            if event:
                received.append(event)
                event = {}
                if count is not None and len(received) == count:
                    break
            continue
        field, _, value = line.partition(":")
        event[field] = value.removeprefix(" ")
    return received


def points(step: int) -> dict:
    return {"points": [{"step": step, "key": "loss", "value": 1.0 / step, "wall_time": time.time()}]}


def test_replay_then_resume_after_last_event_id(server, service_env):
    with httpx.Client(base_url=server, timeout=30) as http:
        run_id = http.post("/api/experiments", json={"name": "live", "spec": _spec()}).json()["run_id"]
        client = events.redis_client(service_env.redis_url)
        for step in (1, 2, 3):
            events.publish(client, run_id, "metrics", points(step))
        with http.stream("GET", f"/api/runs/{run_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            first = read_events(response, count=3)
        assert [e["event"] for e in first] == ["metrics"] * 3
        assert [int(e["data"].split('"step": ')[1].split(",")[0]) for e in first] == [1, 2, 3]
        last_id = first[-1]["id"]

        # while the client is away: two more steps, then the user cancels (a final status)
        for step in (4, 5):
            events.publish(client, run_id, "metrics", points(step))
        assert http.post(f"/api/runs/{run_id}/cancel").json()["status"] == "cancelled"

        with http.stream("GET", f"/api/runs/{run_id}/events", headers={"Last-Event-ID": last_id}) as response:
            rest = read_events(response)  # the server ends the stream after the final status
        assert [e["event"] for e in rest] == ["metrics", "metrics", "status"]
        assert '"step": 4' in rest[0]["data"] and '"step": 5' in rest[1]["data"]
        assert '"cancelled"' in rest[2]["data"]
        assert all(e["id"] > last_id for e in rest)  # stream ids grow; nothing replayed twice

        bad = http.get(f"/api/runs/{run_id}/events", headers={"Last-Event-ID": "garbage"})
        assert bad.status_code == 422


def test_follows_new_events_as_they_are_published(server, service_env):
    with httpx.Client(base_url=server, timeout=30) as http:
        run_id = http.post("/api/experiments", json={"name": "live", "spec": _spec()}).json()["run_id"]
        client = events.redis_client(service_env.redis_url)
        sent_at: dict[int, float] = {}

        def publish_later() -> None:
            for step in (1, 2, 3):
                time.sleep(0.3)
                sent_at[step] = time.monotonic()
                events.publish(client, run_id, "metrics", points(step))

        with http.stream("GET", f"/api/runs/{run_id}/events") as response:
            threading.Thread(target=publish_later, daemon=True).start()
            arrived = []
            for event in read_events_iter(response):
                arrived.append((event, time.monotonic()))
                if len(arrived) == 3:
                    break
        assert [e["event"] for e, _ in arrived] == ["metrics"] * 3
        # pushed, not polled: each arrives well before the stream's idle re-check (5 s)
        assert all(t - sent_at[i + 1] < 2.0 for i, (_, t) in enumerate(arrived))


def test_a_finished_run_without_stream_events_gets_its_status_from_the_database(server, service_env):
    with httpx.Client(base_url=server, timeout=30) as http:
        run_id = http.post("/api/experiments", json={"name": "done", "spec": _spec()}).json()["run_id"]
        http.post(f"/api/runs/{run_id}/cancel")
        events.forget(events.redis_client(service_env.redis_url), run_id)  # as if Redis had lost it
        with http.stream("GET", f"/api/runs/{run_id}/events") as response:
            received = read_events(response)
        assert [e["event"] for e in received] == ["status"] and '"cancelled"' in received[0]["data"]
        assert "id" not in received[0]  # not a stream event: a reconnect replays from where it was


def read_events_iter(response: httpx.Response) -> Iterator[dict]:
    event: dict = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if event:
                yield event
                event = {}
            continue
        field, _, value = line.partition(":")
        event[field] = value.removeprefix(" ")


def _spec() -> dict:
    from tests.helpers.specs import tiny_spec

    return tiny_spec()


def test_pings_are_no_events_to_an_sse_client(server, service_env, monkeypatch):
    """httpx-sse dispatches an (empty) event at every blank line once an id was seen: a ping must be a
    comment line alone. Pings every 0.2 s here, over a stream that is silent for a second between events."""
    from httpx_sse import connect_sse

    from app.api.routes import runs as run_routes

    monkeypatch.setattr(run_routes, "PING_SECONDS", 0.2)
    with httpx.Client(base_url=server, timeout=30) as http:
        run_id = http.post("/api/experiments", json={"name": "quiet", "spec": _spec()}).json()["run_id"]
        client = events.redis_client(service_env.redis_url)
        events.publish(client, run_id, "metrics", points(1))

        def later() -> None:
            time.sleep(1.0)  # about five pings
            events.publish(client, run_id, "metrics", points(2))
            with httpx.Client(base_url=server, timeout=30) as other:  # not the streaming client's connection
                other.post(f"/api/runs/{run_id}/cancel")  # a final status ends the stream

        thread = threading.Thread(target=later, daemon=True)
        thread.start()
        raw: list[str] = []
        with connect_sse(http, "GET", f"/api/runs/{run_id}/events") as source:
            source.response.iter_text = _recording(source.response.iter_text, raw)
            received = [(e.event, e.data) for e in source.iter_sse()]
        thread.join(30)
    assert "".join(raw).count(": ping\n") >= 3  # pings were sent...
    assert [kind for kind, _ in received] == ["metrics", "metrics", "status"]  # ...and none became an event
    assert all(data for _, data in received)


def _recording(iter_text, into: list[str]):
    def wrapper(*args, **kwargs):
        for text in iter_text(*args, **kwargs):
            into.append(text)
            yield text

    return wrapper
