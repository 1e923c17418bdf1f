"""Peak memory of one training step against completion length, with and without gradient checkpointing.

    nice -n 10 python benchmarks/bench_long_sequences.py                   # 1k / 4k / 8k, CPU or CUDA
    python benchmarks/bench_long_sequences.py --lengths 1024,4096 --device cuda --dtype bfloat16

One step of the engine's loss path: the teacher's hidden states under no_grad, the student's forward
(`completion_hidden`: hidden states at completion positions only), `fused_distill_loss` (chunked
lm_head, analytic gradients) and backward. No optimizer step: its state does not grow with length.
Models are built locally (Llama-shaped, vocabulary 8,192, untied embeddings, head dimension 64):
student hidden 256 x 4 layers (MLP 688), teacher hidden 384 x 4 layers. Batch 1, a 64-token prompt.
Checkpointing is HF's `model.gradient_checkpointing_enable()` (non-reentrant), the call the spec's
`gradient_checkpointing: true` makes.

Every configuration runs in a fresh process. It loads both models, runs a 128-token warm-up step
(lazy initialisation, thread pools), then measures the step. CPU: working memory = peak RSS during
the step minus RSS before it (VmHWM, reset through /proc/self/clear_refs so loading's peak does not
count). CUDA: torch.cuda.max_memory_allocated during the step minus memory_allocated before it.
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

VOCAB, PROMPT = 8192, 64
MODELS = {"student": (256, 4, 1), "teacher": (384, 4, 2)}  # name: (hidden, layers, seed)


def build_models(root: Path, max_positions: int) -> None:
    """Both models, saved with save_pretrained so each measuring process loads them like the engine does."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    for name, (hidden, layers, seed) in MODELS.items():
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_hidden_layers=layers,
            num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, head_dim=64,
            max_position_embeddings=max_positions, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
            bos_token_id=None,
        )  # fmt: skip
        LlamaForCausalLM(config).save_pretrained(root / name)


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def measure(root: Path, length: int, checkpointing: bool, device_name: str, dtype_name: str) -> dict[str, float]:
    """One step at `length` completion tokens in this process; returns working MiB and seconds."""
    import torch
    from transformers import LlamaForCausalLM

    from core_distill.data.batches import make_batch
    from core_distill.losses import DenseTeacher, fused_distill_loss
    from core_distill.models import completion_hidden, head_of

    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    student = LlamaForCausalLM.from_pretrained(root / "student", dtype=dtype).to(device).train()
    teacher = LlamaForCausalLM.from_pretrained(root / "teacher", dtype=dtype).to(device).eval()
    if checkpointing:  # as train.py does for `gradient_checkpointing: true`
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    gen = torch.Generator().manual_seed(0)

    def step(n: int) -> None:
        prompt = torch.randint(2, VOCAB, (PROMPT,), generator=gen).tolist()
        completion = torch.randint(2, VOCAB, (n,), generator=gen).tolist()
        batch = make_batch([prompt], [completion], pad_id=0).to(device)
        with torch.no_grad():
            teacher_targets = DenseTeacher(completion_hidden(teacher, batch), head_of(teacher))
        targets = batch.completion_ids[batch.completion_mask]
        terms = fused_distill_loss(completion_hidden(student, batch), head_of(student), teacher_targets, targets,
                                   beta=0.5, normalizer=float(n))  # fmt: skip
        terms.loss.backward()
        assert all(p.grad is not None for p in student.model.layers.parameters()), "no gradient reached the layers"

    step(128)  # warm-up; the parameter gradients it leaves are part of the baseline, as in training
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = rss_mib()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    start = time.perf_counter()
    step(length)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib("VmHWM")
    return {"working_mib": peak - baseline, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,4096,8192", help="completion lengths in tokens")
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--assets", type=Path, default=Path(tempfile.gettempdir()) / "distill-bench-long-seq")
    parser.add_argument("--one", nargs=2, metavar=("LENGTH", "CKPT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.one:
        result = measure(args.assets, int(args.one[0]), args.one[1] == "1", args.device, args.dtype)
        print("RESULT " + json.dumps(result))
        return
    if not (args.assets / "teacher").exists() or _max_positions(args.assets) < PROMPT + max(lengths):
        build_models(args.assets, max_positions=PROMPT + max(max(lengths), 8192))

    print(f"device {args.device}, {args.dtype}; student hidden 256 x 4 layers, teacher 384 x 4, vocab {VOCAB:,}, "
          f"batch 1, prompt {PROMPT} tokens; load avg {os.getloadavg()[0]:.2f}\n")  # fmt: skip
    print("| completion tokens | no checkpointing: MiB | checkpointing: MiB | ratio | no ckpt: s | ckpt: s |")
    print("|---|---|---|---|---|---|")
    for length in lengths:
        row = {ckpt: _run_one(args, length, ckpt) for ckpt in (False, True)}
        off, on = row[False], row[True]
        print(f"| {length:,} | {off['working_mib']:,.0f} | {on['working_mib']:,.0f} | "
              f"{on['working_mib'] / max(off['working_mib'], 1e-9):.2f} | {off['seconds']:.1f} | {on['seconds']:.1f} |",
              flush=True)  # fmt: skip


def _run_one(args: argparse.Namespace, length: int, checkpointing: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--one", str(length), "1" if checkpointing else "0", "--device", args.device,
           "--dtype", args.dtype, "--assets", str(args.assets)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not line:
        sys.exit(f"length {length}, checkpointing {checkpointing} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[0][7:])


def _max_positions(root: Path) -> int:
    return json.loads((root / "teacher" / "config.json").read_text())["max_position_embeddings"]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
