"""The hub: a finished run's final/ carries a model card (HF metadata, the method, the run's own numbers) and
its spec; `distill push` and the spec's `push_to_hub` upload it through huggingface_hub, private by default.

This machine cannot reach the real hub: uploads go to tests/helpers/hub.LocalHub, a local stand-in that speaks
the endpoints huggingface_hub calls (HF_ENDPOINT points there); offline runs use HF_HUB_OFFLINE=1 and a closed port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from core_distill import metric_keys as mk
from core_distill.hub import push_run_model
from core_distill.model_card import card_keys, final_metrics, number, read_metrics_jsonl, write_model_card
from core_distill.reporting import JsonlReporter
from core_distill.spec import DistillSpec, SpecError
from tests.helpers.hub import LocalHub
from tests.helpers.trackers import closed_port_url

TOKEN = "hf_test_token"
FAST_SECONDS = 30  # a failed push: the interpreter's start and imports on a loaded machine, then one line


def distill(args: list[str], hf_home: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """`distill ARGS` with none of this machine's hub settings: its own HF_HOME (no stored token) and `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env={**clean, "PYTHONPATH": os.getcwd(), "HF_HOME": str(hf_home), **env})  # fmt: skip


def results_table(card_text: str) -> dict[str, tuple[str, str]]:
    """{metric: (before, final)} of the card's Results table, as written."""
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \| ([^|]+) \|$", card_text.split("## Results", 1)[1], re.MULTILINE)
    return {key: (before.strip(), final.strip()) for key, before, final in rows}


@pytest.fixture(scope="module")
def pushed_run(tiny_workspace, tmp_path_factory):
    """A CLI run whose spec pushes to the local hub at the end (push_to_hub, private by default)."""
    tmp = tmp_path_factory.mktemp("hub-run")
    spec = tiny_workspace.spec(max_steps=3, eval_every=2, push_to_hub="team/tiny-distilled")
    spec_file = tmp / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump()))
    out = tmp / "run"
    with LocalHub(TOKEN) as hub:
        done = distill(["run", str(spec_file), "--output", str(out)], tmp / "hf", HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN)
    assert done.returncode == 0, done.stderr
    return spec, out, hub, done


def test_final_carries_a_model_card_whose_numbers_are_the_runs(pushed_run):
    spec, out, _, _ = pushed_run
    final = out / "final"
    card = ModelCard.load(final / "README.md")
    data = card.data
    # a local student is not a hub id: no base_model (the hub refuses a path there); the body names it
    assert data.base_model is None and f"| Student (base model) | `{spec.student}` (not a hub model) |" in card.text
    assert "distillation" in data.tags and "gkd" in data.tags and data.library_name == "transformers"
    assert f"| Teacher | `{spec.teacher}` |" in card.text
    for knob in ("lmbda", "beta", "loss_top_k", "seq_kd", "sft_alpha", "opsd"):
        assert f"| `{knob}` | `{json.dumps(getattr(spec, knob))}` |" in card.text, knob
    assert "distill run spec.yaml" in card.text
    assert DistillSpec.from_yaml(final / "spec.yaml") == spec

    last, baseline, step = final_metrics(read_metrics_jsonl(out / "metrics.jsonl"))
    assert step == 3
    table = results_table(card.text)
    assert list(table) == card_keys(last) and mk.EVAL_EXACT_MATCH in table and mk.LOSS in table
    for key, (before, final_value) in table.items():
        assert final_value == number(last[key]), key
        assert before == (number(baseline[key]) if key in baseline else "-"), key
    # model-index: every evaluation metric, its exact value
    index = {r.metric_type: r.metric_value for r in data.eval_results}
    assert index == {k: last[k] for k in table if k.startswith(mk.EVAL_PREFIX)}
    assert {r.dataset_name for r in data.eval_results} == {spec.eval_data}


def test_push_to_hub_in_the_spec_uploads_final_to_a_private_repo(pushed_run):
    _, out, hub, done = pushed_run
    assert hub.unexpected == []
    assert hub.validated == [(out / "final" / "README.md").read_text()]  # its metadata checked before the upload
    repo = hub.repos["team/tiny-distilled"]
    assert repo.private and repo.create_payload["type"] == "model"
    local = {p.relative_to(out / "final").as_posix(): p.read_bytes() for p in (out / "final").rglob("*") if p.is_file()}
    assert repo.files == local and {"README.md", "spec.yaml", "config.json", "model.safetensors"} <= set(repo.files)
    assert f"hub:     {hub.url}/team/tiny-distilled" in done.stdout


def test_distill_push_uploads_a_run_folder_public_when_asked(pushed_run, tmp_path):
    _, out, _, _ = pushed_run
    old = tmp_path / "old-run"  # a run folder from before cards: the card is written from its spec and metrics
    shutil.copytree(out, old)
    (old / "final" / "README.md").unlink()
    (old / "final" / "spec.yaml").unlink()
    with LocalHub(TOKEN) as hub:
        done = distill(["push", str(old), "--repo", "team/public-one", "--public"], tmp_path / "hf", HF_ENDPOINT=hub.url,
                       HF_TOKEN=TOKEN)  # fmt: skip
        private = distill(["push", str(old / "final"), "--repo", "mine"], tmp_path / "hf", HF_ENDPOINT=hub.url,
                          HF_TOKEN=TOKEN)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"pushed {old / 'final'} to {hub.url}/team/public-one" in done.stdout
    repo = hub.repos["team/public-one"]
    assert repo.create_payload.get("visibility") == "public" and not repo.private
    assert (old / "final" / "README.md").read_bytes() == repo.files["README.md"]
    assert results_table(repo.files["README.md"].decode()) == results_table((out / "final" / "README.md").read_text())
    assert private.returncode == 0, private.stderr
    assert hub.repos["tester/mine"].private  # NAME alone: the token's own namespace, private by default
    assert hub.unexpected == []


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1", "HF_TOKEN": TOKEN}, {"HF_ENDPOINT": "closed", "HF_TOKEN": TOKEN}, {}],
    ids=["offline", "unreachable", "no-token"],
)
def test_distill_push_offline_fails_in_seconds_with_one_line(pushed_run, tmp_path, env):
    _, out, _, _ = pushed_run
    env = {k: (closed_port_url() if v == "closed" else v) for k, v in env.items()}
    started = time.monotonic()
    done = distill(["push", str(out), "--repo", "team/x"], tmp_path / "hf", timeout=120, **env)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert {"offline": "HF_HUB_OFFLINE", "unreachable": "cannot reach the hub", "no-token": "no Hugging Face token"}[
        "offline" if "HF_HUB_OFFLINE" in env else "unreachable" if "HF_ENDPOINT" in env else "no-token"
    ] in lines[0]
    assert took < FAST_SECONDS, f"took {took:.1f} s"


def test_distill_push_names_a_missing_model_and_a_bad_repo_id(tmp_path):
    done = distill(["push", str(tmp_path), "--repo", "team/x"], tmp_path / "hf", timeout=120, HF_TOKEN=TOKEN)
    assert done.returncode == 2 and "no finished model at" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_failed_push_in_a_run_warns_and_keeps_final(tmp_path, monkeypatch):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    spec = DistillSpec(push_to_hub="team/x")
    write_model_card(final, spec, {mk.LOSS: 1.0}, {}, 1)
    reporter = JsonlReporter(tmp_path / "run")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    assert push_run_model(spec, final, reporter) is None
    assert time.monotonic() - started < 5
    warning = (tmp_path / "run" / "warnings.txt").read_text()
    assert warning.startswith("push_to_hub: HF_HUB_OFFLINE is set") and f"distill push {tmp_path / 'run'}" in warning
    assert sorted(p.name for p in final.iterdir()) == ["README.md", "config.json", "spec.yaml"]


def test_push_to_hub_takes_a_repo_id_and_preflight_notes_a_missing_token(tiny_workspace, monkeypatch):
    assert DistillSpec().push_to_hub == "" and DistillSpec().hub_private is True
    for good in ("team/model-1", "model.v2"):
        assert DistillSpec(push_to_hub=good).push_to_hub == good
    for bad in ("a/b/c", "team/bad name", "team/x--y", "-team/x"):
        with pytest.raises(SpecError) as err:
            DistillSpec.parse({"push_to_hub": bad})
        assert "hub repo id" in err.value.errors["push_to_hub"] and repr(bad) in err.value.errors["push_to_hub"]
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in tiny_workspace.spec(push_to_hub="team/x").preflight()["push_to_hub"]
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(Path(tiny_workspace.root) / "no-token"))
    notes = tiny_workspace.spec(push_to_hub="team/x").preflight()
    assert "no Hugging Face token" in notes["push_to_hub"] and "keep its model in final/" in notes["push_to_hub"]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert "push_to_hub" not in tiny_workspace.spec(push_to_hub="team/x").preflight()


def test_card_metadata_for_hub_models_and_datasets(tmp_path):
    spec = DistillSpec(student="Qwen/Qwen2.5-0.5B-Instruct", teacher="Qwen/Qwen2.5-7B-Instruct", train_data="openai/gsm8k",
                       eval_data="openai/gsm8k", eval_split="test", dataset_config="main", objective="minillm", lmbda=1.0,
                       loss_top_k=64, lora=True)  # fmt: skip
    final = tmp_path / "my-run" / "final"
    final.mkdir(parents=True)
    metrics = {mk.LOSS: 0.25, mk.EVAL_EXACT_MATCH: 0.4375, mk.EVAL_DIV_FKL: 0.123456789}
    card = ModelCard.load(write_model_card(final, spec, metrics, {mk.EVAL_EXACT_MATCH: 0.25}, 200))
    data = card.data
    assert data.base_model == "Qwen/Qwen2.5-0.5B-Instruct" and data.datasets == ["openai/gsm8k"]
    assert {"distillation", "minillm", "on-policy-distillation", "lora"} <= set(data.tags)
    assert data.model_name == "my-run" and card.text.startswith("\n# my-run")
    result = {r.metric_type: r for r in data.eval_results}
    assert result[mk.EVAL_EXACT_MATCH].metric_value == 0.4375 and result[mk.EVAL_DIV_FKL].dataset_split == "test"
    assert result[mk.EVAL_DIV_FKL].dataset_config == "main"
    assert "| `gamma` | `0.0` |" in card.text  # the minillm knobs with objective minillm
    assert results_table(card.text)[mk.EVAL_DIV_FKL] == ("-", "0.123457")
    assert results_table(card.text)[mk.EVAL_EXACT_MATCH] == ("0.25", "0.4375")
    assert "gamma" not in write_model_card(final, DistillSpec(), metrics, {}, 1).read_text()
