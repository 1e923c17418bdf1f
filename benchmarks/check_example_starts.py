"""Does an example spec knock the student off its start? An eval every 5 steps over the first 40.

    python benchmarks/check_example_starts.py examples/*.yaml [--steps 40] [--every 5]

Each spec runs as written (its learning rate, batch size and sampling temperature) for --steps
steps, evaluating on its eval split every --every steps (one torch thread, so the numbers are the
same on any machine), and prints the accuracy curve with its lowest point against step 0. An eval
every 20 steps, as the old examples had, can miss a dip that recovers by then.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from core_distill.metric_keys import EVAL_EXACT_MATCH
from core_distill.reporting import NullReporter
from core_distill.spec import DistillSpec
from core_distill.train import run


class Curve(NullReporter):
    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if EVAL_EXACT_MATCH in metrics:
            self.points.append((step, metrics[EVAL_EXACT_MATCH]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| spec | lr | batch | T | step 0 | lowest (step) | step {args.steps} |")
    print("|---|---|---|---|---|---|---|")
    for path in args.specs:
        spec = DistillSpec.from_yaml(path).with_overrides(
            {"max_steps": args.steps, "eval_every": args.every, "save_every": 0}
        )
        curve = Curve()
        with tempfile.TemporaryDirectory() as folder:
            run(spec, output_dir=folder, reporter=curve, resume=False)
        start, end = curve.points[0][1], curve.points[-1][1]
        low_step, low = min(curve.points, key=lambda p: p[1])
        print(f"| {path.stem} | {spec.learning_rate:g} | {spec.batch_size} | {spec.temperature:g} | {start:.1%} "
              f"| {low:.1%} ({low_step}) | {end:.1%} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
