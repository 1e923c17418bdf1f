"""The live stream of a run: metric points, samples and status changes on a Redis Stream.

The database is the source of truth; the stream is the fast path for live views. Stream ids
(`<ms>-<seq>`) are the SSE event ids, so a client that reconnects with Last-Event-ID gets
exactly what it missed (up to the stream's cap).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import redis

from app.settings import get_settings

STREAM_MAXLEN = 200_000  # per run; old entries are trimmed approximately, the DB keeps everything

# Event kinds and their data:
#   started  {"attempt": 1, "step": 0}           (a run's first attempt began training)
#   metrics  {"points": [{"step", "key", "value", "wall_time"}, ...]}
#   samples  {"step": int}                      (fetch them from the DB)
#   status   {"status": str, "error": str | None, "last_step": int}
#   resumed  {"step": int, "attempt": int}      (a later attempt: drop anything after this step, it restarts there)
KINDS = ("started", "metrics", "samples", "status", "resumed")


def stream_key(run_id: int) -> str:
    return f"distill:run:{run_id}:events"


def redis_client(url: str | None = None) -> redis.Redis:
    url = url or get_settings().redis_url
    if not url:
        raise RuntimeError("DISTILL_REDIS_URL is not set: start the service with `distill up`, or set it")
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=30, health_check_interval=30)


def publish(client: redis.Redis, run_id: int, kind: str, data: dict[str, Any]) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return client.xadd(
        stream_key(run_id), {"kind": kind, "data": json.dumps(data)}, maxlen=STREAM_MAXLEN, approximate=True
    )


def read(
    client: redis.Redis, run_id: int, after: str = "0-0", *, block_ms: int | None = None, count: int = 500
) -> list[tuple[str, str, dict[str, Any]]]:
    """Events after stream id `after`, oldest first: (id, kind, data). Blocks up to block_ms for new ones."""
    reply = client.xread({stream_key(run_id): after}, count=count, block=block_ms)
    return [
        (event_id, fields["kind"], json.loads(fields["data"])) for _, entries in reply for event_id, fields in entries
    ]


CURSOR_HEADER = "X-Stream-Cursor"  # on a history response: the stream id to follow it from


@functools.cache
def _shared_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)


def last_id(run_id: int) -> str | None:
    """The newest event id of a run's stream ("0-0" when empty); None without Redis or when it does not answer."""
    url = get_settings().redis_url
    if not url:
        return None
    try:
        newest = _shared_client(url).xrevrange(stream_key(run_id), count=1)
    except redis.RedisError:
        return None
    return newest[0][0] if newest else "0-0"


def forget(client: redis.Redis, run_id: int) -> None:
    client.delete(stream_key(run_id))
