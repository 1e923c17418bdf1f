"""Bad specs are refused before anything loads, naming the field and the bad value."""

from __future__ import annotations

import re

import pytest

from core_distill.spec import DistillSpec, SpecError
from tests.tiny_models import build_model, build_tokenizer


def refused(fields: dict) -> dict[str, str]:
    with pytest.raises(SpecError) as exc:
        DistillSpec.parse(fields)
    return exc.value.errors


@pytest.mark.parametrize(
    "fields, field, fragment",
    [
        ({"lmbda": 1.5}, "lmbda", "1.5"),
        ({"beta": -0.1}, "beta", "-0.1"),
        ({"temperature": 0}, "temperature", "greater than 0"),
        ({"kd_temperature": float("nan")}, "kd_temperature", "NaN"),
        ({"loss_top_k": -1}, "loss_top_k", "-1"),
        ({"max_steps": 0}, "max_steps", "0"),
        ({"opsd": "sometimes"}, "opsd", "sometimes"),
        ({"objective": "minillm", "lmbda": 0.5}, "lmbda", "0.5"),
        ({"objective": "sft", "lmbda": 0.5}, "lmbda", "sft"),
        ({"teacher_server_url": "http://h:1", "loss_top_k": 0}, "loss_top_k", "teacher_server_url"),
        ({"teacher_server_url": "ftp://h"}, "teacher_server_url", "ftp://h"),
        ({"opsd": "dynamic"}, "teacher", "toy:teacher"),
        ({"opsd": "off", "teacher": ""}, "teacher", "self-distillation"),
        ({"learning_rate": "fast"}, "learning_rate", "fast"),
        ({"lmbda_typo": 1}, "lmbda_typo", "is not a spec field; did you mean 'lmbda'?"),
        ({"lmbd": 1}, "lmbd", "is not a spec field; did you mean 'lmbda'?"),
        ({"zzzz": 1}, "zzzz", "is not a spec field (`distill spec` lists them)"),
        ({"student": "x" * 2000}, "student", "1024"),
    ],
)
def test_bad_fields_are_named_with_their_value(fields, field, fragment):
    errors = refused(fields)
    assert field in errors, errors
    assert fragment in errors[field]


def test_every_field_has_a_default_a_help_string_and_a_group():
    schema = DistillSpec.model_json_schema()
    for name, prop in schema["properties"].items():
        assert "default" in prop, name
        assert prop.get("description"), name
        assert prop.get("group") in {"models", "method", "minillm", "data", "training"}, name
    DistillSpec()  # the defaults are a valid spec (the toy example)


def test_preflight_refuses_missing_paths_and_different_vocabularies(tmp_path):
    build_model(tmp_path / "student", build_tokenizer(), hidden=32, layers=1)
    build_model(tmp_path / "teacher", build_tokenizer(extra_chars="[]{}<>"), hidden=32, layers=1)
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    spec = DistillSpec(student=str(tmp_path / "student"), teacher=str(tmp_path / "missing"),
                       train_data=str(tmp_path / "train.jsonl"), eval_data=str(tmp_path / "nope.jsonl"))  # fmt: skip
    with pytest.raises(SpecError) as exc:
        spec.preflight()
    assert "missing" in exc.value.errors["teacher"] and "nope.jsonl" in exc.value.errors["eval_data"]
    with pytest.raises(SpecError) as exc:
        spec.with_overrides({"teacher": str(tmp_path / "teacher"), "eval_data": ""}).preflight()
    # compared by tokens (core_distill/data/vocab.py): the six extra characters shift the ids after them
    assert re.search(r"\d+ of 87 token ids differ \(the student's tokenizer has 81 ids, the teacher's 87\)",
                     exc.value.errors["teacher"])  # fmt: skip


def test_yaml_round_trip_and_overrides(tmp_path):
    spec = DistillSpec(lmbda=1.0, beta=0.0, seq_kd=True)
    path = tmp_path / "spec.yaml"
    path.write_text("# a comment\n" + spec.to_yaml(only_changed=True))
    loaded = DistillSpec.from_yaml(path)
    assert loaded == spec
    assert loaded.with_overrides({"beta": 1.0}).beta == 1.0
    with pytest.raises(SpecError, match="beta"):
        loaded.with_overrides({"beta": 2})
    with pytest.raises(SpecError, match="mapping"):
        DistillSpec.from_yaml("- a\n- b\n")


def test_yaml_keys_set_twice_and_aliases_are_refused(tmp_path):
    from core_distill.spec import DuplicateKeyError, load_yaml

    with pytest.raises(SpecError) as exc:
        DistillSpec.from_yaml("batch_size: 16\nbeta: 0.5\nbatch_size: 8\n")
    assert exc.value.errors == {"batch_size": "is set twice (lines 1 and 3); keep one"}
    path = tmp_path / "twice.yaml"  # the same from a file
    path.write_text("lmbda: 0.5\nlmbda: 1.0\n")
    with pytest.raises(SpecError, match="lmbda: is set twice"):
        DistillSpec.from_yaml(path)
    with pytest.raises(DuplicateKeyError) as dup:  # in any mapping, at any depth
        load_yaml("spec:\n  beta: 0.1\n  beta: 0.2\nname: x\n")
    assert dup.value.key == "beta"
    with pytest.raises(SpecError) as exc:  # aliases: the "billion laughs"
        DistillSpec.from_yaml("base: &b 0.5\nbeta: *b\n")
    assert "aliases (*name) are not allowed" in exc.value.errors["spec"]
    with pytest.raises(SpecError, match="not valid YAML"):
        DistillSpec.from_yaml("beta: [0.5\n")
    assert load_yaml("a: 1\nb: {a: 2}\n") == {"a": 1, "b": {"a": 2}}  # the same key in two mappings is fine


def test_docs_spec_reference_is_generated_from_the_class():
    from pathlib import Path

    from core_distill.spec import spec_reference_markdown

    doc = Path(__file__).parents[2] / "docs" / "spec.md"
    assert doc.read_text().rstrip() == spec_reference_markdown().rstrip(), "run: distill spec --markdown > docs/spec.md"


def test_every_example_spec_is_valid():
    from pathlib import Path

    root = Path(__file__).parents[2]
    # examples/sweeps/ holds sweep files (a spec inside a grid), checked by tests/ui/test_sweeps.py
    examples = sorted(p for p in (root / "examples").rglob("*.yaml") if "sweeps" not in p.parts)
    assert len(examples) >= 9
    for path in examples:
        spec = DistillSpec.from_yaml(path)
        assert f"distill run {path.relative_to(root)}" in path.read_text().splitlines()[1]
        if path.parent.name == "chain":  # the chain task: one answer, graded greedily on its final answer
            assert spec.eval_metric == "final_answer" and spec.eval_temperature == 0.0
            assert spec.student.startswith("toy:chain/") and spec.train_data == "toy:chain/train"
        else:
            assert spec.eval_metric == "countdown" and spec.eval_temperature == 1.0
