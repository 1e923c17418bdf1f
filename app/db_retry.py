"""Riding through a database outage: which errors mean "the database is away", and retrying until it is back.

`with_db_retry` repeats a unit of work (that opens its own session) with capped exponential backoff for
up to `db_retry_seconds`. `Reachability` remembers whether the database answered lately: one log line
when it stops answering and one when it is back, not one per try.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import exc as sa_exc

from app.models import utcnow
from app.settings import get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 10.0
SQLITE_BUSY_MESSAGES = ("database is locked", "database is busy", "unable to open database file")


# SQLSTATEs of a server going away or refusing for now; other errors (a statement timeout, a deadlock,
# a bad statement) are the statement's, not an outage: retrying them for minutes would hide a bug
PG_GOING_AWAY = {"57P01", "57P02", "57P03", "53300"}  # admin/crash shutdown, starting up, too many clients


def is_db_unavailable(exc: BaseException | None) -> bool:
    """True when `exc`, or an error it was raised from, says the database could not be reached or went
    away (worth retrying later), not that the statement was wrong: a lost or refused connection, a server
    shutting down, SQLite locked."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_outage(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DisconnectionError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    module = type(orig).__module__
    if module.startswith("psycopg"):
        import psycopg

        if not isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
            return False
        state = getattr(orig, "sqlstate", None)  # None: the client's own failure (refused, reset, closed)
        return state is None or state.startswith("08") or state in PG_GOING_AWAY
    if isinstance(exc, sa_exc.InterfaceError):
        return True
    if isinstance(exc, sa_exc.OperationalError) or type(orig).__name__ == "OperationalError":
        message = str(orig).lower()
        return any(text in message for text in SQLITE_BUSY_MESSAGES)
    return False


class Reachability:
    """Whether the database answered the last try of `what`, when it last did not, and when to try again."""

    def __init__(self, what: str):
        self.what = what
        self.down_since: float | None = None  # monotonic time of the outage's first failure
        self.last_failure_at: datetime | None = None  # wall time (UTC) of the latest failure
        self._delay = FIRST_DELAY_SECONDS
        self._next_try = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a failed try; the seconds to wait before the next one (0.5 s doubling to 10 s)."""
        now = time.monotonic()
        self.last_failure_at = utcnow()
        if self.down_since is None:
            self.down_since = now
            log.warning("database unavailable (%s): %s; retrying", self.what, first_line(exc))
        delay, self._delay = self._delay, min(self._delay * 2, MAX_DELAY_SECONDS)
        self._next_try = now + delay
        return delay

    def noted(self, exc: BaseException) -> bool:
        """True (and the failure noted, one log line per outage) when `exc` is an outage; False for any
        other error, which the caller logs: the three background loops share this handling."""
        if not is_db_unavailable(exc):
            return False
        self.failed(exc)
        return True

    def reached(self) -> None:
        if self.down_since is not None:
            log.warning("database reachable again (%s) after %.1f s", self.what, time.monotonic() - self.down_since)
        self.down_since = None
        self._delay = FIRST_DELAY_SECONDS
        self._next_try = 0.0

    def due(self) -> bool:
        """True unless the database is down and its backoff delay has not passed yet."""
        return self.down_since is None or time.monotonic() >= self._next_try


def with_db_retry(fn: Callable[[], T], *, what: str, deadline_s: float | None = None) -> T:
    """fn(), tried again while the database is unavailable, for up to `deadline_s` seconds (default:
    the `db_retry_seconds` setting); then the last error is raised. Other errors are raised at once.
    fn must open its own session: each try starts from a fresh connection."""
    deadline = time.monotonic() + (get_settings().db_retry_seconds if deadline_s is None else deadline_s)
    reach = Reachability(what)
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not is_db_unavailable(exc):
                raise
            delay = reach.failed(exc)
            if time.monotonic() + delay > deadline:
                log.error(
                    "database unavailable (%s): giving up after %.1f s", what, time.monotonic() - reach.down_since
                )
                raise
            time.sleep(delay)
            continue
        reach.reached()
        return result


def first_line(exc: BaseException) -> str:
    """`Type: first line` of an error (of the driver's own error for a SQLAlchemy one), for a log line."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
