"""The launch form, generated from `DistillSpec`: one component per field, nothing declared twice.

Each field's widget, label, help text, default and limits come from the pydantic field and its
JSON schema; `json_schema_extra["group"]` decides the accordion it sits in. Values travel between
the form, the YAML editor and the API as a `DistillSpec`, so validation is the engine's own.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core_distill.spec import DistillSpec, SpecError

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
GROUP_ORDER = ("models", "method", "minillm", "data", "training")
GROUP_TITLES = {"models": "Models", "method": "Method", "minillm": "MiniLLM", "data": "Data", "training": "Training"}
SLIDER_MAX_SPAN = 10.0  # bounded floats spanning at most this get a slider; wider ranges a number box


@dataclass(frozen=True)
class FieldWidget:
    """How one spec field is shown: which Gradio component and with which arguments."""

    name: str
    group: str
    kind: str  # "dropdown" | "checkbox" | "slider" | "number" | "text"
    kwargs: dict[str, Any]


def _bounds(prop: dict[str, Any]) -> tuple[float | None, float | None]:
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    return low, high


def field_widgets() -> list[FieldWidget]:
    """Every DistillSpec field, in group order then declaration order."""
    schema = DistillSpec.model_json_schema()["properties"]
    widgets = []
    for name, info in DistillSpec.model_fields.items():
        prop = schema[name]
        group = prop.get("group", "other")
        common = {"label": name, "info": info.description, "value": info.default}
        annotation = info.annotation
        low, high = _bounds(prop)
        if typing.get_origin(annotation) is typing.Literal:
            widgets.append(FieldWidget(name, group, "dropdown", {**common, "choices": list(typing.get_args(annotation))}))
        elif annotation is bool:
            widgets.append(FieldWidget(name, group, "checkbox", common))
        elif annotation is float and low is not None and high is not None and high - low <= SLIDER_MAX_SPAN:
            step = 0.01 if high - low <= 1 else 0.05
            widgets.append(FieldWidget(name, group, "slider", {**common, "minimum": low, "maximum": high, "step": step}))
        elif annotation in (int, float):
            extra: dict[str, Any] = {"minimum": low, "maximum": high}
            if annotation is int:
                extra["precision"] = 0
            widgets.append(FieldWidget(name, group, "number", {**common, **extra}))
        else:
            widgets.append(FieldWidget(name, group, "text", {**common, "max_lines": 1}))
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    return sorted(widgets, key=lambda w: order.get(w.group, len(order)))


FIELD_NAMES = [w.name for w in field_widgets()]


def values_to_dict(values: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Form values (in FIELD_NAMES order) as a spec dict; ints typed back from Gradio's floats."""
    data = dict(zip(FIELD_NAMES, values, strict=True))
    for name, info in DistillSpec.model_fields.items():
        value = data[name]
        if info.annotation is int and isinstance(value, float) and value.is_integer():
            data[name] = int(value)
        if value is None:  # an emptied number box: the field's default, not an error
            data[name] = info.default
    return data


def spec_to_values(spec: DistillSpec) -> list[Any]:
    dumped = spec.model_dump()
    return [dumped[name] for name in FIELD_NAMES]


def format_errors(errors: dict[str, str]) -> str:
    return "\n".join(f"- **{field}**: {msg}" for field, msg in errors.items())


def check_values(values: list[Any] | tuple[Any, ...], preflight: bool = True) -> tuple[DistillSpec | None, str]:
    """Validate the form: (spec, "") when it can run, else (None, markdown naming each bad field)."""
    try:
        spec = DistillSpec.parse(values_to_dict(values))
        if preflight:
            spec.preflight()
    except SpecError as exc:
        return None, "**Cannot launch:**\n" + format_errors(exc.errors)
    return spec, ""


def values_to_yaml(values: list[Any] | tuple[Any, ...]) -> str:
    """The form as YAML (only fields that differ from the defaults); invalid values are kept as typed."""
    try:
        return DistillSpec.parse(values_to_dict(values)).to_yaml(only_changed=True)
    except SpecError:
        defaults = {n: i.default for n, i in DistillSpec.model_fields.items()}
        changed = {k: v for k, v in values_to_dict(values).items() if v != defaults[k]}
        return yaml.safe_dump(changed, sort_keys=False)


def yaml_to_values(text: str) -> tuple[list[Any] | None, str]:
    """Parse the YAML editor: (values for the form, "") or (None, error message naming the field)."""
    try:
        spec = DistillSpec.from_yaml((text.strip() or "{}") + "\n")  # a newline: text, never a path
    except SpecError as exc:
        return None, "**YAML not applied:**\n" + format_errors(exc.errors)
    except yaml.YAMLError as exc:
        return None, f"**YAML not applied:** not valid YAML ({str(exc).splitlines()[0]})"
    return spec_to_values(spec), ""


def presets() -> dict[str, Path]:
    """The example specs shipped in examples/, by file stem."""
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.yaml"))}


def preset_yaml(name: str) -> str:
    files = presets()
    if name not in files:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(files)}")
    return files[name].read_text()
