"""Working memory of the distillation loss as the vocabulary grows: fused chunked vs full logits.

    python benchmarks/bench_loss_memory.py                  # prints a Markdown table
    python benchmarks/bench_loss_memory.py --repeat 3 --methods full,fused,fused_top64   # medians of 3

Each measurement runs in a fresh process: it builds hidden states for N completion positions and
the two lm_heads, records RSS, resets the peak (/proc/self/clear_refs), runs forward + backward of
the loss, and reports peak RSS minus the starting RSS (after one warm-up call of the same size, which also compiles). "full logits" is the textbook path
(student and teacher logits for every position, then `generalized_jsd`), as TRL's GKDTrainer does.
"fused_top64" is the fused loss on the teacher's top 64 ids plus the tail bucket (`loss_top_k: 64`).
RSS peaks move with the allocator and the machine's load: `--repeat N` reports the median of N processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure(method: str, vocab: int, positions: int, hidden: int) -> dict[str, float]:
    import torch

    from core_distill.losses import DenseTeacher, Head, fused_distill_loss, generalized_jsd

    torch.manual_seed(0)
    h_s = torch.randn(positions, hidden, requires_grad=True)
    w_s = (torch.randn(vocab, hidden) * 0.05).requires_grad_()
    h_t = torch.randn(positions, hidden * 2)
    w_t = torch.randn(vocab, hidden * 2) * 0.05
    targets = torch.randint(0, vocab, (positions,))
    w_s.grad = torch.zeros_like(w_s)  # the weight gradient exists in training anyway: count it in the baseline

    def step(n: int) -> None:
        if method.startswith("fused"):
            top_k = int(method.removeprefix("fused_top") or 0) if method != "fused" else 0
            teacher = DenseTeacher(h_t[:n], Head(w_t))
            terms = fused_distill_loss(h_s[:n], Head(w_s), teacher, targets[:n], beta=0.5, top_k=top_k)
            terms.loss.backward()
        else:
            with torch.no_grad():
                t_logits = h_t[:n] @ w_t.t()
            generalized_jsd(h_s[:n] @ w_s.t(), t_logits, beta=0.5).backward()

    step(positions)  # warm-up: imports, torch.compile of the fused kernel (every chunk shape), allocator
    baseline = rss_kib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    start = time.perf_counter()
    step(positions)
    seconds = time.perf_counter() - start
    return {"working_mib": (rss_kib("VmHWM") - baseline) / 1024, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=512, help="completion positions (batch x length)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocabs", default="32000,65536,151936")
    parser.add_argument("--methods", default="full,fused", help="comma-separated: full, fused, fused_topK")
    parser.add_argument("--repeat", type=int, default=1, help="fresh processes per cell; the median is shown")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.positions, args.hidden)))
        return
    methods = args.methods.split(",")
    print(f"{args.positions} completion positions, hidden {args.hidden} (teacher {2 * args.hidden}), fp32, beta 0.5")
    print(f"median of {args.repeat} process(es) per cell\n")
    print(
        "| vocabulary | "
        + " | ".join(f"{m}: working MiB" for m in methods)
        + " | "
        + " | ".join(f"{m}: s" for m in methods)
        + " |"
    )
    print("|---|" + "---|" * (2 * len(methods)))
    for vocab in [int(v) for v in args.vocabs.split(",")]:
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for _ in range(args.repeat):  # interleaved, so a burst of load hits every method alike
            for method in methods:
                runs[method].append(_run_one(method, vocab, args.positions, args.hidden))
        mib = [statistics.median(r["working_mib"] for r in runs[m]) for m in methods]
        sec = [statistics.median(r["seconds"] for r in runs[m]) for m in methods]
        print(
            f"| {vocab:,} | "
            + " | ".join(f"{v:,.0f}" for v in mib)
            + " | "
            + " | ".join(f"{v:.2f}" for v in sec)
            + " |"
        )


def _run_one(method: str, vocab: int, positions: int, hidden: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        method,
        str(vocab),
        "--positions",
        str(positions),
        "--hidden",
        str(hidden),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
