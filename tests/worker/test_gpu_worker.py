"""A simulated 2-GPU worker host (`distill worker --gpus 0,1` with CPU torch): two 1-GPU runs at once on
distinct GPUs, then a 2-GPU FSDP run posted to the API that trains as 2 gloo processes to `succeeded`
(metrics stored once, final model loadable with from_pretrained), and a 2-GPU run whose rank is
SIGKILLed: `lost`, no process left, its GPUs free for the next run."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import Session, select

from app.db import get_engine
from app.models import MetricPoint, RunStatus
from tests.helpers.factories import launch, read_run, wait_for
from tests.helpers.specs import training_spec
from tests.worker.conftest import HEARTBEAT_SECONDS, WorkerProcess

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 300  # seconds: a 2-process run starts two interpreters and torch on a loaded 2-core machine


@pytest.fixture
def gpu_host(service_env, tmp_path):
    """`distill worker --gpus 0,1` on this test's database and Redis: a host with two (simulated) GPUs."""
    env = dict(os.environ, DISTILL_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")  # fmt: skip
    env.pop("CUDA_VISIBLE_DEVICES", None)
    worker = WorkerProcess(env, tmp_path, args=("--gpus", "0,1"), prefix="gpuhost")
    worker.start()
    yield worker
    worker.stop()


def finished(run_id: int):
    run = read_run(run_id)
    return run if RunStatus(run.status).finished else None


def loss_steps(run_id: int) -> Counter:
    with Session(get_engine()) as session:
        steps = session.exec(select(MetricPoint.step).where(MetricPoint.run_id == run_id, MetricPoint.key == "loss"))
        return Counter(steps.all())


def rank_processes(run_id: int) -> list[int]:
    """Pids of the run's rank processes (`python -m worker.rank_main RUN_ID`, not the launcher)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker.rank_main" in argv and str(run_id).encode() in argv and b"torch.distributed.run" not in argv:
            pids.append(int(entry.name))
    return pids


def hosts(client) -> dict[str, list[tuple[str, int | None]]]:
    return {h["name"]: [(g["label"], g["run_id"]) for g in h["gpus"]] for h in client.get("/api/hosts").json()}


def test_two_one_gpu_runs_share_the_host_on_distinct_gpus(client, gpu_host):
    wait_for(lambda: hosts(client), 120, "the host to announce itself", gpu_host)
    # long runs (cancelled below): a short one could end, and free its GPU, before the booking is read
    first = launch(client, training_spec(max_steps=100_000, save_every=0), name="one")
    second = launch(client, training_spec(max_steps=100_000, save_every=0), name="two")
    wait_for(lambda: read_run(first).last_step >= 1 and read_run(second).last_step >= 1, RUN_TIMEOUT,
             "both runs to train at once", gpu_host)  # fmt: skip
    assert sorted([read_run(first).gpu, read_run(second).gpu]) == ["0", "1"]
    name = read_run(first).host  # this test's host (other tests' stopped hosts may still be listed)
    assert name is not None and read_run(second).host == name
    assert sorted(hosts(client)[name]) == sorted([(read_run(first).gpu, first), (read_run(second).gpu, second)])
    for run_id in (first, second):
        assert client.post(f"/api/runs/{run_id}/cancel").status_code == 200
    for run_id in (first, second):
        assert wait_for(lambda r=run_id: finished(r), RUN_TIMEOUT, "the runs to stop", gpu_host).status == "cancelled"
    assert hosts(client)[name] == [("0", None), ("1", None)]


def test_a_two_gpu_fsdp_run_trains_as_two_processes_to_succeeded(client, gpu_host):
    from transformers import AutoModelForCausalLM

    spec = training_spec(gpus=2, sharding="fsdp", batch_size=2, max_steps=6, save_every=3)
    run_id = launch(client, spec, name="fsdp")
    wait_for(lambda: read_run(run_id).status == RunStatus.running, RUN_TIMEOUT, "the run to start", gpu_host)
    assert read_run(run_id).gpu == "0,1"
    (name,) = hosts(client)
    assert hosts(client)[name] == [("0", run_id), ("1", run_id)]  # both GPUs, one run
    seen = wait_for(lambda: len(rank_processes(run_id)) == 2 or finished(run_id), RUN_TIMEOUT, "2 ranks", gpu_host)
    assert seen is True, f"the run ended before 2 rank processes were seen: {read_run(run_id).error}"

    run = wait_for(lambda: finished(run_id), RUN_TIMEOUT, "the 2-GPU run to finish", gpu_host)
    assert run.status == RunStatus.succeeded, run.error
    assert loss_steps(run_id) == dict.fromkeys(range(1, 7), 1)  # reported once (rank 0), every step
    model = AutoModelForCausalLM.from_pretrained(run.model_dir)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert hosts(client)[name] == [("0", None), ("1", None)]
    # rank 0 records the end before the processes exit; then the pool process ends whatever is left
    assert wait_for(lambda: rank_processes(run_id) == [], 60, "both ranks to exit", gpu_host)


def test_a_killed_rank_leaves_the_run_lost_no_process_and_free_gpus(client, gpu_host):
    run_id = launch(client, training_spec(gpus=2, batch_size=2, max_steps=5000, save_every=2), name="killed")
    wait_for(lambda: read_run(run_id).last_step >= 3, RUN_TIMEOUT, "step 3", gpu_host)
    ranks = rank_processes(run_id)
    assert len(ranks) == 2
    os.kill(max(ranks), signal.SIGKILL)  # one rank dies, as under the OOM killer

    run = wait_for(lambda: finished(run_id), 120, "the run to end", gpu_host)
    assert run.status == RunStatus.lost and "killed" in run.error, run.error
    assert wait_for(lambda: rank_processes(run_id) == [], 60, "every rank to be gone", gpu_host)
    (name,) = hosts(client)
    assert hosts(client)[name] == [("0", None), ("1", None)]
    follower = launch(client, training_spec(gpus=2, batch_size=2, max_steps=2, save_every=0), name="next")
    done = wait_for(lambda: finished(follower), RUN_TIMEOUT, "the next 2-GPU run", gpu_host)
    assert done.status == RunStatus.succeeded, done.error


def test_cancel_and_worker_shutdown_stop_every_rank_of_a_two_gpu_run(client, gpu_host):
    run_id = launch(client, training_spec(gpus=2, batch_size=2, max_steps=5000, save_every=0), name="stopped")
    wait_for(lambda: read_run(run_id).last_step >= 2, RUN_TIMEOUT, "step 2", gpu_host)
    assert client.post(f"/api/runs/{run_id}/cancel").json()["cancel_requested"]
    run = wait_for(lambda: finished(run_id), 120, "the cancel to stop both ranks", gpu_host)
    assert run.status == RunStatus.cancelled and "cancelled at step" in run.error, run.error
    assert wait_for(lambda: rank_processes(run_id) == [], 60, "every rank to be gone", gpu_host)
    (name,) = hosts(client)
    assert hosts(client)[name] == [("0", None), ("1", None)]

    # resumed, then the worker is stopped (SIGTERM to its process group, as `distill up` does at Ctrl-C):
    # rank 0 checkpoints and hands the run back to the queue, the other rank follows, none is left
    assert client.post(f"/api/runs/{run_id}/resume").json()["attempt"] == 2
    wait_for(lambda: read_run(run_id).attempt == 2 and read_run(run_id).last_step > run.last_step + 1,
             RUN_TIMEOUT, "the resumed run to train", gpu_host)  # fmt: skip
    gpu_host.stop()
    handed_back = read_run(run_id)
    assert handed_back.status == RunStatus.queued and handed_back.attempt == 3, handed_back.error
    assert rank_processes(run_id) == [] and handed_back.host is None
    assert next(h for h in client.get("/api/hosts").json() if h["name"] == name)["stopped_at"] is not None
