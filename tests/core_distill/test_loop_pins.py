"""Every objective's short run logs the pinned metrics to the last digit (tests/core_distill/loop_pins.py)."""

from __future__ import annotations

import json

import pytest

from tests.core_distill.loop_pins import CASES, PINS, run_case


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_short_run_logs_the_pinned_metrics(tiny_workspace, tmp_path, name):
    pinned = json.loads(PINS.read_text())[name]
    got = run_case(tiny_workspace, name, tmp_path)
    assert [step for step, _ in got] == [step for step, _ in pinned]
    for (step, metrics), (_, expected) in zip(got, pinned, strict=True):
        assert metrics == expected, f"step {step}: " + ", ".join(
            f"{k} {metrics.get(k)!r} != {expected.get(k)!r}" for k in sorted(set(metrics) | set(expected))
            if metrics.get(k) != expected.get(k)
        )  # fmt: skip
