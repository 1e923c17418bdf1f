"""Gang scheduling of multi-GPU runs on the real database (PostgreSQL when up, else SQLite): the policy
(FIFO, best fit, backfill, a sticky head-of-line reservation), guarded bookings that never double-book
a GPU (also with schedulers racing, on PostgreSQL and SQLite), GPUs freed by finish, cancel and loss,
and the API's view of hosts and GPUs. No worker process here: tests/worker/test_gpu_worker.py runs them."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import Session, col, select

from app import run_state
from app.db import get_engine, init_db, make_engine
from app.models import Experiment, GpuSlot, Run, RunStatus, WorkerHost, utcnow
from app.services import booking
from app.services.placement import Ask, HostView, plan
from tests.helpers.factories import post_experiment, row_counts
from tests.helpers.specs import tiny_spec

NOW = utcnow()


# --- the policy, as a pure function ------------------------------------------------------------------
def host(name: str, free: int, total: int, reserved_for: int | None = None) -> HostView:
    return HostView(name, [str(i) for i in range(total - free, total)], total, NOW, reserved_for)


def test_fifo_best_fit_and_exact_gpus():
    result = plan([host("a", 2, 2), host("b", 1, 1)], [Ask(1, 1), Ask(2, 2)])
    # run 1 takes the 1-GPU host (best fit), leaving both GPUs of `a` for run 2
    assert [(p.run_id, p.host, p.labels) for p in result.placements] == [(1, "b", ("0",)), (2, "a", ("0", "1"))]


def test_the_oldest_run_that_does_not_fit_reserves_a_host_and_later_runs_backfill_elsewhere():
    hosts = [host("a", 1, 2), host("b", 0, 1), host("c", 1, 1)]
    result = plan(hosts, [Ask(1, 2), Ask(2, 1), Ask(3, 1)])
    assert result.reservation == ("a", 1)  # run 1 waits for `a`, where 1 of its 2 GPUs is already free
    assert [(p.run_id, p.host) for p in result.placements] == [(2, "c")]  # backfill on another host
    assert "next on a" in result.waiting[1] and 3 in result.waiting  # run 3 may not take a's free GPU


def test_a_reservation_sticks_until_its_run_starts():
    # `b` has more free GPUs now, but `a` was reserved in an earlier pass and keeps draining
    hosts = [host("a", 0, 2, reserved_for=1), host("b", 1, 2)]
    result = plan(hosts, [Ask(1, 2), Ask(2, 1)])
    assert result.reservation == ("a", 1) and [(p.run_id, p.host) for p in result.placements] == [(2, "b")]
    started = plan([host("a", 2, 2, reserved_for=1), host("b", 0, 2)], [Ask(1, 2), Ask(2, 1)])
    assert [(p.run_id, p.host) for p in started.placements] == [(1, "a")]
    assert started.reservation == ("b", 2)  # run 1 started: the next one waiting is now the head of the line


def test_a_run_bigger_than_every_host_waits_without_blocking_others():
    result = plan([host("a", 2, 2)], [Ask(1, 4), Ask(2, 1)])
    assert result.waiting[1] == "waiting for a host with 4 GPUs" and result.reservation is None
    assert [p.run_id for p in result.placements] == [2]


def test_a_cpu_host_is_not_said_to_have_gpus():
    """A CPU-only host's one slot is its CPU: a run waiting for it waits for the run on it, not for "1 more GPU(s)"."""
    cpu = HostView("cpu@box", [], 1, NOW, cpu=True)
    result = plan([cpu], [Ask(1, 1), Ask(2, 1)])
    assert result.waiting[1] == "next on cpu@box: waiting for the run on its CPU slot to finish"
    assert result.waiting[2] == "waiting for a free CPU slot"
    assert not any("GPU" in reason for reason in result.waiting.values()), result.waiting
    mixed = plan([cpu, host("gpu@box", 0, 2)], [Ask(1, 2), Ask(2, 1)])
    assert mixed.waiting[1] == "next on gpu@box: waiting for 2 more GPUs to free up"
    assert mixed.waiting[2] == "waiting for 1 free GPU on one host (or a free CPU slot)"


def test_small_runs_never_starve_a_big_one():
    """Simulated time on one 2-GPU host: a stream of 1-GPU runs keeps arriving; the 2-GPU run queued
    behind the first of them starts once the two running ones end, and every small run starts too."""
    rng = random.Random(0)
    running: dict[int, tuple[list[str], int]] = {}  # run id -> (labels, end time)
    queued = [Ask(1, 1), Ask(2, 1), Ask(3, 2)] + [Ask(i, 1) for i in range(4, 40)]
    started: dict[int, int] = {}
    reserved = None
    for t in range(200):
        for run_id, (_, end) in list(running.items()):
            if end <= t:
                del running[run_id]
        held = {label for labels, _ in running.values() for label in labels}
        free = [label for label in ("0", "1") if label not in held]
        result = plan([HostView("a", free, 2, NOW, reserved)], queued)
        reserved = result.reservation[1] if result.reservation else None
        for p in result.placements:
            running[p.run_id] = (list(p.labels), t + rng.randint(1, 5))
            started[p.run_id] = t
        queued = [a for a in queued if a.run_id not in started]
        held = [label for labels, _ in running.values() for label in labels]
        assert len(held) == len(set(held)) <= 2  # never double-booked
    assert set(started) == set(range(1, 40))
    assert started[3] < started[6]  # the big run started before runs queued well after it


# --- bookings on the database ------------------------------------------------------------------------
@pytest.fixture
def session(service_env):
    with Session(get_engine()) as session:
        yield session


def announce(session: Session, name: str, labels: list[str]) -> None:
    booking.announce_host(session=session, name=name, labels=labels, queue=f"gpu.{name}")


def add_run(session: Session, gpus: int, seconds_ago: float = 0) -> int:
    experiment = Experiment(name=f"{gpus}-gpu", spec={"gpus": gpus})
    session.add(experiment)
    session.commit()
    run = Run(experiment_id=experiment.id, gpus=gpus, queued_at=utcnow() - timedelta(seconds=seconds_ago))
    session.add(run)
    session.commit()
    return run.id


def holders(session: Session) -> dict[str, int | None]:
    slots = session.exec(select(GpuSlot).order_by(col(GpuSlot.host), col(GpuSlot.position))).all()
    session.commit()
    return {f"{s.host}:{s.label}": s.run_id for s in slots}


def run_row(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    session.refresh(run)
    return run


def claim(session: Session, run_id: int) -> Run:
    run = run_row(session, run_id)
    return run_state.claim_run(session=session, run_id=run_id, worker=run.host, gpu=run.gpu, host=run.host)


def test_mixed_runs_on_a_two_gpu_host(session):
    """1-GPU and 2-GPU runs on a simulated 2-GPU host: each GPU held by one run at most, the 2-GPU run
    starts when both are free and gets exactly both, later small runs wait behind it (reservation)."""
    announce(session, "box", ["0", "1"])
    small_a, big, small_b = add_run(session, 1, 30), add_run(session, 2, 20), add_run(session, 1, 10)

    booking.book_waiting(session=session)
    assert holders(session) == {"box:0": small_a, "box:1": None}  # the big run reserved the host: small_b waits
    assert run_row(session, small_a).gpu == "0" and run_row(session, big).host is None
    assert session.get(WorkerHost, "box").reserved_for == big
    assert claim(session, small_a).status == RunStatus.running

    booking.book_waiting(session=session)  # nothing changes while small_a runs
    assert holders(session) == {"box:0": small_a, "box:1": None}

    assert run_state.finish_run(session=session, run_id=small_a, status="succeeded")
    assert holders(session) == {"box:0": None, "box:1": None}  # freed by the transition itself
    booking.book_waiting(session=session)
    assert holders(session) == {"box:0": big, "box:1": big} and run_row(session, big).gpu == "0,1"
    assert claim(session, big).status == RunStatus.running

    # the next small run starts when the big one ends (here: lost, reaped without a heartbeat)
    reaped = run_state.reap_lost_runs(session=session, now=utcnow() + timedelta(hours=1))
    assert reaped == [big] and holders(session) == {"box:0": None, "box:1": None}
    booking.book_waiting(session=session)
    assert holders(session) == {"box:0": small_b, "box:1": None}


def test_cancel_frees_gpus_of_a_booked_and_of_a_running_run(session):
    announce(session, "box", ["0", "1"])
    first, second = add_run(session, 1, 20), add_run(session, 1, 10)
    booking.book_waiting(session=session)
    assert set(holders(session).values()) == {first, second}
    claim(session, first)

    assert run_state.cancel_run(session=session, run_id=second).status == RunStatus.cancelled  # booked, not started
    assert list(holders(session).values()).count(second) == 0 and run_row(session, second).host is None
    assert run_state.cancel_run(session=session, run_id=first).status == RunStatus.running  # asks the worker
    assert first in holders(session).values()  # held until the worker stops it
    run_state.finish_run(session=session, run_id=first, status="cancelled")
    assert set(holders(session).values()) == {None}


def test_a_claim_only_takes_a_run_booked_on_its_host(session):
    announce(session, "a", ["0"])
    announce(session, "b", ["0"])
    run_id = add_run(session, 1)
    booking.book_waiting(session=session)
    booked_on = run_row(session, run_id).host
    other = "a" if booked_on == "b" else "b"
    assert run_state.claim_run(session=session, run_id=run_id, worker=other, gpu="0", host=other) is None
    assert run_row(session, run_id).status == RunStatus.queued  # not cancelled by the refused claim
    assert claim(session, run_id).worker == booked_on


def test_runs_booked_on_a_host_that_went_away_wait_again(session, monkeypatch):
    announce(session, "gone", ["0"])
    run_id = add_run(session, 1)
    booking.book_waiting(session=session)
    assert run_row(session, run_id).host == "gone"
    booking.stop_host(session=session, name="gone")
    announce(session, "new", ["0"])
    booking.book_waiting(session=session)
    assert run_row(session, run_id).host == "new" and holders(session) == {"new:0": run_id}


def test_a_silent_host_gets_no_run(session):
    announce(session, "silent", ["0", "1"])
    session.execute(update(WorkerHost).values(heartbeat_at=utcnow() - timedelta(hours=1)))
    session.commit()
    run_id = add_run(session, 1)
    booking.book_waiting(session=session)
    assert run_row(session, run_id).host is None
    assert "worker host" in booking.waiting_reasons(session=session)[run_id]


def race(engine, hosts: dict[str, int], runs: list[int], schedulers: int = 4, passes: int = 6) -> None:
    """`schedulers` threads, each with its own connection, scheduling the same queue at once while a
    finisher ends running runs; then every GPU is held by at most one run and every booked run holds
    exactly its GPUs on one host."""
    with Session(engine) as session:
        for name, count in hosts.items():
            announce(session, name, [str(i) for i in range(count)])
        ids = [add_run(session, gpus, seconds_ago=len(runs) - i) for i, gpus in enumerate(runs)]
    barrier = threading.Barrier(schedulers + 1)
    errors: list[BaseException] = []

    def scheduler() -> None:
        try:
            barrier.wait()
            with Session(engine) as session:
                for _ in range(passes):
                    booking.book_waiting(session=session)
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            errors.append(exc)

    def finisher() -> None:
        try:
            barrier.wait()
            with Session(engine) as session:
                rounds = 0
                while rounds < 5 or any(t.is_alive() for t in threads[:schedulers]):
                    rounds += 1
                    booking.book_waiting(session=session)  # a fifth scheduler, racing too
                    for run in session.exec(
                        select(Run).where(col(Run.host).is_not(None), col(Run.status) == "queued")
                    ).all():
                        if run_state.claim_run(
                            session=session, run_id=run.id, worker=run.host, gpu=run.gpu, host=run.host
                        ):
                            run_state.finish_run(session=session, run_id=run.id, status="succeeded")
                    session.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=scheduler) for _ in range(schedulers)]
    threads.append(threading.Thread(target=finisher))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    with Session(engine) as session:
        slots = session.exec(select(GpuSlot)).all()
        booked = session.exec(select(Run).where(col(Run.id).in_(ids), col(Run.host).is_not(None))).all()
        finished = session.exec(select(Run).where(col(Run.id).in_(ids), col(Run.status) == "succeeded")).all()
        per_run = Counter(s.run_id for s in slots if s.run_id is not None)
        for run in booked:
            held = [s for s in slots if s.run_id == run.id]
            assert len(held) == run.gpus and {s.host for s in held} == {run.host}
            assert sorted(run.gpu.split(",")) == sorted(s.label for s in held)
        assert sum(per_run.values()) <= sum(hosts.values())
        assert set(per_run) == {r.id for r in booked}
        assert finished, "no run got through the race"


def test_racing_schedulers_never_double_book_on_this_database(service_env):
    """PostgreSQL when it runs here (tests/services.py), else SQLite."""
    race(get_engine(), {"a": 2, "b": 2, "c": 1}, [1, 2, 1, 2, 1, 1, 2, 1] * 3)


def test_racing_schedulers_never_double_book_on_sqlite(service_env, tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'race.db'}")
    init_db(engine)
    try:
        race(engine, {"a": 2, "b": 1}, [2, 1, 1, 2, 1] * 3)
    finally:
        engine.dispose()


# --- the API ------------------------------------------------------------------------------------------
@pytest.fixture
def client_with_host(client):
    with Session(get_engine()) as session:
        announce(session, "box", ["0", "1"])
    return client


def test_create_refuses_more_gpus_than_any_live_host_naming_the_field(client_with_host):
    before = row_counts()
    response = client_with_host.post("/api/experiments", json={"name": "x", "spec": tiny_spec(gpus=4, batch_size=4)})
    assert response.status_code == 422, response.text
    problem = next(p for p in response.json()["detail"] if p["loc"] == ["body", "spec", "gpus"])
    assert "4 GPUs" in problem["msg"] and "box" in problem["msg"] and "has 2" in problem["msg"]
    assert row_counts() == before


def test_without_any_host_a_multi_gpu_run_is_accepted_and_says_what_it_waits_for(client):
    created = post_experiment(client, spec=tiny_spec(gpus=2, batch_size=2))
    assert created["run"]["gpus"] == 2 and created["run"]["host"] is None
    queued = client.get("/api/queue").json()["queued"]
    assert queued[0]["gpus"] == 2 and "worker host with 2 GPU(s)" in queued[0]["waiting_for"]


def test_hosts_and_queue_show_each_gpu_and_its_holder(client_with_host):
    big = post_experiment(client_with_host, name="big", spec=tiny_spec(gpus=2, batch_size=2))["run_id"]
    small = post_experiment(client_with_host, name="small")["run_id"]
    hosts = client_with_host.get("/api/hosts").json()
    assert [(h["name"], h["live"]) for h in hosts] == [("box", True)]
    assert hosts[0]["gpus"] == [{"label": "0", "run_id": big}, {"label": "1", "run_id": big}]
    state = client_with_host.get("/api/queue").json()
    assert state["hosts"] == hosts
    assert [(q["run_id"], q["gpus"], q["host"]) for q in state["queued"]] == [(big, 2, "box"), (small, 1, None)]
    assert state["queued"][1]["waiting_for"].startswith("next on box")
    runs = client_with_host.get("/api/runs").json()["data"]
    assert {r["id"]: r["gpus"] for r in runs} == {big: 2, small: 1}
