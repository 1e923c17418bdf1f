"""The host heartbeat, in a process of its own: `python -m worker.host_beat HOST LABELS PARENT_PID`.

Every DISTILL_HEARTBEAT_SECONDS it tells the database that host HOST is alive (announcing it again,
with GPU LABELS, when its row was stopped or removed). It is not a thread of the Celery parent on
purpose: that parent forks a fresh pool child per run, and a child forked while a thread of the
parent was inside SQLite inherits SQLite's in-process lock state (the WAL write lock "held" by a
connection that does not exist in the child, or a mutex mid-acquire), so its every write waits for
the busy timeout and fails with `database is locked`, or it hangs in `connect`. It ends with its
parent (PR_SET_PDEATHSIG, and a check of the parent's pid at each beat) and on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from app.lifeline import die_with_parent

log = logging.getLogger("worker.host_beat")


def beat_forever(host: str, labels: list[str], parent_pid: int, stop: threading.Event) -> None:
    from sqlmodel import Session

    from app.db import get_engine
    from app.db_retry import Reachability
    from app.services import booking, dispatch
    from app.settings import get_settings
    from worker.celery_app import host_queue

    reach = Reachability(f"host heartbeat of {host}")
    while not stop.wait(get_settings().heartbeat_seconds):
        if os.getppid() != parent_pid:  # the worker is gone (reparented): no host to vouch for
            return
        try:
            with Session(get_engine()) as session:
                if not booking.host_heartbeat(session=session, name=host) and not stop.is_set():
                    booking.announce_host(session=session, name=host, labels=labels, queue=host_queue(host))
                    # runs that came while the row was gone took "waiting for GPUs": book them here now,
                    # not at the reaper's next pass (a test's emptied tables; a restored database)
                    dispatch.dispatch_waiting(session=session)
            reach.reached()
        except Exception as exc:  # a database hiccup must not end the heartbeat
            if not reach.noted(exc):  # an outage: one line per outage, not one per beat
                log.warning("host heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)


def main(argv: list[str]) -> int:
    host, labels, parent_pid = argv[0], argv[1].split(","), int(argv[2])
    die_with_parent(signal.SIGTERM)  # Linux: SIGTERM when the worker dies, even by SIGKILL
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the worker stops this one
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s: %(levelname)s/host-heartbeat] %(message)s")
    beat_forever(host, labels, parent_pid, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
