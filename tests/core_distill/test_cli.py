"""`distill run` end to end: the real CLI on tiny checkpoints (torchtune's recipe-test style)."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml


def test_distill_run_writes_metrics_and_a_loadable_model(tiny_workspace, tmp_path):
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_workspace.spec(eval_every=2, max_steps=4).model_dump()))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "run", str(spec_file), "--output", str(out), "--set", "lmbda=1.0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x["metrics"]]
    assert [x["step"] for x in train] == [1, 2, 3, 4]
    assert all(x["metrics"]["data/on_policy"] == 1.0 for x in train)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out / "final")
    AutoTokenizer.from_pretrained(out / "final")


def test_distill_run_refuses_a_bad_spec_naming_the_field(tmp_path):
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text("lmbda: 3\nbeta: 0.5\n")
    done = subprocess.run([sys.executable, "-m", "app.cli", "run", str(spec_file), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "lmbda" in done.stderr and "3" in done.stderr
    assert not (tmp_path / "o").exists()


def test_distill_run_refuses_a_key_set_twice(tmp_path):
    spec_file = tmp_path / "twice.yaml"
    spec_file.write_text("max_steps: 1\nbatch_size: 16\nbeta: 0.5\nbatch_size: 8\n")
    done = subprocess.run([sys.executable, "-m", "app.cli", "run", str(spec_file), "-o", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "error: batch_size: is set twice (lines 2 and 4)" in done.stderr
    assert not (tmp_path / "o").exists()
