"""Several processes for one run: the launcher, who-am-I helpers and the few collectives the loop needs.

A run with `gpus: N > 1` is N processes started by PyTorch's own launcher (torchrun, run as
`python -m torch.distributed.run`). `train.run` finds the world in the environment torchrun sets
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so the same call works in one process or in N.

Usage (the worker, or anything that starts a run):

    from core_distill.distributed import launcher_argv
    argv = launcher_argv(spec.gpus, "worker.rank_main", ["--run-id", run_id])
    proc = subprocess.Popen(argv, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}, start_new_session=True)

and in `worker/rank_main.py`, run by every rank:

    from core_distill import distributed
    from core_distill.reporting import NullReporter
    reporter = DbReporter(...) if distributed.is_main() else NullReporter()
    core_distill.train.run(spec, output_dir=run_dir, reporter=reporter, resume=True, progress=False)

`nproc` must equal `spec.gpus` (train.run refuses another world with a SpecError on `gpus`). On
CUDA, rank r uses `cuda:LOCAL_RANK`: set CUDA_VISIBLE_DEVICES to the GPUs the run holds. Every rank
returns the same `RunResult`; the final model is written once, by rank 0, before they return.
Only rank 0's reporter is logged to (train.run swaps any other rank's for a NullReporter, so passing
the real one everywhere is harmless): metrics are reduced over ranks first (token counts and
throughput are sums). Rank 0's `should_stop()` is asked every step and its answer broadcast, so all
ranks checkpoint and stop at the same step. `rank()`/`is_main()` read the environment, so they
answer before the process group exists. If one rank dies, torchrun stops the others and exits
non-zero (its default `--max-restarts 0`); SIGTERM to torchrun is forwarded to every rank.

Why torchrun and not `accelerate launch`: it ships with torch, needs no config file, `--standalone`
picks a free rendezvous port (several runs on one host do not collide), and Accelerate's
`Accelerator` reads the same environment variables, so nothing is lost.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

# set by torchrun in every process it starts
_LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


def launcher_argv(nproc: int, module: str, args: list[str]) -> list[str]:
    """The command that runs `python -m module *args` as `nproc` processes of one job on this host."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "--max-restarts=0", "--module", module, *args,
    ]  # fmt: skip


def inside_launcher() -> bool:
    """True in a process started by torchrun (even with one process)."""
    return all(name in os.environ for name in _LAUNCHER_ENV)


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def init(cpu: bool) -> None:
    """Join the process group (gloo on CPU, nccl on CUDA) if torchrun started several processes.

    Accelerate joins it too when it builds its `Accelerator`; whoever comes first wins, the other
    sees `is_initialized()`.
    """
    if world_size() <= 1 or dist.is_initialized():
        return
    if not cpu:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="gloo" if cpu else "nccl")


def shutdown() -> None:
    """Leave the process group once the run is over: a rank that exits with gloo's threads still running
    can abort at exit ("terminate called without an active exception"), failing a run that finished."""
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_rank(code: int = 0) -> NoReturn:
    """A launched rank's last act once its work is written: exit without the interpreter's teardown.

    Even after `shutdown()`, destructors run at exit can meet a thread of the process group's still
    joinable and abort a rank that finished ("terminate called without an active exception", SIGABRT),
    and torchrun then fails the whole run. Everything a rank writes is closed before this is called.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (one collective)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any: the stop request of rank 0 reaches all ranks."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_lists(values: list, device: torch.device) -> list:
    """Concatenate a small per-rank list over ranks, in rank order."""
    if not is_distributed():
        return list(values)
    out: list[list] = [[] for _ in range(world_size())]
    dist.all_gather_object(out, values)
    return [v for part in out for v in part]


def rank_slice(n: int) -> slice:
    """This rank's contiguous share of n rows (n is a multiple of the world size: spec.batch_size)."""
    share = n // world_size()
    return slice(rank() * share, (rank() + 1) * share)


# --- FSDP2 ------------------------------------------------------------------------------------------
def shard(model: nn.Module, *, param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: each decoder layer its own unit, the rest (embeddings, norm, lm_head) the root unit.

    The root unit is not resharded after forward (FSDP2's default for the root), so the lm_head
    weight read after the forward is the full, unsharded parameter: the fused chunked loss uses it
    as it is, its gradient lands in the unsharded parameter, and FSDP reduce-scatters it at the end
    of backward like any other.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # the root returns hidden states that completion_hidden only indexes (no in-place op): FSDP's view warning
    # is about in-place ops on them
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mp = (
        MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        if param_dtype
        else MixedPrecisionPolicy()
    )
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (what `_no_split_modules` names)."""
    from core_distill.models import causal_lm

    names = set(getattr(causal_lm(model), "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def full_parameters(*models: nn.Module | None) -> Iterator[None]:
    """Every FSDP unit of `models` gathered once and kept whole until the block ends.

    Generation runs a different number of forwards on each rank (each stops at its own EOS), so the
    per-forward all-gathers of FSDP would not line up; inside this block forwards run no
    collectives. Outside FSDP it does nothing.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for model in models if model is not None for m in model.modules() if isinstance(m, FSDPModule)]
    inner = [u for model in models if model is not None for u in model.modules()
             if isinstance(u, FSDPModule) and u is not model]  # fmt: skip
    for u in inner:
        u.set_reshard_after_forward(False, recurse=False)
    for u in units:
        u.unshard()
    try:
        yield
    finally:
        for u in inner:
            u.set_reshard_after_forward(True, recurse=False)
        for u in units:
            u.reshard()
