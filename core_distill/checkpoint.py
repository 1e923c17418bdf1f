"""Checkpoints for resume: trainable weights, optimizer, scheduler and the step.

The data order, the on/off-policy draws and sampling are pure functions of (seed, step), so
these four things are all a killed run needs to continue exactly where it stopped.

Layout of `OUTPUT/checkpoints/step-00000042/`:
    one process:      trainable.pt, optimizer.pt, scheduler.pt, state.json
    several (gpus>1): dcp/ (torch.distributed.checkpoint: model + optimizer, one file per rank and a
                      .metadata index; FSDP shards are written by their owners), scheduler.pt,
                      state.json ({"step", "format": "dcp", "world_size"})
A folder counts once its state.json exists (it is written last, then the folder is renamed from
`.tmp-step-*`); a DCP checkpoint loads at any world size, one process included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

KEEP_LAST = 2


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest_checkpoint(output_dir: Path) -> Path | None:
    folders = sorted(checkpoint_dir(output_dir).glob("step-*"))
    complete = [f for f in folders if (f / "state.json").exists()]
    return complete[-1] if complete else None


def save_checkpoint(output_dir: Path, step: int, model: nn.Module, optimizer, scheduler) -> Path:
    """Write to a temporary folder, then rename: a kill mid-write never leaves a half checkpoint."""
    root = checkpoint_dir(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
    torch.save(trainable, tmp / "trainable.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-KEEP_LAST]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_sharded_checkpoint(output_dir: Path, step: int, model: nn.Module, optimizer, scheduler) -> Path:
    """Every rank writes its part with torch.distributed.checkpoint; rank 0 writes the rest and renames."""
    import torch.distributed.checkpoint as dcp

    from core_distill import distributed as dist

    root = checkpoint_dir(output_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(_dcp_state(model, optimizer), checkpoint_id=str(tmp / "dcp"))
    dist.barrier()
    if dist.is_main():
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "format": "dcp", "world_size": dist.world_size()}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root.glob("step-*"))[:-KEEP_LAST]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _dcp_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True)  # LoRA: the adapters and their optimizer state only


def _dcp_state(model: nn.Module, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=_dcp_options())
    return {"model": model_sd, "optim": optim_sd}


def _load_sharded(folder: Path, model: nn.Module, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _dcp_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder / "dcp"))
    set_state_dict(model, getattr(optimizer, "optimizer", optimizer), model_state_dict=state["model"],
                   optim_state_dict=state["optim"], options=_dcp_options())  # fmt: skip


def load_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler, wrapped: nn.Module | None = None) -> int:
    """Restore a checkpoint of either layout; `wrapped` is the DDP/FSDP model a DCP checkpoint loads into."""
    state = json.loads((folder / "state.json").read_text())
    if state.get("format") == "dcp":
        _load_sharded(folder, wrapped if wrapped is not None else model, optimizer)
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu"))
        return int(state["step"])
    trainable = torch.load(folder / "trainable.pt", map_location="cpu")
    params = dict(model.named_parameters())
    missing = [name for name in trainable if name not in params]
    if missing:
        raise ValueError(f"checkpoint {folder} does not match this model (unknown parameters: {missing[:3]})")
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu"))
    return int(json.loads((folder / "state.json").read_text())["step"])
