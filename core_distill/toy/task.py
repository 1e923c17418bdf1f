"""The countdown task: walk a number down to zero in steps of at most m, showing every subtraction.

    user:      S=23 m=6          (start at 23; steps of 1..6)
    assistant: -2=21
               -6=15
               -5=10
               -4=6
               -6=0

A step d is allowed from a remainder a when 1 <= d <= min(m, a). Why this task, for a
distillation benchmark:

- Many valid answers: the data's walks pick each step uniformly among the allowed ones, so the
  teacher's distribution has real entropy (one choice per line) and matching it teaches more
  than one reference walk does. Models are graded on samples at temperature 1, so what counts
  is the whole distribution a model puts on its walks, not one greedy path.
- Long outputs where errors compound: a walk of 2-39 lines (about 11 in the shipped ranges), each a
  subtraction from the previous line's remainder (with borrow) and a step check; one wrong line
  makes the whole walk invalid.
- An exact quality metric of the model's own generations: `is_valid_walk` checks every line
  against the rules, whatever walk the model chose (`eval_metric: countdown`), and
  `walk_log_likelihood` scores a valid walk under the true generating process.
- Privileged context for OPSD: the teacher prompt names a strategy (`hint="land_on_tens"`: step to
  the next multiple of ten when allowed, else the largest step, so a subtraction borrows only from
  a multiple of ten), which the models also see in part of their training data, taking over a walk
  at a random line (`strategy_takeover`), so a model shown it can finish any walk the easy way. A
  build can show a reference walk instead (`hint="walk"`), and other ranges of S and m (`ToyConfig`).

Prompts (start, m) are split into train, eval and test sets that never share a prompt, so every
test prompt is new to every model.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

STARTS = range(10, 40)  # the shipped build's prompts; `distill toy build` can set others (ToyConfig)
MAX_STEPS = range(2, 7)
PROMPT_RE = re.compile(r"S=(\d+) m=(\d+)")
LINE_RE = re.compile(r"-(\d+)=(\d+)")


def allowed_steps(remainder: int, max_step: int) -> list[int]:
    return list(range(1, min(max_step, remainder) + 1))


def prompt_text(start: int, max_step: int) -> str:
    return f"S={start} m={max_step}"


def hinted_prompt(start: int, max_step: int, walk: str) -> str:
    """The privileged prompt: the plain one plus a reference walk (`hint` lines)."""
    return f"{prompt_text(start, max_step)}\nhint:\n{walk}"


def strategy_prompt(start: int, max_step: int, strategy: str) -> str:
    """The privileged prompt of a strategy hint: the plain one plus the strategy's name."""
    return f"{prompt_text(start, max_step)}\nhint: {strategy.replace('_', ' ')}"


def strategy_walk(start: int, max_step: int, strategy: str) -> str:
    """The walk a strategy hint asks for: every line takes the step `STRATEGIES[strategy]` picks."""
    pick = STRATEGIES[strategy]
    lines, remainder = [], start
    while remainder > 0:
        step = pick(remainder, max_step)
        lines.append(f"-{step}={remainder - step}")
        remainder -= step
    return "\n".join(lines)


def strategy_takeover(walk: str, start: int, max_step: int, strategy: str, rng: random.Random) -> str:
    """`walk`'s first k lines (k uniform in 0..len-1), then the strategy's walk from where they stand.

    A hinted training row shows this, not the strategy's walk from S: OPSD's self-teacher reads the
    hint beside the student's own samples, so it must know how to take up the strategy mid-walk.
    """
    lines = walk.split("\n")
    kept = rng.randrange(len(lines))
    remainder = int(LINE_RE.fullmatch(lines[kept - 1]).group(2)) if kept else start  # type: ignore[union-attr]
    return "\n".join(lines[:kept] + [strategy_walk(remainder, max_step, strategy)])


def land_on_tens_step(remainder: int, max_step: int) -> int:
    """Step to the next multiple of ten when allowed, else the largest step: a borrow only from a multiple of ten."""
    units = remainder % 10
    return units if 1 <= units <= max_step else min(max_step, remainder)


STRATEGIES = {"land_on_tens": land_on_tens_step}


def check_hint(hint: str) -> None:
    if hint != "walk" and hint not in STRATEGIES:
        raise ValueError(f"hint: expected 'walk' or one of {sorted(STRATEGIES)}, got {hint!r}")


def random_walk(start: int, max_step: int, rng: random.Random) -> str:
    """One walk of the true generating process: each step uniform over the allowed ones."""
    lines, remainder = [], start
    while remainder > 0:
        step = rng.choice(allowed_steps(remainder, max_step))
        lines.append(f"-{step}={remainder - step}")
        remainder -= step
    return "\n".join(lines)


def diverging_hint(walk: str, start: int, max_step: int, rng: random.Random) -> str:
    """A valid walk that follows `walk` for a random number of lines, then takes another step and walks on.

    Shown as the hint of a training row whose completion is `walk`, it teaches a model that leaving the
    hint is normal: it copies while its walk matches the hint and walks on by itself once it does not.
    """
    lines = walk.split("\n")
    remainders = [start] + [int(LINE_RE.fullmatch(line).group(2)) for line in lines]  # type: ignore[union-attr]
    # only a line with another allowed step can diverge
    forks = [i for i in range(len(lines)) if len(allowed_steps(remainders[i], max_step)) > 1]
    if not forks:
        return walk
    fork = rng.choice(forks)
    taken = int(LINE_RE.fullmatch(lines[fork]).group(1))  # type: ignore[union-attr]
    step = rng.choice([d for d in allowed_steps(remainders[fork], max_step) if d != taken])
    remainder = remainders[fork] - step
    tail = f"-{step}={remainder}" + ("\n" + random_walk(remainder, max_step, rng) if remainder else "")
    return "\n".join(lines[:fork] + [tail])


def parse_prompt(text: str) -> tuple[int, int] | None:
    found = PROMPT_RE.search(text)
    return tuple(int(g) for g in found.groups()) if found else None  # type: ignore[return-value]


def is_valid_walk(completion: str, start: int, max_step: int) -> bool:
    """Every line '-d=b' takes an allowed step d from the last remainder to b, and the walk ends at 0."""
    remainder = start
    for line in completion.strip().split("\n"):
        found = LINE_RE.fullmatch(line.strip())
        if found is None or remainder == 0:
            return False
        step, result = (int(g) for g in found.groups())
        if not 1 <= step <= min(max_step, remainder) or result != remainder - step:
            return False
        remainder = result
    return remainder == 0


def walk_log_likelihood(completion: str, start: int, max_step: int) -> float | None:
    """log P(walk) under the true generating process (None when the walk is invalid)."""
    if not is_valid_walk(completion, start, max_step):
        return None
    total, remainder = 0.0, start
    for line in completion.strip().split("\n"):
        total -= math.log(len(allowed_steps(remainder, max_step)))
        remainder = int(LINE_RE.fullmatch(line.strip()).group(2))  # type: ignore[union-attr]
    return total


def make_row(start: int, max_step: int, rng: random.Random, diverge: float = 0.0, hint: str = "walk") -> dict[str, Any]:
    """One row. Its `teacher_prompt` (OPSD's privileged context) holds, with hint "walk", a valid walk (this
    row's, or with probability `diverge` one that leaves it at a random line); with a strategy's name, that strategy."""
    walk = random_walk(start, max_step, rng)
    if hint in STRATEGIES:
        teacher_prompt = strategy_prompt(start, max_step, hint)
    else:
        shown = diverging_hint(walk, start, max_step, rng) if diverge and rng.random() < diverge else walk
        teacher_prompt = hinted_prompt(start, max_step, shown)
    return {
        "messages": [
            {"role": "user", "content": prompt_text(start, max_step)},
            {"role": "assistant", "content": walk},
        ],
        "teacher_prompt": teacher_prompt,
    }


def all_prompts(starts: range = STARTS, max_steps: range = MAX_STEPS) -> list[tuple[int, int]]:
    return [(s, m) for s in starts for m in max_steps]


def make_splits(
    seed: int,
    sizes: dict[str, int],
    prompt_counts: dict[str, int],
    diverge: dict[str, float] | None = None,
    hint: str = "walk",
    prompts: list[tuple[int, int]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Rows per split; each split draws its rows from its own disjoint set of prompts.

    `prompt_counts` gives how many distinct prompts each split owns (the last split named in
    `sizes` but not in `prompt_counts` owns the rest); `sizes` how many rows it holds (a train
    prompt appears with many different walks, an eval/test prompt usually once); `diverge` the share of a
    split's hints that leave its row's walk (`diverging_hint`); `hint` the kind of privileged prompt
    (`make_row`); `prompts` the (start, m) pairs to draw from (default `all_prompts()`).
    """
    check_hint(hint)
    rng = random.Random(seed)
    prompts = list(prompts or all_prompts())
    rng.shuffle(prompts)
    owned: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for name in sizes:
        count = prompt_counts.get(name, len(prompts) - start)
        if count <= 0 or start + count > len(prompts):
            raise ValueError(f"not enough distinct prompts for split {name!r} ({len(prompts)} in all)")
        owned[name] = prompts[start : start + count]
        start += count
    splits = {}
    for name, size in sizes.items():
        pool = owned[name]
        # every prompt once before any twice, so a small split covers as many prompts as it can
        order = [pool[i % len(pool)] for i in range(size)]
        splits[name] = [make_row(s, m, rng, (diverge or {}).get(name, 0.0), hint) for s, m in order]
    return splits


def write_splits(folder: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
