"""`distill run` end to end: the real CLI on tiny checkpoints (torchtune's recipe-test style)."""

from __future__ import annotations

import json
import re
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


def _distill(args: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": os.getcwd(), **env})  # fmt: skip


def test_eval_of_a_missing_folder_is_one_line_without_asking_the_hub(tmp_path):
    (tmp_path / "runs").mkdir()
    done = _distill(["eval", "runs/does_not_exist"], tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: MODEL: no model directory at 'runs/does_not_exist' (resolved to runs/does_not_exist)"
    ]


def test_eval_of_a_toy_model_names_the_way_out(tmp_path):
    typo = _distill(["eval", "toy:studnet"], tmp_path)
    assert typo.returncode == 2 and len(typo.stderr.strip().splitlines()) == 1
    assert "did you mean 'toy:student'?" in typo.stderr
    empty = tmp_path / "empty-toy"
    empty.mkdir()
    missing = _distill(["eval", "toy:teacher"], tmp_path, DISTILL_TOY_DIR=str(empty))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert f"DISTILL_TOY_DIR={empty}" in missing.stderr and f"distill toy build {empty}" in missing.stderr


def test_eval_of_a_hub_id_offline_or_unreachable_is_one_line(tmp_path):
    cache = str(tmp_path / "hf")  # an empty Hugging Face cache
    offline = _distill(["eval", "someorg/nomodel", "--teacher", ""], tmp_path, HF_HUB_OFFLINE="1", HF_HOME=cache)
    assert offline.returncode == 2 and len(offline.stderr.strip().splitlines()) == 1, offline.stderr
    assert "'someorg/nomodel'" in offline.stderr and "HF_HUB_OFFLINE" in offline.stderr
    # a hub that refuses connections (port 9): one request, no retries, one line
    down = _distill(["eval", "someorg/nomodel", "--teacher", ""], tmp_path, HF_HUB_OFFLINE="0", HF_HOME=cache,
                    HF_ENDPOINT="http://127.0.0.1:9")  # fmt: skip
    assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1, down.stderr
    assert "unreachable" in down.stderr


def test_a_typo_in_a_spec_field_names_the_field_meant(tmp_path):
    spec_file = tmp_path / "typo.yaml"
    spec_file.write_text("lmbd: 0.5\n")
    done = _distill(["run", str(spec_file), "-o", str(tmp_path / "o")], tmp_path)
    assert done.returncode == 2
    assert "error: lmbd: is not a spec field; did you mean 'lmbda'?" in done.stderr
    assert not (tmp_path / "o").exists()


LOAD_CACHED = """
import torch
from core_distill.models import load_model, load_tokenizer
load_tokenizer("someorg/tiny")
load_model("someorg/tiny", dtype=torch.float32)
print("loaded")
"""


def test_a_cached_hub_model_loads_without_retrying_an_unreachable_hub(tmp_path):
    import os

    from tests.tiny_models import build_model, build_tokenizer

    snapshot = tmp_path / "hf" / "hub" / "models--someorg--tiny" / "snapshots" / ("0" * 40)
    build_model(snapshot, build_tokenizer(snapshot), hidden=32, layers=1)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)  # the cache's layout: refs/main -> snapshot
    env = {
        **os.environ,
        "PYTHONPATH": os.getcwd(),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }  # fmt: skip  (a port that refuses: the hub is unreachable)
    done = subprocess.run([sys.executable, "-c", LOAD_CACHED], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr
    assert "Retrying" not in done.stderr and "127.0.0.1:9" not in done.stderr, done.stderr


def test_eval_reports_greedy_and_sampled_scores_with_per_prompt_json(tmp_path):
    """On the hand-set bigram model (tests/helpers/bigram.py): greedy writes "-3=0", valid on 2 of 4 rows."""
    from tests.helpers.bigram import build_bigram_model, countdown_rows

    model = build_bigram_model(tmp_path / "model")
    data = countdown_rows(tmp_path / "rows.jsonl", [("S=3 m=3", "-3=0"), ("S=3 m=3", "-2=1\n-1=0"),
                                                    ("S=3 m=2", "-2=1\n-1=0"), ("S=1 m=2", "-1=0")])  # fmt: skip
    args = ["eval", str(model), "--data", str(data), "--teacher", "", "--metric", "countdown", "--max-new-tokens", "8",
            "--temperature", "1", "--seeds", "0,1", "--samples-per-prompt", "3"]  # fmt: skip
    done = _distill([*args, "--json", "--show", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["greedy"]["accuracy"] == 0.5 and report["greedy"]["temperature"] == 0.0
    sampled = report["sampled"]
    assert (sampled["temperature"], sampled["samples_per_prompt"], sampled["seeds"]) == (1.0, 3, [0, 1])
    assert report["accuracy"] == sampled["accuracy"]
    assert [(p["prompt"], p["rows"], len(p["scores"])) for p in report["prompts"]] == [
        ("S=3 m=3", 2, 12), ("S=3 m=2", 1, 6), ("S=1 m=2", 1, 6)]  # fmt: skip
    assert sampled["accuracy"] == sum(sum(p["scores"]) for p in report["prompts"]) / 24
    assert report["diversity"] == "walk_log_likelihood" and len(report["samples"]) == 1

    readable = _distill(args, tmp_path)
    assert readable.returncode == 0, readable.stderr
    out = readable.stdout
    assert "(4 rows, 3 distinct prompts graded)" in out
    assert re.search(r"^  greedy +50\.0% ± 37\.5 +\(1 completion per prompt\); distinct 0\.33$", out, re.M), out
    assert re.search(r"^  sampled +\d+\.\d% ± \d+\.\d +\(T 1, 3 per row x seeds 0,1 = 6 per row, 24 completions\)", out, re.M), out
    assert "walk_log_likelihood" in out and "greedy -1.099" in out and "references" in out


def test_eval_help_says_what_it_scores_and_bad_seeds_are_refused(tmp_path):
    done = _distill(["eval", "--help"], tmp_path, COLUMNS="200")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "greedy completions (one per prompt)" in text and "--samples-per-prompt" in text and "--seeds" in text
    bad = _distill(["eval", "toy:student", "--seeds", "0,x"], tmp_path)
    assert bad.returncode == 2 and "--seeds" in bad.stderr
