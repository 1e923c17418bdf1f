"""`distill toy build --task chain`: the chain task's data, a teacher and a student, both trained to convergence.

The same recipe as countdown's (`build.train_sft`: next-token cross-entropy on completions, AdamW,
linear decay, one torch thread per model), on the chain task (`toy/chain.py`). The manifest records
the eval loss and the eval accuracy (greedy, exact final answer) every tenth of the run, and the test
accuracy at the end. The package ships the result under `toy/assets/chain/`.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from core_distill.data.batches import Example, encode_rows
from core_distill.generation.sampling import sample_completions
from core_distill.toy.build import changed_recipe, new_model, train_sft
from core_distill.toy.chain import ChainRanges, is_correct, make_splits, write_splits
from core_distill.toy.tokenizer import build_tokenizer

TASK = "chain"


@dataclass(frozen=True)
class ChainConfig:
    seed: int = 0
    train_rows: int = 20_000
    eval_rows: int = 100  # distinct prompts, one row each (one answer per prompt)
    test_rows: int = 300
    start_min: int = 10
    start_max: int = 99
    operand_min: int = 2
    operand_max: int = 9
    steps_min: int = 3
    steps_max: int = 6
    value_max: int = 99
    max_new_tokens: int = 96  # the longest completion a model may write when graded
    teacher_hidden: int = 64
    teacher_layers: int = 2
    teacher_steps: int = 6000
    teacher_intermediate: int = 0  # the MLP's width; 0 = twice the hidden size
    student_hidden: int = 64
    student_layers: int = 2
    student_steps: int = 16000
    student_intermediate: int = 8  # a narrow MLP: what holds the student below the teacher
    batch_size: int = 64
    learning_rate: float = 3e-3

    @property
    def ranges(self) -> ChainRanges:
        return ChainRanges(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ChainRanges)})

    def with_overrides(self, overrides: dict[str, object]) -> ChainConfig:
        """This recipe with some fields changed (`distill toy build --task chain --set`); ValueError names a bad one."""
        config = changed_recipe(self, overrides, "chain build")
        r = config.ranges
        if not (r.start_min <= r.start_max <= r.value_max and 1 <= r.operand_min <= r.operand_max
                and 1 <= r.steps_min <= r.steps_max):  # fmt: skip
            raise ValueError(
                "start, operand and steps ranges must be non-empty (operands and steps >= 1, start <= value_max)"
            )
        return config


# A miniature build for tests: seconds, not minutes.
CHAIN_QUICK = ChainConfig(train_rows=400, eval_rows=16, test_rows=16, teacher_hidden=64, teacher_layers=1,
                          teacher_steps=30, student_hidden=32, student_layers=1, student_steps=10, batch_size=32)  # fmt: skip


def chain_splits(config: ChainConfig) -> dict[str, list[dict]]:
    return make_splits(config.seed, {"eval": config.eval_rows, "test": config.test_rows, "train": config.train_rows},
                       config.ranges)  # fmt: skip


def build_chain(
    out_dir: Path | str,
    seed: int = 0,
    quick: bool = False,
    *,
    config: ChainConfig | None = None,
    progress: bool = True,
    parallel: bool | None = None,
) -> dict:
    """Write data/, teacher/, student/ and manifest.json into out_dir; return the manifest.

    Each model trains with one torch thread, so its weights depend on the machine's float kernels only,
    not on its cores; with `parallel` (default: a full build on two cores or more) the two train in two processes.
    """
    start = time.time()
    out_dir = Path(out_dir)
    config = replace(config or (CHAIN_QUICK if quick else ChainConfig()), seed=seed)
    splits = chain_splits(config)
    write_splits(out_dir / "data", splits)
    manifest = {"task": TASK, "seed": config.seed, "sizes": {n: len(r) for n, r in splits.items()},
                "config": asdict(config), "models": {}}  # fmt: skip
    if parallel is None:
        parallel = not quick and (os.cpu_count() or 1) >= 2
    if parallel:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {n: pool.submit(train_chain_model, n, config, out_dir, progress) for n in ("teacher", "student")}
            manifest["models"] = {name: future.result() for name, future in futures.items()}
    else:
        manifest["models"] = {n: train_chain_model(n, config, out_dir, progress) for n in ("teacher", "student")}
    manifest["build_seconds"] = round(time.time() - start, 1)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def train_chain_model(name: str, config: ChainConfig, out_dir: Path, progress: bool = False,
                      stop_after: int | None = None) -> dict:  # fmt: skip
    """Train the teacher or the student from scratch, save it to out_dir/name; its manifest entry.
    `stop_after`: only the recipe's first steps (its schedule unchanged), for a quick rebuild check."""
    torch.set_num_threads(1)
    started, cpu_started = time.time(), time.process_time()
    offset = {"teacher": 1, "student": 2}[name]  # seeds of the initialisation and the batch order
    hidden, layers, steps, intermediate = (
        (config.teacher_hidden, config.teacher_layers, config.teacher_steps, config.teacher_intermediate)
        if name == "teacher"
        else (config.student_hidden, config.student_layers, config.student_steps, config.student_intermediate)
    )  # fmt: skip
    tokenizer = build_tokenizer()
    encoded = {split: encode_rows(rows, tokenizer, max_prompt_length=64, max_completion_length=config.max_new_tokens,
                                  source=split) for split, rows in chain_splits(config).items()}  # fmt: skip
    torch.manual_seed(config.seed + offset)
    model = new_model(tokenizer, hidden, layers, intermediate or 2 * hidden)

    def eval_accuracy(model) -> float:
        return accuracy(model, tokenizer, encoded["eval"], max_new_tokens=config.max_new_tokens)

    curve, accuracy_curve = train_sft(model, encoded["train"], encoded["eval"], replace(config, seed=config.seed + offset),
                                      steps, desc=name, progress=progress, measure=eval_accuracy,
                                      stop_after=stop_after)  # fmt: skip
    model.save_pretrained(out_dir / name)
    tokenizer.save_pretrained(out_dir / name)
    return {
        "hidden_size": hidden,
        "layers": layers,
        "intermediate_size": intermediate or 2 * hidden,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "eval_loss_curve": curve,
        "eval_accuracy_curve": accuracy_curve,
        "test_accuracy": accuracy(model, tokenizer, encoded["test"], max_new_tokens=config.max_new_tokens),
        "train_seconds": round(time.time() - started, 1),  # wall time, on a machine shared with other work
        "train_cpu_seconds": round(time.process_time() - cpu_started, 1),  # what one free core would take, about
    }


@torch.no_grad()
def accuracy(model, tokenizer, examples: list[Example], max_new_tokens: int = 96) -> float:
    """Share of greedy completions whose final answer is right (what `distill eval --metric final_answer` counts)."""
    completions = sample_completions(model, [e.prompt_ids for e in examples], pad_id=tokenizer.pad_token_id,
                                     eos_ids={tokenizer.eos_token_id}, max_new_tokens=max_new_tokens, greedy=True,
                                     max_batch=64)  # fmt: skip
    right = 0
    for ids, e in zip(completions, examples, strict=True):
        right += is_correct(
            tokenizer.decode(ids, skip_special_tokens=True), tokenizer.decode(e.prompt_ids, skip_special_tokens=True)
        )
    return right / len(examples)
