"""The chain task: a chain of additions and subtractions, worked line by line, with one correct answer.

    user:      47+8-9+6-7=?
    assistant: 47+8=55
               55-9=46
               46+6=52
               52-7=45
               #### 45

Each line takes the previous line's result (the start, on the first line), applies the prompt's next
operation, and writes the result; the last line gives the final answer. Why this task, beside
countdown, for a distillation benchmark:

- One correct answer, graded greedily (`eval_metric: final_answer`, `eval_temperature: 0`): the
  teacher's distribution has almost no entropy to match, so a method cannot win by sharpening the
  student's distribution (the untrained student is already at its lowest entropy, greedy); only
  getting more lines right moves the score.
- Errors compound: every line needs a carry or a borrow about half the time, and a wrong digit on
  one line carries into every later one, so a chain of 3-6 lines is right only if every line is.
- A tiny prompt space that is still large: starts 10-99 and 3-6 one-digit operations give millions
  of chains, so the train, eval and test splits never share a prompt and every test chain is new.

Values stay within 0..`value_max` (an operation that would leave the range is flipped), so every
number on a line has at most two digits in the shipped build.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT_RE = re.compile(r"(\d+)((?:[+-]\d+)+)=\?")
OP_RE = re.compile(r"([+-])(\d+)")
ANSWER_MARK = "#### "

Chain = tuple[int, tuple[int, ...]]  # (start, signed operands): 47+8-9 is (47, (8, -9))


@dataclass(frozen=True)
class ChainRanges:
    """The prompts a build draws from (inclusive ranges)."""

    start_min: int = 10
    start_max: int = 99
    operand_min: int = 2
    operand_max: int = 9
    steps_min: int = 3
    steps_max: int = 6
    value_max: int = 99


def prompt_text(chain: Chain) -> str:
    start, ops = chain
    return str(start) + "".join(f"{'+' if d > 0 else '-'}{abs(d)}" for d in ops) + "=?"


def answer(chain: Chain) -> int:
    start, ops = chain
    return start + sum(ops)


def solution(chain: Chain) -> str:
    """The worked completion: one line per operation, then '#### ' and the answer."""
    value, lines = chain[0], []
    for d in chain[1]:
        lines.append(f"{value}{'+' if d > 0 else '-'}{abs(d)}={value + d}")
        value += d
    return "\n".join([*lines, f"{ANSWER_MARK}{value}"])


def parse_prompt(text: str) -> Chain | None:
    """The chain in a prompt (chat tokens around it are ignored); None when there is none."""
    found = PROMPT_RE.search(text)
    if found is None:
        return None
    ops = tuple(int(n) if sign == "+" else -int(n) for sign, n in OP_RE.findall(found.group(2)))
    return int(found.group(1)), ops


def final_answer(completion: str) -> str | None:
    """The text after the last '####' of a completion, stripped (None when it has none)."""
    return completion.rsplit("####", 1)[1].strip() if "####" in completion else None


def is_correct(completion: str, prompt: str) -> bool:
    """The completion's final answer is the chain's value (the worked lines are not graded)."""
    chain = parse_prompt(prompt)
    return chain is not None and final_answer(completion) == str(answer(chain))


def random_chain(rng: random.Random, ranges: ChainRanges) -> Chain:
    """Uniform start, number of steps and operands; each sign a coin flip, flipped when it would leave 0..value_max."""
    value = start = rng.randint(ranges.start_min, ranges.start_max)
    ops = []
    for _ in range(rng.randint(ranges.steps_min, ranges.steps_max)):
        d = rng.randint(ranges.operand_min, ranges.operand_max) * rng.choice((1, -1))
        if not 0 <= value + d <= ranges.value_max:
            d = -d
        ops.append(d)
        value += d
    return start, tuple(ops)


def make_row(chain: Chain) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt_text(chain)}, {"role": "assistant", "content": solution(chain)}]
    }


def make_splits(
    seed: int, sizes: dict[str, int], ranges: ChainRanges = ChainRanges()
) -> dict[str, list[dict[str, Any]]]:
    """Rows per split. Every split but the last named in `sizes` holds that many distinct prompts, one row
    each (one answer: a second row of a prompt would be the same row); the last (train) draws its rows
    from the prompts the others do not hold, repeats allowed. A pure function of the seed."""
    rng = random.Random(seed)
    *held, rest = sizes
    taken: set[Chain] = set()
    splits: dict[str, list[dict[str, Any]]] = {}
    for name in held:
        chains: list[Chain] = []
        for _ in range(100 * sizes[name] + 1000):  # a range too small to hold them ends here, not forever
            if len(chains) == sizes[name]:
                break
            chain = random_chain(rng, ranges)
            if chain not in taken:
                taken.add(chain)
                chains.append(chain)
        else:
            raise ValueError(f"not enough distinct prompts for split {name!r} in {ranges}")
        splits[name] = [make_row(c) for c in chains]
    train: list[dict[str, Any]] = []
    for _ in range(100 * sizes[rest] + 1000):
        if len(train) == sizes[rest]:
            break
        chain = random_chain(rng, ranges)
        if chain not in taken:
            train.append(make_row(chain))
    else:
        raise ValueError(f"not enough prompts left for split {rest!r} in {ranges}")
    splits[rest] = train
    return splits


def write_splits(folder: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
