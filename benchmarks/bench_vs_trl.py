"""One optimizer step of this engine against TRL's GKDTrainer, same models, data and precision.

    python benchmarks/bench_vs_trl.py                       # all four runs, then a Markdown table
    python benchmarks/bench_vs_trl.py --only ours:off_policy --steps 3
    python benchmarks/bench_vs_trl.py --device cuda --dtype bfloat16   # on a GPU (benchmarks/gpu_check.sh)
    python benchmarks/bench_vs_trl.py --frameworks ours                # without TRL installed
    python benchmarks/bench_vs_trl.py --token-draw inverse_cdf         # ours draws rollout tokens by inverse CDF

Models (built locally, saved with save_pretrained, loaded by path): Qwen2-shaped (vocabulary
151,936, untied embeddings, MLP width 2.75 x hidden, head dimension 64); student hidden 256 x 2
layers (79M parameters), teacher hidden 512 x 4 layers (168M). The architecture class is Llama:
transformers 5 loads a `qwen2` folder's tokenizer as Qwen2Tokenizer, which replaces the
character-level pre-tokenizer both frameworks need here with byte-level BPE's. Data: chat rows of a ~60-token prompt and a ~60-token completion (character-level
tokenizer). Precision is the same for both: fp32 by default (TRL gets bf16=False); with --dtype bfloat16
the student keeps fp32 master weights under bf16 autocast in both (our `dtype: bfloat16`, TRL's bf16=True)
and both teachers are loaded in bf16. Settings:
    off_policy: lmbda 0, batch 4, grad_accum 1
    on_policy:  lmbda 1, batch 4, grad_accum 8, 64 new tokens
Each framework x setting runs in a fresh process. Step time is the median over steps 2..N (step 1
compiles and allocates the optimizer state). Working memory is peak RSS during step 2 minus RSS
right after step 1 (both models and the optimizer state allocated), read from VmHWM after
resetting it through /proc/self/clear_refs. Tokens per second counts prompt + completion tokens of
every row of the step (completions of random models run to max_new_tokens on-policy), the same
count for both frameworks, so its ratio is the inverse ratio of step times. On CUDA, working memory
is torch.cuda.max_memory_allocated during step 2 minus memory_allocated after step 1, and "peak" is
max_memory_allocated over steps 2..N (models, optimizer state and the worst step's activations).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB = 151_936
PROMPT_CHARS, COMPLETION_CHARS, NEW_TOKENS = 56, 56, 64
SETTINGS = {
    "off_policy": dict(lmbda=0.0, grad_accum=1),
    "on_policy": dict(lmbda=1.0, grad_accum=8),
}


# --- memory probes ------------------------------------------------------------------------------------
def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


class StepProbe:
    """Step times, and the working memory of step 2 (peak minus what was held after step 1).

    CPU: RSS (VmHWM reset through /proc/self/clear_refs). CUDA: the caching allocator's counters.
    """

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.times: list[float] = []
        self.baseline = 0.0
        self.working = 0.0
        self._start = time.perf_counter()

    def begin(self) -> None:
        self._sync()
        self._start = time.perf_counter()

    def end(self, step: int, seconds: float | None = None) -> None:
        self._sync()
        self.times.append(seconds if seconds is not None else time.perf_counter() - self._start)
        if step == 1:
            self.baseline = self._held()
            self._reset_peak()
        elif step == 2:
            self.working = self._peak() - self.baseline

    def result(self) -> dict[str, float]:
        later = self.times[1:] or self.times
        out = {"step_seconds": statistics.median(later), "working_mib": self.working, "steps": len(self.times)}
        if self.cuda:
            import torch

            out["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20  # since the reset: steps 2..N
        return out

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def _held(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated() / 2**20
        return rss_mib()

    def _reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS

    def _peak(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
        return rss_mib("VmHWM")


# --- models and data --------------------------------------------------------------------------------------
def build_assets(root: Path, rows: int = 64) -> None:
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    special = ["<|pad|>", "<|eos|>", "<|user|>", "<|assistant|>"]
    chars = [chr(c) for c in range(32, 127)]
    fillers = [f"<f{i}>" for i in range(VOCAB - len(special) - len(chars))]
    vocab = {tok: i for i, tok in enumerate(special + chars + fillers)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|eos|>",
                                        additional_special_tokens=special[2:])  # fmt: skip
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
        "{% else %}<|assistant|>{{ m['content'] }}<|eos|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    for name, hidden, layers, seed in (("student", 256, 2, 1), ("teacher", 512, 4, 2)):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=VOCAB, hidden_size=hidden, intermediate_size=int(hidden * 2.75), num_hidden_layers=layers,
            num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=512,
            tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    import random

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 "
    with open(root / "train.jsonl", "w") as f:
        for _ in range(rows):
            prompt = "".join(rng.choice(letters) for _ in range(PROMPT_CHARS))
            completion = "".join(rng.choice(letters) for _ in range(COMPLETION_CHARS))
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": completion}]}) + "\n")  # fmt: skip


def tokens_per_step(setting: str) -> int:
    grad_accum = SETTINGS[setting]["grad_accum"]
    prompt = PROMPT_CHARS + 2  # <|user|> ... <|assistant|>
    completion = COMPLETION_CHARS + 1 if setting == "off_policy" else NEW_TOKENS
    return 4 * grad_accum * (prompt + completion)


# --- the two frameworks ---------------------------------------------------------------------------------
def run_ours(root: Path, setting: str, steps: int, device: str, dtype: str, token_draw: str = "multinomial") -> dict[str, float]:
    from core_distill.reporting import NullReporter
    from core_distill.spec import DistillSpec
    from core_distill.train import run

    probe = StepProbe(cuda=device == "cuda")

    class Probe(NullReporter):
        def log(self, step, metrics):
            if "perf/step_seconds" in metrics:
                probe.end(step, metrics["perf/step_seconds"])
                probe.lengths.append(metrics["completion/length_mean"])

    probe.lengths = []  # type: ignore[attr-defined]
    spec = DistillSpec(
        student=str(root / "student"), teacher=str(root / "teacher"), train_data=str(root / "train.jsonl"),
        eval_data="", beta=0.5, temperature=0.9, max_new_tokens=NEW_TOKENS, batch_size=4, max_steps=steps,
        learning_rate=1e-5, lr_schedule="constant", dtype=dtype, eval_every=0, save_every=0, **SETTINGS[setting],
        token_draw=token_draw,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        run(spec, output_dir=out, reporter=Probe())
    return {**probe.result(), "completion_length": statistics.mean(probe.lengths)}  # type: ignore[attr-defined]


def run_trl(root: Path, setting: str, steps: int, device: str, dtype: str) -> dict[str, float]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    probe = StepProbe(cuda=device == "cuda")
    bf16 = dtype == "bfloat16"

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            probe.begin()

        def on_step_end(self, args, state, control, **kwargs):
            probe.end(state.global_step)

    with tempfile.TemporaryDirectory() as out:
        config = GKDConfig(
            output_dir=out, use_cpu=device == "cpu", bf16=bf16, report_to="none", save_strategy="no", logging_steps=1,
            per_device_train_batch_size=4, gradient_accumulation_steps=SETTINGS[setting]["grad_accum"],
            lmbda=SETTINGS[setting]["lmbda"], beta=0.5, temperature=0.9, max_new_tokens=NEW_TOKENS, seq_kd=False,
            max_steps=steps, learning_rate=1e-5, lr_scheduler_type="constant", seed=0, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = GKDTrainer(
            model=AutoModelForCausalLM.from_pretrained(root / "student", dtype="float32"),
            teacher_model=AutoModelForCausalLM.from_pretrained(root / "teacher", dtype=dtype),
            args=config, processing_class=AutoTokenizer.from_pretrained(root / "student"),
            train_dataset=load_dataset("json", data_files=str(root / "train.jsonl"), split="train"),
            callbacks=[Probe()],
        )  # fmt: skip
        trainer.train()
    return probe.result()


# --- driver ----------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="framework:setting, e.g. ours:off_policy (runs in this process)")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps per run (default 4 off-, 3 on-policy)")
    parser.add_argument("--assets", type=Path, default=Path(tempfile.gettempdir()) / "distill-bench-vs-trl")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu hides any GPU from both")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--frameworks", default="trl,ours", help="comma-separated; 'ours' alone needs no TRL")
    parser.add_argument("--token-draw", choices=["multinomial", "inverse_cdf"], default="multinomial",
                        help="ours: how rollout tokens are drawn (spec token_draw; TRL always uses multinomial)")  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA; children inherit it
    frameworks = args.frameworks.split(",")
    if not (args.assets / "teacher").exists():
        args.assets.mkdir(parents=True, exist_ok=True)
        build_assets(args.assets)
    if args.only:
        framework, setting = args.only.split(":")
        steps = args.steps or (4 if setting == "off_policy" else 3)
        if framework == "ours":
            result = run_ours(args.assets, setting, steps, args.device, args.dtype, args.token_draw)
        else:
            result = run_trl(args.assets, setting, steps, args.device, args.dtype)
        print("RESULT " + json.dumps(result))
        return

    results: dict[tuple[str, str], dict[str, float]] = {}
    for setting in SETTINGS:
        for framework in frameworks:
            load = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--only", f"{framework}:{setting}", "--assets", str(args.assets),
                   "--device", args.device, "--dtype", args.dtype, "--token-draw", args.token_draw]  # fmt: skip
            if args.steps:
                cmd += ["--steps", str(args.steps)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode != 0 or not line:
                sys.exit(f"{framework}:{setting} failed:\n{done.stderr[-3000:]}")
            results[(framework, setting)] = {**json.loads(line[0][7:]), "load": load}
            print(f"{framework:>4} {setting:<10} {results[(framework, setting)]}", file=sys.stderr)

    cuda = args.device == "cuda"
    print(f"device {args.device}" + (f" ({_gpu_name()})" if cuda else "") + f", {args.dtype}\n")
    peak_head = " | max_memory_allocated, steps 2+ (MiB)" if cuda else ""
    print(f"| setting | framework | s / step | tokens / s | working memory (MiB){peak_head} | load avg |")
    print("|---|---|---|---|---|" + ("---|" if cuda else "") + "---|")
    for setting in SETTINGS:
        for framework in frameworks:
            r = results[(framework, setting)]
            peak = f" | {r['peak_allocated_mib']:.0f}" if cuda else ""
            print(f"| {setting} | {framework} | {r['step_seconds']:.2f} | {tokens_per_step(setting) / r['step_seconds']:.0f} "
                  f"| {r['working_mib']:.0f}{peak} | {r['load']:.2f} |")  # fmt: skip
    print()
    if "trl" not in frameworks or "ours" not in frameworks:
        return
    for setting in SETTINGS:
        trl, ours = results[("trl", setting)], results[("ours", setting)]
        print(f"- {setting}: ours is {trl['step_seconds'] / ours['step_seconds']:.1f}x TRL's tokens/s (target >= 3x); "
              f"working memory {ours['working_mib'] / max(trl['working_mib'], 1):.2f}x TRL's (target <= 0.25x off-policy)")  # fmt: skip


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    main()
