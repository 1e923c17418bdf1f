"""The run queue as the app sees it, under its long-standing names: `enqueue_run` is
`app.services.dispatch.queue_run` (book, then publish); the broker itself is `app.broker`."""

from __future__ import annotations

from app.broker import RunQueue, get_queue, publish, publish_booked, republish_missing, revoke, use
from app.services.dispatch import queue_run as enqueue_run

__all__ = ["RunQueue", "enqueue_run", "get_queue", "publish", "publish_booked", "republish_missing", "revoke", "use"]
