"""`distill worker --gpus ...`: which GPUs a host offers, its name, and the Celery worker it becomes (fast, no process)."""

from __future__ import annotations

import pytest

from worker.launch import parse_gpus, worker_argv, worker_name


def test_gpus_are_cuda_indices_or_one_cpu_slot(monkeypatch):
    assert parse_gpus("0,1") == ["0", "1"] and parse_gpus(" 2 ") == ["2"] and parse_gpus("cpu") == ["cpu"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert parse_gpus(None) == ["2", "3"]  # the machine's visible GPUs, as physical indices
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert parse_gpus(None) == ["cpu"]
    for bad in ("0,0", "a", "", "0,cpu", "-1"):
        with pytest.raises(ValueError, match="--gpus"):
            parse_gpus(bad)


def test_a_host_reads_the_shared_queue_and_its_own_with_a_pool_process_per_gpu():
    name = worker_name(["0", "1"])
    assert name.startswith("gpu0-1@") and worker_name(["cpu"]).startswith("cpu@")
    assert worker_name(["0"], "box").startswith("box@") and worker_name(["0"], "a@b") == "a@b"
    argv = worker_argv(["0", "1"], "box@m")
    assert argv[argv.index("-Q") + 1] == "gpu,gpu.box@m" and argv[argv.index("-c") + 1] == "2"
    assert argv[argv.index("--max-tasks-per-child") + 1] == "1"
    assert "--quiet" not in argv and worker_argv(["0"], "box@m", quiet=True)[:2] == ["--quiet", "worker"]
