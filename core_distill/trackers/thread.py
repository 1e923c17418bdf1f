"""One tracker on a thread of its own: the run enqueues, the thread calls the tracker's client.

The training loop never waits on a tracker: a step's metrics are queued and the step goes on. The first
exception a tracker raises (its server is down, it refused a value) is logged once as a warning and the
tracker is dropped for the rest of the run; so is a tracker whose queue fills (a server far slower than
the run). `close` waits at most `finish_seconds` for what is queued.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Any

log = logging.getLogger("core_distill.trackers")

QUEUE_LIMIT = 100_000  # calls waiting for a slow tracker before it is dropped (a step is one call)
_CLOSE = object()


class TrackerThread:
    def __init__(self, name: str, backend: Any, *, finish_seconds: float = 120.0):
        self.name = name
        self.backend = backend
        self.finish_seconds = finish_seconds
        self.failed: str | None = None  # why the tracker was dropped (None while it works)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_LIMIT)
        self._thread = threading.Thread(target=self._work, name=f"tracker-{name}", daemon=True)
        self._thread.start()

    def call(self, method: str, *args: Any) -> None:
        """Queue `backend.method(*args)`; a dropped tracker ignores it."""
        if self.failed is not None:
            return
        try:
            self._queue.put_nowait((method, args))
        except queue.Full:
            self._fail(f"more than {QUEUE_LIMIT} calls wait for it (far slower than the run)")

    def close(self) -> None:
        """Wait (at most finish_seconds) until every queued call ran."""
        with contextlib.suppress(queue.Full):
            self._queue.put((_CLOSE, ()), timeout=1.0)
        self._thread.join(self.finish_seconds)
        if self._thread.is_alive():
            self._fail(f"still busy after {self.finish_seconds:.0f} s at the end of the run; what it had not sent is lost")

    def _work(self) -> None:
        while True:
            method, args = self._queue.get()
            if method is _CLOSE:
                return
            if self.failed is not None:
                continue  # drain without calling a dropped tracker
            try:
                getattr(self.backend, method)(*args)
            except Exception as exc:  # noqa: BLE001  (any failure of a tracker: drop it, never the run)
                self._fail(f"{type(exc).__name__}: {_first_line(exc)}")

    def _fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            log.warning("tracker %s stopped reporting: %s; the run goes on without it", self.name, why)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else repr(exc))[:500]
