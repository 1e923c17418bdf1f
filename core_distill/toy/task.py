"""The arithmetic task: add two numbers column by column, writing each carry.

    user:      4729+8356=
    assistant: 9+6+0=15
               2+5+1=8
               7+3+0=10
               4+8+1=13
               #### 13085

The answer is the text after the last '####' (`eval_metric: final_answer`). Train, eval and test problems are drawn from one
seeded stream and de-duplicated across splits, so no test problem is ever trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

ANSWER_MARK = "####"


def extract_answer(text: str) -> str | None:
    """The text after the last '####', stripped; None when there is no '####'."""
    if ANSWER_MARK not in text:
        return None
    return text.rsplit(ANSWER_MARK, 1)[1].strip()


def worked_solution(a: int, b: int, digits: int) -> str:
    """Column sums from the units up, each with its incoming carry, then the answer."""
    a_digits = [int(c) for c in str(a).zfill(digits)][::-1]
    b_digits = [int(c) for c in str(b).zfill(digits)][::-1]
    lines, carry = [], 0
    for x, y in zip(a_digits, b_digits, strict=True):
        total = x + y + carry
        lines.append(f"{x}+{y}+{carry}={total}")
        carry = total // 10
    lines.append(f"{ANSWER_MARK} {a + b}")
    return "\n".join(lines)


def make_row(a: int, b: int, digits: int) -> dict[str, Any]:
    question = f"{a}+{b}="
    solution = worked_solution(a, b, digits)
    return {
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": solution}],
        # OPSD: the teacher's view carries the worked solution as privileged context
        "teacher_prompt": f"{question}\nhint:\n{solution}\n{question}",
    }


def make_splits(seed: int, digits: int, sizes: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """Disjoint splits of distinct (a, b) problems with `digits`-digit operands."""
    rng = random.Random(seed)
    low, high = 10 ** (digits - 1), 10**digits - 1
    total = sum(sizes.values())
    if total > (high - low + 1) ** 2 // 2:
        raise ValueError(f"cannot draw {total} distinct {digits}-digit problems")
    seen: set[tuple[int, int]] = set()
    problems: list[tuple[int, int]] = []
    while len(problems) < total:
        pair = (rng.randint(low, high), rng.randint(low, high))
        if pair not in seen:
            seen.add(pair)
            problems.append(pair)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = [make_row(a, b, digits) for a, b in problems[start : start + size]]
        start += size
    return splits


def write_splits(folder: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
