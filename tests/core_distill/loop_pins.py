"""Short runs of every objective on the tiny models, and the metrics they log (the loop's pins).

    PYTHONPATH=. python -m tests.core_distill.loop_pins --write           # re-pin every case
    PYTHONPATH=. python -m tests.core_distill.loop_pins --write on_policy # re-pin the cases named

The pins are this machine's float order (torch's CPU kernels, one thread): a reshape of the loop that keeps the math
keeps them to the last digit; a changed sampler or loss moves them, which the change then says.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

PINS = Path(__file__).parent / "pins" / "loop_metrics.json"

# name -> spec overrides of TinyWorkspace.spec (3 steps, grad_accum 2, an evaluation at steps 0 and 3)
CASES: dict[str, dict[str, Any]] = {
    "on_policy": dict(lmbda=1.0, beta=0.5),
    "reverse_kl_on_policy": dict(lmbda=1.0, beta=1.0, temperature=1.0),
    "off_policy": dict(lmbda=0.0, beta=0.0),
    "mixed_sft_alpha": dict(lmbda=0.5, sft_alpha=0.3, seed=1),
    "seq_kd": dict(lmbda=0.0, seq_kd=True, beta=0.0),
    "minillm": dict(objective="minillm", lmbda=1.0, gamma=0.5, temperature=1.0),
    "minillm_policy_gradient_only": dict(
        objective="minillm", lmbda=1.0, single_step_decomposition=False, temperature=1.0
    ),  # fmt: skip
    "minillm_single_step": dict(objective="minillm", lmbda=1.0, gamma=0.0, temperature=1.0),
    "opsd_fixed": dict(opsd="fixed", teacher="", lmbda=1.0, beta=0.0),
    "opsd_dynamic": dict(opsd="dynamic", teacher="", lmbda=0.5),
    "sft": dict(objective="sft", lmbda=0.0, teacher=""),
    "sft_on_policy_seq_kd": dict(objective="sft", lmbda=0.0, seq_kd=True),
    "top_k_sft_alpha": dict(loss_top_k=5, beta=1.0, sft_alpha=0.5),
    # the inverse-CDF token draw (generation/sampling.py): other tokens than on_policy's from the same seed
    "on_policy_inverse_cdf": dict(lmbda=1.0, beta=0.5, token_draw="inverse_cdf"),
    "seq_kd_inverse_cdf": dict(lmbda=0.0, seq_kd=True, beta=0.0, token_draw="inverse_cdf"),
}


def _numbers(metrics: dict[str, float]) -> dict[str, float]:
    """A step's logged metrics without the wall times."""
    return {k: v for k, v in metrics.items() if not k.startswith(("time/", "perf/"))}


def run_case(workspace, name: str, folder: Path) -> list[list]:
    """[step, metrics] of every line the run logs, in order."""
    import torch

    from core_distill.reporting import JsonlReporter
    from core_distill.train import run

    # one intra-op thread: the float order of a reduction follows the thread count, which other tests (a toy
    # build sets 1) and the machine change; pinned under one, the last digits do not depend on what ran before
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(workspace.spec(**CASES[name]), output_dir=folder, reporter=JsonlReporter(folder))
    finally:
        torch.set_num_threads(threads)
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [[line["step"], _numbers(line["metrics"])] for line in lines]


def main() -> None:
    from tests.tiny_models import build_workspace

    names = [a for a in sys.argv[1:] if not a.startswith("--")] or list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        workspace = build_workspace(Path(tmp) / "tiny")
        pins = {name: run_case(workspace, name, Path(tmp) / name) for name in names}
    if "--write" in sys.argv:
        kept = json.loads(PINS.read_text()) if PINS.exists() and names != list(CASES) else {}
        PINS.write_text(json.dumps(kept | pins, indent=1, sort_keys=True) + "\n")
        print(f"wrote {', '.join(names)} to {PINS}")
    else:
        print(json.dumps(pins, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
