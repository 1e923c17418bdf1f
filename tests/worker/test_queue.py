"""The queue agrees with the database: `app.queue.republish_missing` on the real database and Redis (no worker, fast),
and the layering it relies on (the app reaches the worker only through DISTILL_QUEUE)."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import update
from sqlmodel import Session

from app import queue
from app.db import get_engine
from app.models import Experiment, Run, RunStatus, utcnow
from app.settings import get_settings
from worker.queue import PRIORITY_KEYS, CeleryQueue, _run_id

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def session(service_env):
    queue.use(None)  # load DISTILL_QUEUE afresh
    with Session(get_engine()) as session:
        yield session


def add_queued(session: Session, queued_seconds_ago: float, status: str = RunStatus.queued) -> int:
    experiment = Experiment(name="q", spec={})
    session.add(experiment)
    session.commit()
    run = Run(experiment_id=experiment.id, status=status, queued_at=utcnow() - timedelta(seconds=queued_seconds_ago))
    session.add(run)
    session.commit()
    return run.id


def broker_order() -> list[int]:
    """Run ids in the order a worker will take them (kombu LPUSHes and BRPOPs: oldest at the right)."""
    client = redis.Redis.from_url(get_settings().redis_url)
    return [_run_id(raw) for raw in reversed(client.lrange(PRIORITY_KEYS[0], 0, -1))]


def test_queued_runs_the_broker_lost_are_published_again_in_queue_order(session):
    second = add_queued(session, 60)
    first = add_queued(session, 90)
    third = add_queued(session, 30)
    add_queued(session, 120, status=RunStatus.cancelled)  # not queued: never published
    recent = add_queued(session, 0)  # its message may be on its way: left alone for now
    flagged = add_queued(session, 100)
    session.execute(update(Run).where(Run.id == flagged).values(cancel_requested=True))
    session.commit()

    assert queue.republish_missing(session=session) == [first, second, third]
    assert broker_order() == [first, second, third]
    assert all(session.get(Run, i).celery_task_id for i in (first, second, third))
    assert queue.republish_missing(session=session) == []  # the broker holds them now: nothing sent twice

    # the broker loses its data (Redis restarted without persistence): the same again, in the same order
    redis.Redis.from_url(get_settings().redis_url).flushdb()
    assert queue.republish_missing(session=session, older_than_seconds=0) == [first, second, third, recent]
    assert broker_order() == [first, second, third, recent]


def test_waiting_reads_the_run_ids_celery_published(session):
    ids = [CeleryQueue().enqueue(run_id) for run_id in (7, 3, 11)]
    assert len(set(ids)) == 3
    assert CeleryQueue().waiting() == {7, 3, 11}
    assert broker_order() == [7, 3, 11]


def test_the_app_reaches_the_worker_only_through_the_queue_setting():
    """Dependencies point worker -> app: no module of app/ imports worker (the CLI's `distill worker` excepted)."""
    offenders = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "worker" or n.startswith("worker.")]
    assert offenders == []
