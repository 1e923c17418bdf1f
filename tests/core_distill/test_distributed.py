"""Runs of two processes on CPU (gloo), started by the real launcher through `distill run`.

The spec's batch_size is the global micro-batch, so a 2-process run (each rank half the rows) must
train like the 1-process run of the same spec: same losses and final weights up to float summation
order (tolerance: relative 1e-5 on losses, absolute 1e-5 on weights; seen: about 1e-9 and 4e-7).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from core_distill.distributed import launcher_argv
from core_distill.reporting import JsonlReporter
from core_distill.spec import DistillSpec
from core_distill.train import run

LAUNCH_TIMEOUT = 300  # seconds: two processes on two shared cores, model loads included
STEPS = 6


def _spec(ws, **overrides) -> DistillSpec:
    # lmbda 0: dataset completions, so 1 and 2 processes see the same tokens (sampling draws per rank differ)
    return ws.spec(lmbda=0.0, eval_data="", max_steps=STEPS, batch_size=4, grad_accum=2, save_every=1, **overrides)


def _cli(spec: DistillSpec, out: Path) -> subprocess.Popen:
    spec_file = out.parent / f"{out.name}.yaml"
    spec_file.write_text(spec.to_yaml())
    cmd = [sys.executable, "-m", "core_distill.cli", "run", str(spec_file), "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=out.parent)


def _finish(proc: subprocess.Popen) -> str:
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        raise
    assert proc.returncode == 0, output[-3000:]
    return output


def _kill_tree(proc: subprocess.Popen) -> None:
    """A hung run must not outlive its test: kill the CLI, the launcher and the ranks by pid."""
    for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.communicate()


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["metrics"]["loss"] for r in lines if "loss" in r["metrics"]}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")  # a plain transformers folder
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def one_process(tiny_workspace, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "one"
    run(_spec(tiny_workspace), output_dir=out, reporter=JsonlReporter(out))
    return out


@pytest.fixture(scope="module")
def fsdp_run(tiny_workspace, tmp_path_factory) -> Path:
    """FSDP student, FSDP-sharded teacher, activation checkpointing: none of them changes the math."""
    out = tmp_path_factory.mktemp("dist") / "fsdp"
    spec = _spec(tiny_workspace, gpus=2, sharding="fsdp", teacher_placement="sharded", gradient_checkpointing=True)
    output = _finish(_cli(spec, out))
    assert "launching 2 processes" in output
    return out


def _assert_same_training(a: Path, b: Path, rel: float = 1e-5, atol: float = 1e-5) -> None:
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == list(range(1, STEPS + 1)) and sorted(lb) == sorted(la)
    for step in la:
        assert math.isclose(la[step], lb[step], rel_tol=rel), (step, la[step], lb[step])
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=atol, msg=name)


def test_launcher_argv_is_torchrun():
    argv = launcher_argv(3, "worker.rank_main", ["--run-id", "7"])
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in argv and "--standalone" in argv
    assert argv[-4:] == ["--module", "worker.rank_main", "--run-id", "7"]
    with pytest.raises(ValueError, match="nproc"):
        launcher_argv(0, "m", [])


def test_train_run_refuses_a_world_the_spec_did_not_ask_for(tiny_workspace, tmp_path):
    from core_distill.spec import SpecError

    with pytest.raises(SpecError, match="gpus: the spec asks for 2 processes"):
        run(_spec(tiny_workspace, gpus=2), output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fsdp_two_processes_train_like_one(one_process, fsdp_run):
    _assert_same_training(one_process, fsdp_run)
    # a DCP checkpoint: one shard file per rank and the metadata index
    last = sorted((fsdp_run / "checkpoints").glob("step-*"))[-1]
    assert json.loads((last / "state.json").read_text()) == {"step": STEPS, "format": "dcp", "world_size": 2}
    assert sorted(p.name for p in (last / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    config = json.loads((fsdp_run / "final" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]  # not FSDP's wrapper class


def test_ddp_two_processes_train_like_one_with_lora(tiny_workspace, tmp_path):
    """DDP with LoRA: the adapters start from the seed in every process, only they are checkpointed
    (DCP without the frozen weights), and the final folder holds the merged weights."""
    lora = dict(lora=True, lora_r=4, learning_rate=1e-2)
    one = tmp_path / "lora-one"
    run(_spec(tiny_workspace, **lora), output_dir=one, reporter=JsonlReporter(one))
    out = tmp_path / "lora-ddp"
    _finish(_cli(_spec(tiny_workspace, gpus=2, **lora), out))
    _assert_same_training(one, out)
    assert not any("lora" in k for k in _weights(out))  # merged into the base weights
    # rank 0 writes the model card and the spec beside the gathered weights, as one process does
    from huggingface_hub import ModelCard

    assert "lora" in ModelCard.load(out / "final" / "README.md").data.tags
    assert (out / "final" / "spec.yaml").read_text() == (out / "spec.yaml").read_text()


def test_on_policy_self_distillation_under_fsdp(tiny_workspace, tmp_path):
    """lmbda 1 (every rank samples its own rows with the gathered weights) and OPSD (the live sharded
    student scores the privileged prompt), with evaluation on rank 0."""
    out = tmp_path / "opsd"
    spec = tiny_workspace.spec(teacher="", opsd="dynamic", lmbda=1.0, gpus=2, sharding="fsdp", batch_size=2,
                               max_steps=2, eval_every=1)  # fmt: skip
    _finish(_cli(spec, out))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r["metrics"]]
    assert [r["step"] for r in train] == [1, 2]  # logged once, by rank 0
    for r in train:
        assert r["metrics"]["data/on_policy"] == 1.0
        assert r["metrics"]["count/generated_tokens"] > 0
        assert all(math.isfinite(v) for v in r["metrics"].values())
    assert {r["step"] for r in records if any(k.startswith("eval/") for k in r["metrics"])} == {0, 1, 2}
    assert _weights(out)  # loadable


def test_killed_rank_stops_the_run_and_resume_continues_exactly(tiny_workspace, fsdp_run, tmp_path):
    out = tmp_path / "killed"
    spec = _spec(tiny_workspace, gpus=2, sharding="fsdp", teacher_placement="sharded", gradient_checkpointing=True)
    proc = _cli(spec, out)
    try:
        ranks, launcher = _wait_for_ranks(proc, out, step=2)
        os.kill(ranks[1].pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
    except BaseException:
        _kill_tree(proc)
        raise
    assert proc.returncode != 0, output[-2000:]
    for p in [launcher, *ranks]:  # the launcher stopped the other rank and exited: no process left
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE, p
    done = _losses(out)
    assert 2 <= max(done) < STEPS

    _finish(_cli(spec, out))  # the same command again: resumes from the last complete DCP checkpoint
    resumed, reference = _losses(out), _losses(fsdp_run)
    assert resumed == reference  # exactly: same reductions, state restored bit for bit
    wa, wb = _weights(out), _weights(fsdp_run)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _wait_for_ranks(proc: subprocess.Popen, out: Path, step: int):
    """The launcher and rank processes under `distill run`, once `step` is logged."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        if metrics.exists() and any(json.loads(line)["step"] >= step for line in metrics.read_text().splitlines()):
            break
        time.sleep(0.02)
    launcher = next(c for c in psutil.Process(proc.pid).children() if "torch.distributed.run" in " ".join(c.cmdline()))
    ranks = sorted(launcher.children(), key=lambda c: int(c.environ().get("RANK", "-1")))
    assert len(ranks) == 2
    return ranks, launcher


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        (dict(gpus=2, batch_size=3), "batch_size", "multiple of gpus=2"),
        (dict(sharding="fsdp"), "sharding", "set gpus > 1"),
        (dict(gpus=2, sharding="fsdp", lora=True), "lora", "sharding 'none'"),
        (dict(teacher_placement="sharded"), "teacher_placement", "set gpus > 1"),
        (dict(teacher_placement="offload", seq_kd=True), "teacher_placement", "seq_kd"),
        (dict(teacher="", opsd="dynamic", gpus=2, teacher_placement="sharded"), "teacher_placement", "opsd"),
        (dict(teacher_server_url="http://x", loss_top_k=8, teacher_placement="offload"), "teacher_placement", "server"),
        (dict(gpus=2, generation_backend="vllm"), "generation_backend", "gpus > 1"),
        (dict(gpus=0), "gpus", "greater than or equal to 1"),
        (dict(gpus=65), "gpus", "less than or equal to 64"),
    ],
)
def test_spec_refuses_scale_settings_that_cannot_run(overrides, field, says):
    from core_distill.spec import SpecError

    with pytest.raises(SpecError) as info:
        DistillSpec.parse({"batch_size": 4, **overrides})
    assert field in info.value.errors and says in info.value.errors[field], info.value.errors


def test_offloaded_teacher_trains_like_a_resident_one(tiny_workspace, one_process, tmp_path):
    """On a CPU host the move is CPU to CPU: this checks the placement path gives the same run."""
    out = tmp_path / "offload"
    run(_spec(tiny_workspace, teacher_placement="offload"), output_dir=out, reporter=JsonlReporter(out))
    assert _losses(out) == _losses(one_process)
