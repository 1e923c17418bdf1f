"""Checkpoints for resume: trainable weights, optimizer, scheduler and the step.

The data order, the on/off-policy draws and sampling are pure functions of (seed, step), so
these four things are all a killed run needs to continue exactly where it stopped.
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


def load_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler) -> int:
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
