"""`distill toy build`: data, tokenizer, a teacher and a student, both trained to convergence.

The teacher and the (smaller) student learn the countdown task with the same loop (next-token
cross-entropy on completions, AdamW, linear decay) for a fixed number of steps, one torch thread
each, so no machine's speed or thread count moves where the student starts. The manifest records
the eval loss and the eval validity every tenth of the run: a converged model has both flat at the
end (the loss levels off long before validity does). A share of the training rows (`hint_share`)
show the privileged prompt, for OPSD: by default a strategy (`hint="land_on_tens"`), the completion
being the row's walk taken over by the strategy at a random line; or with `hint="walk"` a reference
walk (with `hint_diverge` some of those hints leave the row's walk at a random line). `distill toy
build --set FIELD=VALUE` changes any field of the recipe (`ToyConfig`). The package ships the result
of this build (`core_distill/toy/assets`); rebuilding it is for checking that the recipe reproduces it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import multiprocessing
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from core_distill.data.batches import Example, batch_indices, encode_rows, make_batch
from core_distill.generation.sampling import sample_completions
from core_distill.paths import default_toy_build_dir
from core_distill.toy.task import (
    all_prompts,
    check_hint,
    is_valid_walk,
    make_splits,
    parse_prompt,
    prompt_text,
    strategy_takeover,
    write_splits,
)
from core_distill.toy.tokenizer import build_tokenizer

R = TypeVar("R")


@dataclass(frozen=True)
class ToyConfig:
    seed: int = 0
    train_rows: int = 20_000
    eval_prompts: int = 25
    eval_rows: int = 100  # four rows per eval prompt
    test_prompts: int = 50
    test_rows: int = 300  # six rows per test prompt: models are graded on samples, several per prompt
    hint_share: float = 0.3  # training rows shown with the privileged prompt
    start_min: int = 10  # prompts S=start m=max_step, both in these ranges (inclusive)
    start_max: int = 39
    max_step_min: int = 2
    max_step_max: int = 6
    max_new_tokens: int = 256  # the longest walk a model may sample when graded
    hint: str = "land_on_tens"  # the privileged context: "walk" (a reference walk) or a strategy of task.STRATEGIES
    hint_diverge: float = 0.0  # "walk" hints that leave the row's walk at a random line (then walk on validly)
    teacher_hidden: int = 64
    teacher_layers: int = 2
    teacher_steps: int = 6000
    teacher_intermediate: int = 0  # the MLP's width; 0 = twice the hidden size
    student_hidden: int = 64
    student_layers: int = 1
    student_steps: int = 6000
    student_intermediate: int = 0
    batch_size: int = 64
    learning_rate: float = 3e-3

    def with_overrides(self, overrides: dict[str, object]) -> ToyConfig:
        """This recipe with some fields changed (`distill toy build --set`); ValueError names a bad one."""
        config = changed_recipe(self, overrides, "toy build")
        check_hint(config.hint)
        if config.start_min > config.start_max or not 1 <= config.max_step_min <= config.max_step_max:
            raise ValueError(
                "start_min..start_max and max_step_min..max_step_max must be non-empty ranges (max_step >= 1)"
            )
        return config


def changed_recipe(recipe: R, overrides: dict[str, object], what: str) -> R:
    """`recipe` (a frozen dataclass) with some fields changed, each of its own type (an int is taken for a
    float); a ValueError names an unknown field (with the closest one) or a value of the wrong type."""
    fields = [f.name for f in dataclasses.fields(recipe)]  # type: ignore[arg-type]
    changed = {}
    for name, value in overrides.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (fields: {', '.join(fields)})"
            raise ValueError(f"{name!r} is not a {what} field{hint}")
        kind = type(getattr(recipe, name))
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise ValueError(f"{name}: expected {kind.__name__}, got {value!r}")
        changed[name] = value
    return replace(recipe, **changed)  # type: ignore[type-var]


# A miniature build for tests: seconds, not minutes.
QUICK = ToyConfig(train_rows=400, eval_prompts=8, eval_rows=16, test_prompts=8, test_rows=16, teacher_hidden=64,
                  teacher_layers=1, teacher_steps=30, student_hidden=32, student_layers=1, student_steps=10, batch_size=32)  # fmt: skip


def build_toy(
    out_dir: Path | str | None = None,
    seed: int = 0,
    teacher_steps: int | None = None,
    quick: bool = False,
    *,
    config: ToyConfig | None = None,
    progress: bool = True,
    parallel: bool | None = None,
) -> dict:
    """Write data/, teacher/, student/ and manifest.json into out_dir; return the manifest.

    `config` overrides the defaults (ToyConfig(), or QUICK with quick=True); seed and teacher_steps override it.
    Each model trains with one torch thread, so the weights are the same on every machine whatever its
    cores; with `parallel` (default: a full build on two cores or more) the two train in two processes.
    """
    start = time.time()
    out_dir = Path(out_dir) if out_dir is not None else default_toy_build_dir()
    config = replace(config or (QUICK if quick else ToyConfig()), seed=seed)
    if teacher_steps is not None:
        config = replace(config, teacher_steps=teacher_steps)
    splits = toy_splits(config)
    write_splits(out_dir / "data", splits)
    sizes = {name: len(rows) for name, rows in splits.items()}
    manifest = {"task": "countdown", "seed": config.seed, "sizes": sizes, "config": asdict(config), "models": {}}
    if parallel is None:  # a quick build takes less time than starting two processes
        parallel = not quick and (os.cpu_count() or 1) >= 2
    if parallel:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=context) as pool:
            futures = {
                name: pool.submit(train_toy_model, name, config, out_dir, progress) for name in ("teacher", "student")
            }
            manifest["models"] = {name: future.result() for name, future in futures.items()}
    else:
        manifest["models"] = {name: train_toy_model(name, config, out_dir, progress) for name in ("teacher", "student")}
    manifest["build_seconds"] = round(time.time() - start, 1)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def toy_splits(config: ToyConfig) -> dict[str, list[dict]]:
    sizes = {"eval": config.eval_rows, "test": config.test_rows, "train": config.train_rows}
    prompts = {"eval": config.eval_prompts, "test": config.test_prompts}
    grid = all_prompts(
        range(config.start_min, config.start_max + 1), range(config.max_step_min, config.max_step_max + 1)
    )
    return make_splits(config.seed, sizes, prompts, {"train": config.hint_diverge}, config.hint, grid)


def train_toy_model(name: str, config: ToyConfig, out_dir: Path, progress: bool = False,
                    stop_after: int | None = None) -> dict:  # fmt: skip
    """Train the teacher or the student from scratch, save it to out_dir/name; its manifest entry.
    `stop_after`: only the recipe's first steps (its schedule unchanged) and no test scores, for a quick
    rebuild check of the curves."""
    torch.set_num_threads(1)
    offset = {"teacher": 1, "student": 2}[name]  # seeds of the initialisation and the batch order
    hidden, layers, steps, intermediate = (
        (config.teacher_hidden, config.teacher_layers, config.teacher_steps, config.teacher_intermediate)
        if name == "teacher"
        else (config.student_hidden, config.student_layers, config.student_steps, config.student_intermediate)
    )  # fmt: skip
    tokenizer = build_tokenizer()
    encoded = {split: encode_rows(rows, tokenizer, max_prompt_length=256, max_completion_length=256, source=split)
               for split, rows in toy_splits(config).items()}  # fmt: skip
    torch.manual_seed(config.seed + offset)
    model = new_model(tokenizer, hidden, layers, intermediate or 2 * hidden)

    def eval_validity(model) -> float:
        return validity(model, tokenizer, encoded["eval"], max_new_tokens=config.max_new_tokens)

    curve, validity_curve = train_sft(model, mixed_training_examples(encoded["train"], config, tokenizer), encoded["eval"],
                                      replace(config, seed=config.seed + offset), steps, desc=name, progress=progress,
                                      measure=eval_validity, stop_after=stop_after)  # fmt: skip
    model.save_pretrained(out_dir / name)
    tokenizer.save_pretrained(out_dir / name)
    if stop_after is not None:
        return {"steps": stop_after, "eval_loss_curve": curve, "eval_validity_curve": validity_curve}
    return {
        "hidden_size": hidden,
        "layers": layers,
        "intermediate_size": intermediate or 2 * hidden,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "eval_loss_curve": curve,
        "eval_validity_curve": validity_curve,
        "test_validity": validity(model, tokenizer, encoded["test"], max_new_tokens=config.max_new_tokens),
        "test_validity_with_hint": validity(
            model, tokenizer, encoded["test"], True, max_new_tokens=config.max_new_tokens
        ),
    }


def mixed_training_examples(examples: list[Example], config: ToyConfig, tokenizer) -> list[Example]:
    """The training rows, a seeded `hint_share` of them with the privileged prompt as their prompt (and, for
    a strategy hint, their walk taken over by the strategy at a random line as their completion)."""
    rng = random.Random(config.seed + 7)
    mixed = []
    for e in examples:
        if rng.random() < config.hint_share:
            if config.hint != "walk":
                e = replace(e, completion_ids=strategy_completion(e, config.hint, tokenizer, rng))
            e = replace(e, prompt_ids=e.teacher_prompt_ids)
        mixed.append(e)
    return mixed


def strategy_completion(example: Example, strategy: str, tokenizer, rng: random.Random) -> list[int]:
    start, max_step = parse_prompt(tokenizer.decode(example.prompt_ids, skip_special_tokens=True))  # type: ignore[misc]
    walk = strategy_takeover(example.completion_text, start, max_step, strategy, rng)  # type: ignore[arg-type]
    messages = [{"role": "user", "content": prompt_text(start, max_step)}, {"role": "assistant", "content": walk}]
    (encoded,) = encode_rows([{"messages": messages}], tokenizer, max_prompt_length=256, max_completion_length=256,
                             source="hint")  # fmt: skip
    return encoded.completion_ids


def new_model(tokenizer, hidden: int, layers: int, intermediate: int | None = None):
    """A Llama with head dimension 32 (vLLM's CPU attention refuses 16)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32, head_dim=32, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def completion_loss(model, rows: list[Example]) -> torch.Tensor:
    """Mean next-token cross-entropy over the completion tokens of `rows`."""
    batch = make_batch([e.prompt_ids for e in rows], [e.completion_ids for e in rows], pad_id=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits  # (B, L, V)  # fmt: skip
    width = batch.completion_mask.shape[1]
    predictions = logits[:, batch.prompt_width - 1 : batch.prompt_width - 1 + width]  # (B, C, V)
    return F.cross_entropy(predictions[batch.completion_mask], batch.completion_ids[batch.completion_mask])


def train_sft(model, examples: list[Example], eval_examples: list[Example], config: ToyConfig, steps: int, desc: str,
              progress: bool, measure: Callable[[Any], float] | None = None,
              stop_after: int | None = None) -> tuple[list[list[float]], list[list[float]]]:  # fmt: skip
    """Cross-entropy on completion tokens; AdamW with linear decay; batches from a seeded stream.

    Returns the eval loss and `measure(model)` (the eval validity) every tenth of the run. Both should be
    flat at the end: the loss alone is not enough, since the step choices' entropy, which no model can
    remove, makes up most of it, and validity went on rising long after the loss had levelled off.
    `stop_after` ends the loop early on the same schedule (a rebuild test retrains the first tenth).
    """
    if steps == 0:
        return [], []
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    curve, measured = [], []
    model.train()
    bar = tqdm(range(min(steps, stop_after or steps)), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        rows = [
            examples[i] for i in batch_indices(len(examples), step * config.batch_size, config.batch_size, config.seed)
        ]
        loss = completion_loss(model, rows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % max(steps // 10, 1) == 0:
            with torch.no_grad():
                model.eval()
                curve.append([step + 1, round(completion_loss(model, eval_examples).item(), 4)])
                if measure is not None:  # samples from a forked RNG: the training stream is untouched
                    measured.append([step + 1, round(measure(model), 4)])
                model.train()
    model.eval()
    return curve, measured


@torch.no_grad()
def validity(
    model, tokenizer, examples: list[Example], hinted: bool = False, seed: int = 0, max_new_tokens: int = 256
) -> float:
    """Share of completions sampled at temperature 1 that are valid walks (with `hinted`, from the privileged prompt).

    Batches of 64 from `seed`: the same random numbers as `distill eval --data test`, so both print the same figure.
    """
    prompts = [e.teacher_prompt_ids if hinted else e.prompt_ids for e in examples]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        completions = sample_completions(model, prompts, pad_id=tokenizer.pad_token_id, eos_ids={tokenizer.eos_token_id},
                                         max_new_tokens=max_new_tokens, temperature=1.0, max_batch=64)  # fmt: skip
    valid = 0
    for ids, e in zip(completions, examples, strict=True):
        task = parse_prompt(tokenizer.decode(e.prompt_ids, skip_special_tokens=True))
        valid += task is not None and is_valid_walk(tokenizer.decode(ids, skip_special_tokens=True), *task)
    return valid / len(examples)
