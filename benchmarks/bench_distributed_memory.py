"""Per-process memory of one training run: 1 process vs 2 processes with DDP and with FSDP2 (CPU, gloo).

    python benchmarks/bench_distributed_memory.py                 # prints a Markdown table
    python benchmarks/bench_distributed_memory.py --hidden 1024 --layers 8 --steps 3

Every configuration goes through the real launcher (`core_distill.distributed.launcher_argv`, one
process included) and `core_distill.train.run`. The student is a Llama-shaped model built here
(objective sft: no teacher, so the figures are the student's weights, gradients and AdamW state).
Each rank records its RSS after imports and its peak RSS (VmHWM). FSDP allocates and frees a
unit's gathered weights and gradients at every forward and backward; glibc keeps such freed blocks
in the process heap by default, so peak RSS then counts every transient buffer ever used (with the
default allocator settings 2-process FSDP showed a higher peak than one process, 1,268 vs 1,129 MiB,
while its live tensors were half). The ranks therefore run with `MALLOC_MMAP_THRESHOLD_` = 1 MiB
(`--mmap-threshold`): big blocks are mmapped and returned on free, as a GPU caching allocator would
reuse them. The run stops itself after its last
step through the reporter (a stop request), so the peak covers loading, sharding and training
but not the final `from_pretrained` save, which gathers the full weights on rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


class StopAfter:
    """A reporter that asks the run to stop once `steps` steps are logged (rank 0 only)."""

    def __init__(self, steps: int):
        self.steps, self.done = steps, 0

    def log(self, step, metrics):
        self.done = max(self.done, step)

    def log_samples(self, step, samples):
        pass

    def should_stop(self):
        return self.done >= self.steps

    def resumed(self, step):
        pass


def rank_main(spec_path: str, out: str) -> None:
    """What every rank runs: train, then write its memory figures."""
    from core_distill import distributed
    from core_distill.spec import DistillSpec
    from core_distill.train import run

    baseline = status_mib("VmRSS")
    spec = DistillSpec.from_yaml(Path(spec_path))
    run(spec, output_dir=out, reporter=StopAfter(spec.max_steps - 1), resume=False)
    record = {"rank": distributed.rank(), "baseline_mib": baseline, "peak_mib": status_mib("VmHWM")}
    Path(out, f"memory-rank{distributed.rank()}.json").write_text(json.dumps(record))


def build(root: Path, hidden: int, layers: int) -> tuple[Path, Path, int]:
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import addition_rows, build_model, build_tokenizer, write_jsonl

    tokenizer = build_tokenizer()
    model = build_model(root / "student", tokenizer, hidden=hidden, layers=layers, head_dim=64, seed=0)
    params = sum(p.numel() for p in model.parameters())
    return root / "student", write_jsonl(root / "train.jsonl", addition_rows(64, seed=0)), params


def measure(root: Path, name: str, student: Path, data: Path, steps: int, mmap_threshold: int, **fields) -> list[dict]:
    from core_distill.distributed import launcher_argv
    from core_distill.spec import DistillSpec

    spec = DistillSpec(student=str(student), teacher="", train_data=str(data), eval_data="", objective="sft",
                       lmbda=0.0, max_steps=steps + 1, batch_size=4, save_every=0, **fields)  # fmt: skip
    spec_path = root / f"{name}.yaml"
    spec_path.write_text(spec.to_yaml())
    out = root / name
    argv = launcher_argv(spec.gpus, "bench_distributed_memory", ["--rank-main", str(spec_path), str(out)])
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parent}:{ROOT}", "OMP_NUM_THREADS": "1"}
    if mmap_threshold:  # glibc serves blocks above this with mmap and returns them to the OS on free
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(p.read_text()) for p in sorted(out.glob("memory-rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank-main", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=1 << 20,
        help="MALLOC_MMAP_THRESHOLD_ of the ranks (0 = glibc's default, which keeps freed buffers in the heap)",
    )
    args = parser.parse_args()
    if args.rank_main:
        rank_main(*args.rank_main)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        student, data, params = build(root, args.hidden, args.layers)
        configs = {
            "1 process": dict(gpus=1),
            "2 processes, DDP": dict(gpus=2, sharding="none"),
            "2 processes, FSDP2": dict(gpus=2, sharding="fsdp"),
        }
        print(f"student: hidden {args.hidden}, {args.layers} layers, {params / 1e6:.1f}M parameters "
              f"({params * 4 / 2**20:.0f} MiB fp32), AdamW, {args.steps} steps, batch 4, "
              f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold or 'default'}\n")  # fmt: skip
        print("| run | rank | RSS after imports (MiB) | peak RSS (MiB) | peak - imports (MiB) |")
        print("|---|---|---|---|---|")
        for name, fields in configs.items():
            slug = name.replace(" ", "_").replace(",", "")
            for r in measure(root, slug, student, data, args.steps, args.mmap_threshold, **fields):
                grown = r["peak_mib"] - r["baseline_mib"]
                print(f"| {name} | {r['rank']} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | {grown:.0f} |")


if __name__ == "__main__":
    main()
