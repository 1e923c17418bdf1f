"""The Celery implementation of `app.queue.RunQueue` (DISTILL_QUEUE=worker.queue:CeleryQueue, the default).

Messages go to the `gpu` queue (or a host's `gpu.<host>`) of the Redis broker named by DISTILL_REDIS_URL, read at each call
(`distill up` picks Redis's port at start; tests move it between sessions).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

from app.settings import get_settings
from worker.celery_app import GPU_QUEUE, RUN_TASK, enqueue_run

PRIORITY_STEPS = (3, 6, 9)


def priority_keys(queue: str) -> list[str]:
    """kombu's Redis transport keeps one list per priority step: `gpu`, then `gpu\x06\x163`, ... (kombu.transport.redis)"""
    return [queue, *(f"{queue}\x06\x16{step}" for step in PRIORITY_STEPS)]


PRIORITY_KEYS = priority_keys(GPU_QUEUE)


class CeleryQueue:
    """Runs as Celery tasks `worker.tasks.run_experiment(run_id)` on the `gpu` queue or a host's `gpu.<host>`."""

    def enqueue(self, run_id: int, queue: str | None = None) -> str:
        return enqueue_run(run_id, queue)

    def revoke(self, message_id: str) -> None:
        """Take the message out of the queue list that holds it. Not Celery's revoke broadcast: that went
        through the app's default broker pool (not the Redis DISTILL_REDIS_URL names now), and each worker
        that got it asked for a result backend there is none of ("Failed to mark task ... as revoked")."""
        client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
        try:
            for key in client.scan_iter(match=f"{GPU_QUEUE}*", count=1000):
                if client.type(key) == b"list":
                    for raw in client.lrange(key, 0, -1):
                        if _message_id(raw) == message_id:
                            client.lrem(key, 1, raw)
        finally:
            client.close()

    def waiting(self, queue: str | None = None) -> set[int]:
        client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=5)
        try:
            if queue is None:  # every queue: the shared one and each host's
                keys = [k for k in client.scan_iter(match=f"{GPU_QUEUE}*", count=1000) if client.type(k) == b"list"]
            else:
                keys = priority_keys(queue)
            raw = [item for key in keys for item in client.lrange(key, 0, -1)]
        finally:
            client.close()
        return {run_id for item in raw if (run_id := _run_id(item)) is not None}

    def workers_answer(self, timeout: float) -> bool:
        from worker.celery_app import configure

        try:
            return bool(configure(get_settings().redis_url).control.ping(timeout=timeout))
        except Exception:  # the broker not there yet
            return False


def _message_id(raw: bytes) -> str | None:
    """The task id of one message as kombu stores it (Celery's protocol 2 carries it in the headers)."""
    try:
        return json.loads(raw)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None


def _run_id(raw: bytes) -> int | None:
    """The run id of one message as kombu stores it (JSON; the body, base64, is [args, kwargs, embed])."""
    try:
        message: dict[str, Any] = json.loads(raw)
        if message.get("headers", {}).get("task") != RUN_TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return int(json.loads(body)[0][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
