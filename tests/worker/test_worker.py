"""Runs through a real Celery worker subprocess on the real database and Redis: success, cancel,
a SIGKILLed worker (lost, then resumed from its checkpoint), a failing run."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, select

from app import events, run_state
from app.db import get_engine
from app.models import EvalSamples, MetricPoint, RunStatus
from core_distill.checkpoint import latest_checkpoint
from tests.helpers.factories import launch, read_run, wait_for
from tests.helpers.specs import training_spec
from worker.queue import CeleryQueue

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 240  # seconds; a toy run takes ~10-30 s on a loaded 2-core machine


def finished(run_id: int):
    run = read_run(run_id)
    return run if RunStatus(run.status).finished else None


def step_counts(run_id: int, key: str = "loss") -> Counter:
    with Session(get_engine()) as session:
        steps = session.exec(select(MetricPoint.step).where(MetricPoint.run_id == run_id, MetricPoint.key == key)).all()
    return Counter(steps)


def stream_events(run_id: int) -> list[tuple[str, dict]]:
    """Everything on the run's Redis stream: (kind, data)."""
    client = events.redis_client()
    out, after = [], "0-0"
    while batch := events.read(client, run_id, after):
        out += [(kind, data) for _, kind, data in batch]
        after = batch[-1][0]
    return out


def sse_events(client, run_id: int) -> list[tuple[str, dict]]:
    """GET /api/runs/{id}/events of a finished run, parsed: (event, data)."""
    out, kind = [], None
    with client.stream("GET", f"/api/runs/{run_id}/events") as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind:
                out.append((kind, json.loads(line.split(":", 1)[1])))
                kind = None
    return out


def test_run_succeeds_with_every_metric_step_stored_once(client, worker):
    run_id = launch(client, training_spec(max_steps=3, eval_data="toy:eval", save_every=0), name="succeeds")
    run = wait_for(lambda: finished(run_id), RUN_TIMEOUT, f"run {run_id} to finish", worker)

    assert run.status == RunStatus.succeeded, run.error
    assert run.worker.startswith("test") and run.gpu == "cpu" and run.attempt == 1
    assert run.last_step == 3 and run.started_at and run.finished_at
    assert Path(run.model_dir, "config.json").exists()
    assert step_counts(run_id) == {1: 1, 2: 1, 3: 1}
    assert step_counts(run_id, "eval/exact_match") == {0: 1, 3: 1}  # the student before training, and the last step
    with Session(get_engine()) as session:
        samples = session.exec(select(EvalSamples).where(EvalSamples.run_id == run_id)).all()
    assert sorted(s.step for s in samples) == [0, 3] and all(s.samples for s in samples)

    # the live stream, as a browser reads it (the run has ended, so the stream ends too)
    kinds = sse_events(client, run_id)
    statuses = [data["status"] for kind, data in kinds if kind == "status"]
    assert statuses == ["running", "succeeded"]
    streamed_steps = [
        p["step"] for kind, data in kinds if kind == "metrics" for p in data["points"] if p["key"] == "loss"
    ]
    assert streamed_steps == [1, 2, 3]


def test_cancel_queued_and_running_runs(client, worker):
    worker.ensure_running()
    running_id = launch(client, training_spec(max_steps=20_000, save_every=0), name="long")
    queued_id = launch(client, training_spec(), name="waits")  # one worker, busy: this one stays queued
    wait_for(lambda: read_run(running_id).last_step >= 2, RUN_TIMEOUT, "the long run's second step", worker)

    response = client.post(f"/api/runs/{queued_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled", response.text
    flagged = client.post(f"/api/runs/{running_id}/cancel").json()
    assert flagged["status"] == "running" and flagged["cancel_requested"]

    run = wait_for(lambda: finished(running_id), 60, "the running run to stop", worker)
    assert run.status == RunStatus.cancelled and "cancelled at step" in run.error
    checkpoint = latest_checkpoint(Path(run.output_dir))
    assert checkpoint is not None and checkpoint.name == f"step-{run.last_step:08d}"
    assert run.last_step < 20_000 and step_counts(running_id) == dict.fromkeys(range(1, run.last_step + 1), 1)

    # the cancelled run's message is gone from the broker (CeleryQueue.revoke takes it out of its list, or the
    # worker took it earlier, found no free GPU and forgot it), and no worker ever started the run
    assert queued_id not in CeleryQueue().waiting()
    queued = read_run(queued_id)
    assert queued.status == RunStatus.cancelled and queued.started_at is None and step_counts(queued_id) == {}


def short_heartbeat_bound(monkeypatch, worker, seconds: str) -> None:
    """DISTILL_LOST_AFTER_SECONDS here (the reaper, the API) and for the next worker started: with the
    default 60 s, a host killed seconds ago still looks live, and that worker could book a run on it."""
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_LOST_AFTER_SECONDS", seconds)
    monkeypatch.setitem(worker.env, "DISTILL_LOST_AFTER_SECONDS", seconds)
    get_settings.cache_clear()


def test_killed_worker_leaves_run_lost_and_resume_continues_exactly(client, worker, monkeypatch):
    worker.ensure_running()
    # a tiny step takes ~20 ms: enough steps that the kill lands mid-run; this spec opts out of
    # automatic resumes, so the run stays lost until a person resumes it
    run_id = launch(client, training_spec(max_steps=200, save_every=3, auto_resume_attempts=0), name="killed")
    # mid-run, past a checkpoint, ideally with steps stored after it (those must be dropped on resume)
    wait_for(lambda: read_run(run_id).last_step >= 4, RUN_TIMEOUT, "step 4", worker)
    worker.kill()
    before = read_run(run_id)
    assert before.status == RunStatus.running and 4 <= before.last_step < 200

    # 8 s: 16 beats of the test worker's 0.5 s; a tighter bound let the fresh worker's own host look dead
    # on a loaded box (its beats late by seconds), and the resumed run then waited for a live host
    short_heartbeat_bound(monkeypatch, worker, "8")

    def reaped():
        with Session(get_engine()) as session:
            return run_id in run_state.reap_lost_runs(session=session)

    wait_for(reaped, 90, "the reaper to mark the run lost")
    lost = read_run(run_id)
    assert lost.status == RunStatus.lost and "heartbeat" in lost.error
    checkpoint_step = int(latest_checkpoint(Path(lost.output_dir)).name.split("-")[1])
    assert checkpoint_step >= 3
    # its host beat up to a heartbeat later than the run: resumed before it looks dead, the run would be
    # booked on it (no reaper runs here to move it)
    wait_for(lambda: not any(h["live"] for h in client.get("/api/queue").json()["hosts"]), 90, "the host dead")

    response = client.post(f"/api/runs/{run_id}/resume")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued" and response.json()["attempt"] == 2
    worker.start()  # a fresh worker
    try:
        run = wait_for(lambda: finished(run_id), RUN_TIMEOUT, "the resumed run to finish", worker)
    finally:
        worker.stop()  # the next test's worker starts with the default settings

    assert run.status == RunStatus.succeeded, run.error
    assert run.attempt == 2 and run.output_dir == lost.output_dir and run.last_step == 200
    assert step_counts(run_id) == dict.fromkeys(range(1, 201), 1)  # no step lost, none twice
    said = [(kind, data["step"]) for kind, data in stream_events(run_id) if kind in ("started", "resumed")]
    assert said == [("started", 0), ("resumed", checkpoint_step)]  # attempt 1 fresh, attempt 2 from the checkpoint
    detail = client.get(f"/api/runs/{run_id}").json()
    assert [event["kind"] for event in detail["history"]] == ["lost", "resumed"]
    assert (detail["auto_resumes"], detail["manual_resumes"], detail["healing"]) == (0, 1, None)


def test_a_killed_worker_s_run_heals_itself_without_any_call(client, worker, monkeypatch):
    """SIGKILL mid-run, a second worker idle: the reaper marks the run lost, waits the backoff (5 s, the
    default), queues it again and the second worker finishes it from the checkpoint; nobody calls the API."""
    from app.services.dispatch import start_reaper
    from ui.live import run_header

    worker.ensure_running()
    run_id = launch(client, training_spec(max_steps=200, save_every=3), name="heals")
    wait_for(lambda: read_run(run_id).last_step >= 4, RUN_TIMEOUT, "step 4", worker)
    worker.kill()
    short_heartbeat_bound(monkeypatch, worker, "6")
    worker.start()
    stop = threading.Event()
    reaper = start_reaper(stop, interval_seconds=0.5)  # what `distill api` runs
    try:
        lost = wait_for(lambda: (r := read_run(run_id)).status == RunStatus.lost and r, 60, "the run lost", worker)
        waiting = client.get(f"/api/runs/{run_id}").json()
        assert waiting["status"] == "lost" and waiting["resume_after"] is not None, waiting
        assert waiting["healing"].startswith(f"lost at step {lost.last_step} (worker gone); resuming automatically in")
        assert waiting["healing"].endswith("attempt 1 of 3")

        run = wait_for(lambda: (r := read_run(run_id)).status in ("succeeded", "failed") and r, RUN_TIMEOUT,
                       "the run to heal and finish", worker)  # fmt: skip
    finally:
        stop.set()
        reaper.join(30)
        worker.stop()  # the next test's worker starts with the default settings
    assert run.status == RunStatus.succeeded, run.error
    assert run.attempt == 2 and run.last_step == 200 and run.output_dir == lost.output_dir
    assert step_counts(run_id) == dict.fromkeys(range(1, 201), 1)  # no step lost, none twice
    said = [(kind, data["step"]) for kind, data in stream_events(run_id) if kind in ("started", "resumed")]
    assert [kind for kind, _ in said] == ["started", "resumed"] and 3 <= said[1][1] <= lost.last_step

    detail = client.get(f"/api/runs/{run_id}").json()
    history = [(e["kind"], e["attempt"], e["note"]) for e in detail["history"]]
    assert history == [("lost", 1, "worker gone"), ("auto_resumed", 2, "attempt 1 of 3, after 5 s")]
    assert (detail["auto_resumes"], detail["manual_resumes"], detail["resume_after"]) == (1, 0, None)
    assert detail["healing"] == "resumed automatically 1x"
    assert "resumed automatically 1x" in run_header(run_id)  # the dashboard's run page


def test_run_whose_data_disappeared_fails_with_the_error(service_env, worker, tmp_path, toy_dir):
    worker.ensure_running()
    data = tmp_path / "train.jsonl"
    shutil.copy(toy_dir / "data" / "train.jsonl", data)
    spec = training_spec(train_data=str(data))
    data.unlink()  # after the API accepted it (preflight passed), before the worker loads it
    with Session(get_engine()) as session:
        from app.models import Experiment, Run

        experiment = Experiment(name="fails", spec=spec.model_dump(mode="json"))
        session.add(experiment)
        session.commit()
        run = Run(experiment_id=experiment.id, max_steps=spec.max_steps)
        session.add(run)
        session.commit()
        run_id = run.id
    from worker.celery_app import enqueue_run

    enqueue_run(run_id)
    run = wait_for(lambda: finished(run_id), RUN_TIMEOUT, "the run to fail", worker)
    assert run.status == RunStatus.failed
    assert run.error.startswith("SpecError: train_data: no data at") and str(data) in run.error
    assert "Traceback" in run.error or "File " in run.error  # the traceback's tail follows


def test_worker_shutdown_checkpoints_and_requeues_the_running_run(client, worker):
    worker.ensure_running()
    run_id = launch(client, training_spec(max_steps=500, save_every=0), name="interrupted")
    wait_for(lambda: read_run(run_id).last_step >= 2, RUN_TIMEOUT, "the run's second step", worker)
    worker.stop()  # SIGTERM to the worker and its pool child: `distill up` Ctrl-C, `docker compose stop`
    assert worker.process.returncode == 0

    run = read_run(run_id)
    assert run.status == RunStatus.queued and run.attempt == 2 and run.error is None
    checkpoint = latest_checkpoint(Path(run.output_dir))
    assert checkpoint is not None and checkpoint.name == f"step-{run.last_step:08d}"
    assert step_counts(run_id) == dict.fromkeys(range(1, run.last_step + 1), 1)

    worker.start()  # the run's message went back to the queue: a new worker continues it from the checkpoint
    wait_for(lambda: read_run(run_id).last_step > run.last_step, RUN_TIMEOUT, "the run to continue", worker)
    assert client.post(f"/api/runs/{run_id}/cancel").status_code == 200
    wait_for(lambda: finished(run_id), 60, "the run to stop", worker)
    said = [(kind, data["step"]) for kind, data in stream_events(run_id) if kind in ("started", "resumed")]
    assert said == [("started", 0), ("resumed", run.last_step)]
