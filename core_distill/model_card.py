"""The model card of a finished run: `final/README.md` with the hub's metadata, and the spec beside it.

The engine writes both when it saves the final model (core_distill/train.py), so `final/` is a complete
hub repository: `huggingface_hub.ModelCard.load(final / "README.md")` reads the metadata, and `distill run
spec.yaml` in a download of it trains the same model again. Everything the card says is derived from the
spec (`DistillSpec` fields, their help texts and groups) and from the run's metrics (core_distill/metric_keys.py):
no field or metric is named here by hand except to order the summary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from core_distill import metric_keys as mk
from core_distill.paths import _HUB_REPO_ID, looks_like_local_path
from core_distill.spec import DistillSpec

CARD_FILE = "README.md"
SPEC_FILE = "spec.yaml"
METHOD_GROUPS = ("method",)  # plus "minillm" when the objective is minillm


def is_hub_model_id(name: str) -> bool:
    """'org/name' that is not a local path or a toy name: what the hub's `base_model` accepts."""
    return bool(name) and bool(_HUB_REPO_ID.match(name)) and not looks_like_local_path(name)


def final_metrics(records: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float], int]:
    """(last value of each key, the step-0 evaluation, last step) of a run's metrics.jsonl records."""
    last: dict[str, float] = {}
    baseline: dict[str, float] = {}
    step = 0
    for record in records:
        step = max(step, int(record["step"]))
        last.update(record["metrics"])
        if record["step"] == 0:
            baseline.update(record["metrics"])
    return last, baseline, step


def read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def card_keys(metrics: dict[str, float]) -> list[str]:
    """The summary keys first (metric_keys.FINAL), then every other evaluation key, alphabetically."""
    keys = [k for k in mk.FINAL if k in metrics]
    return keys + sorted(k for k in metrics if k.startswith(mk.EVAL_PREFIX) and k not in keys)


def number(value: float) -> str:
    """How the card writes a metric: 6 significant digits (tests compare the run's values written the same way)."""
    return f"{value:.6g}"


def card_data(spec: DistillSpec, metrics: dict[str, float], model_name: str):
    """The YAML front matter (a huggingface_hub ModelCardData)."""
    from huggingface_hub import EvalResult, ModelCardData

    datasets = [d for d in dict.fromkeys((spec.train_data, spec.eval_data)) if d and is_hub_model_id(d)]
    eval_name = spec.eval_data or spec.train_data
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=eval_name,
            dataset_name=eval_name,
            metric_type=key,
            metric_name=key,
            metric_value=float(metrics[key]),
            dataset_split=spec.eval_split or None,
            dataset_config=spec.dataset_config or None,
        )  # fmt: skip
        for key in card_keys(metrics)
        if key.startswith(mk.EVAL_PREFIX) and math.isfinite(float(metrics[key]))
    ]
    return ModelCardData(
        base_model=spec.student if is_hub_model_id(spec.student) else None,
        datasets=datasets or None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=method_tags(spec),
        model_name=model_name,
        eval_results=results or None,
    )


def method_tags(spec: DistillSpec) -> list[str]:
    tags = ["distillation", "knowledge-distillation", "distill-service", spec.objective]
    if spec.lmbda > 0:
        tags.append("on-policy-distillation")
    if spec.seq_kd:
        tags.append("sequence-level-kd")
    if spec.opsd != "off":
        tags.append("self-distillation")
    if spec.lora:
        tags.append("lora")
    return tags


def teacher_text(spec: DistillSpec) -> str:
    if spec.teacher_server_url:
        return f"served at `{spec.teacher_server_url}` ({spec.teacher_server_api})"
    if spec.opsd != "off":
        return f"the student itself shown the privileged `teacher_prompt` (opsd = `{spec.opsd}`)"
    if spec.objective == "sft" and not spec.seq_kd:
        return "none (objective sft: the dataset's completions)"
    return f"`{spec.teacher}`"


def _fields(spec: DistillSpec, groups: tuple[str, ...]) -> list[tuple[str, Any, str]]:
    """(name, value, help) of every spec field in `groups`, in declaration order."""
    props = DistillSpec.model_json_schema()["properties"]
    return [(name, getattr(spec, name), info.description or "") for name, info in DistillSpec.model_fields.items()
            if props[name].get("group") in groups]  # fmt: skip


def objective_text(spec: DistillSpec) -> str:
    """The objective field's help text about this objective ("gkd: ... . minillm: ..." -> the gkd part)."""
    import re
    import typing

    text = DistillSpec.model_fields["objective"].description or ""
    names = "|".join(typing.get_args(DistillSpec.model_fields["objective"].annotation))
    found = re.search(rf"(?:^|\. ){spec.objective}: (.*?)(?=\. (?:{names}): |$)", text)
    return found.group(1).rstrip(".") if found else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def card_body(spec: DistillSpec, metrics: dict[str, float], baseline: dict[str, float], step: int,
              model_name: str, version: str) -> str:  # fmt: skip
    student = f"`{spec.student}`" + ("" if is_hub_model_id(spec.student) else " (not a hub model)")
    evals = f"`{spec.eval_data}` ({spec.eval_examples} rows, {spec.eval_metric})" if spec.eval_data else "none"
    groups = METHOD_GROUPS + (("minillm",) if spec.objective == "minillm" else ())
    lines = [
        f"# {model_name}", "",
        f"A student model distilled from a teacher with distill (the `distill-service` package), objective `{spec.objective}`.",
        "",
        "| | |", "|---|---|",
        f"| Student (base model) | {student} |",
        f"| Teacher | {teacher_text(spec)} |",
        f"| Method | `{spec.objective}`: {_cell(objective_text(spec))} |",
        f"| Training data | `{spec.train_data}`" + (f" (split `{spec.train_split}`)" if spec.train_split else "") + " |",
        f"| Evaluation data | {evals} |",
        f"| Training | {spec.max_steps} steps of {spec.batch_size} x {spec.grad_accum} rows, learning rate "
        f"{spec.learning_rate:g} ({spec.lr_schedule}), seed {spec.seed}" + (", LoRA merged" if spec.lora else "") + " |",
        "", "## Method and its knobs", "", "| knob | value | meaning |", "|---|---|---|",
    ]  # fmt: skip
    for name, value, help_text in _fields(spec, groups):
        if name != "objective":
            lines.append(f"| `{name}` | `{json.dumps(value)}` | {_cell(help_text)} |")
    lines += ["", "## Results", ""]
    keys = card_keys(metrics)
    if keys:
        lines += [f"The run's last values (training metrics at its last step {step}; evaluation on the eval rows at "
                  "the end), beside the student's before training (step 0) where it was evaluated:", "",
                  "| metric | before training | final |", "|---|---|---|"]  # fmt: skip
        for key in keys:
            before = number(baseline[key]) if key in baseline else "-"
            lines.append(f"| `{key}` | {before} | {number(float(metrics[key]))} |")
    else:
        lines.append("The run logged no metrics.")
    lines += [
        "", "## Reproduce", "",
        f"`spec.yaml` in this folder is the run's whole spec. With distill-service {version} installed:", "",
        "```bash", "distill run spec.yaml --output runs/reproduced", "```", "",
        "The data order, the on/off-policy draws and sampling follow from the spec's seed. The models and data it "
        "names must be reachable where it runs: hub ids and `toy:` names are; local paths must exist there.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def write_model_card(final_dir: Path, spec: DistillSpec, metrics: dict[str, float], baseline: dict[str, float],
                     step: int, model_name: str | None = None) -> Path:  # fmt: skip
    """`final_dir/README.md` (metadata and body) and `final_dir/spec.yaml`; returns the card's path."""
    from huggingface_hub import ModelCard

    from core_distill.version import package_version

    final_dir = Path(final_dir)
    name = model_name or (spec.push_to_hub.rsplit("/", 1)[-1] if spec.push_to_hub else final_dir.resolve().parent.name)
    data = card_data(spec, metrics, name)
    card = ModelCard(
        f"---\n{data.to_yaml()}\n---\n\n{card_body(spec, metrics, baseline, step, name, package_version())}"
    )
    path = final_dir / CARD_FILE
    card.save(path)
    (final_dir / SPEC_FILE).write_text(spec.to_yaml())
    return path


def card_from_run_folder(run_dir: Path, final_dir: Path) -> Path:
    """A card for a run folder written before cards existed: from its spec.yaml and metrics.jsonl.

    Raises:
        FileNotFoundError: the run folder has no spec.yaml (naming it).
    """
    spec_path = Path(run_dir) / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{final_dir} has no {CARD_FILE} and {spec_path} does not exist to write one from")
    spec = DistillSpec.from_yaml(spec_path)
    metrics_path = Path(run_dir) / "metrics.jsonl"
    records = read_metrics_jsonl(metrics_path) if metrics_path.is_file() else []
    last, baseline, step = final_metrics(records)
    return write_model_card(final_dir, spec, last, baseline, step)
