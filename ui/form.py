"""The launch form, generated from `DistillSpec`: one component per field, nothing declared twice.

Each field's widget, label, help text, default and limits come from the pydantic field and its
JSON schema; `json_schema_extra["group"]` decides the accordion it sits in. Values travel between
the form, the YAML editor and the API as a `DistillSpec`, so validation is the engine's own.

Numbers are plain boxes without Gradio limits: Gradio would clamp an out-of-range value (or refuse
it with a toast naming no field), so the spec's limits are shown in the help text and enforced by
`DistillSpec` itself, whose error names the field and the value. Launch and Validate check the
side of the form the user edited last (`check_form`): the fields, or the YAML pane.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core_distill.presets import spec_presets
from core_distill.spec import DistillSpec, SpecError, number_type, value_schema

GROUP_ORDER = ("models", "method", "minillm", "data", "training")
GROUP_TITLES = {"models": "Models", "method": "Method", "minillm": "MiniLLM", "data": "Data", "training": "Training"}
SOURCES = ("fields", "yaml")  # which side of the form was edited last, and so is launched

# Each field's help (its `info`, the spec's description) under its label: Gradio's default grey is
# 1.9:1 on white; these meet WCAG AA's 4.5:1 for text in the light and the dark theme
CSS = """
.info-text {color: #52525b !important;}
.dark .info-text {color: #a1a1aa !important;}
"""


@dataclass(frozen=True)
class FieldWidget:
    """How one spec field is shown: which Gradio component and with which arguments."""

    name: str
    group: str
    kind: str  # "dropdown" | "checkbox" | "number" | "text"
    kwargs: dict[str, Any]


def _bounds(prop: dict[str, Any]) -> tuple[float | None, float | None]:
    prop = value_schema(prop)
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    return low, high


def field_limits(name: str) -> str:
    """The spec's limits of a number field as text ("0 ≤ beta ≤ 1"), or "" when it has none."""
    prop = value_schema(DistillSpec.model_json_schema()["properties"][name])

    def num(v: float) -> str:
        return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"

    low = [f"{num(prop[k])} {sign} " for k, sign in (("minimum", "≤"), ("exclusiveMinimum", "<")) if k in prop]
    high = [f" {sign} {num(prop[k])}" for k, sign in (("maximum", "≤"), ("exclusiveMaximum", "<")) if k in prop]
    return f"{''.join(low)}{name}{''.join(high)}" if low or high else ""


def field_widgets() -> list[FieldWidget]:
    """Every DistillSpec field, in group order then declaration order."""
    schema = DistillSpec.model_json_schema()["properties"]
    widgets = []
    for name, info in DistillSpec.model_fields.items():
        prop = schema[name]
        group = prop.get("group", "other")
        common = {"label": name, "info": info.description, "value": info.default}
        annotation = info.annotation
        if typing.get_origin(annotation) is typing.Literal:
            widgets.append(
                FieldWidget(name, group, "dropdown", {**common, "choices": list(typing.get_args(annotation))})
            )
        elif typing.get_origin(annotation) is list and typing.get_origin(typing.get_args(annotation)[0]) is typing.Literal:
            choices = list(typing.get_args(typing.get_args(annotation)[0]))  # report_to: several of a few names
            widgets.append(FieldWidget(name, group, "dropdown", {**common, "choices": choices, "multiselect": True}))
        elif annotation is bool:
            widgets.append(FieldWidget(name, group, "checkbox", common))
        elif number_type(annotation) is not None and info.default is None:
            # a number that may stay empty: a text box, since Gradio's Number shows (and sends) 0 for None
            limits = field_limits(name)
            info_text = f"{info.description} ({limits})" if limits else info.description
            widgets.append(FieldWidget(name, group, "text", {**common, "info": info_text, "value": "", "max_lines": 1}))
        elif (kind := number_type(annotation)) is not None:
            # no minimum/maximum/precision: Gradio would clamp or round what was typed, silently
            limits = field_limits(name)
            info_text = f"{info.description} ({limits})" if limits else info.description
            low, high = _bounds(prop)
            unit_span = kind is float and low is not None and high is not None and high - low <= 1
            step = {"step": 0.01} if unit_span else {}  # the arrows' increment; typed values are not rounded
            widgets.append(FieldWidget(name, group, "number", {**common, "info": info_text, **step}))
        else:
            widgets.append(FieldWidget(name, group, "text", {**common, "max_lines": 1}))
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    return sorted(widgets, key=lambda w: order.get(w.group, len(order)))


FIELD_NAMES = [w.name for w in field_widgets()]
# number fields that may stay empty, shown as text boxes (field_widgets)
TEXT_NUMBERS = [w.name for w in field_widgets() if w.kind == "text" and number_type(
    DistillSpec.model_fields[w.name].annotation) is not None]  # fmt: skip


def default_values() -> list[Any]:
    """Each field's default as the form holds it (JSON), in FIELD_NAMES order."""
    dumped = DistillSpec.parse({}).model_dump(mode="json")
    return [dumped[name] for name in FIELD_NAMES]


def values_to_dict(values: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Form values (in FIELD_NAMES order) as a spec dict; ints typed back from Gradio's floats.

    An emptied number box stays None, which the spec refuses naming the field (or, for a field that may
    be empty such as auto_resume_attempts, takes as "not set"): the form launches what it shows.
    """
    data = dict(zip(FIELD_NAMES, values, strict=True))
    for name, info in DistillSpec.model_fields.items():
        value = data[name]
        if name in TEXT_NUMBERS and isinstance(value, str):
            data[name] = value = _number_text(value)
        if number_type(info.annotation) is int and isinstance(value, float) and value.is_integer():
            data[name] = int(value)
    return data


def _number_text(text: str) -> float | str | None:
    """A TEXT_NUMBERS box's text: empty is None, a number its value; anything else is left for the spec
    to refuse, naming the field."""
    try:
        return float(text) if text.strip() else None
    except ValueError:
        return text


def form_value(name: str, value: Any) -> Any:
    """A spec value as its form component holds it (a TEXT_NUMBERS box holds text)."""
    if name in TEXT_NUMBERS:
        return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
    return value


def spec_to_values(spec: DistillSpec) -> list[Any]:
    dumped = spec.model_dump()
    return [form_value(name, dumped[name]) for name in FIELD_NAMES]


def format_errors(errors: dict[str, str]) -> str:
    """Markdown, one line per bad field with the spec's own message (an unknown key names the closest field)."""
    lines = []
    for field, msg in errors.items():
        lines.append(f"- **{field}**: {msg}")
    return "\n".join(lines)


def _checked(parse: Any, preflight: bool) -> tuple[DistillSpec | None, str]:
    try:
        spec = parse()
        if preflight:
            spec.preflight()
    except SpecError as exc:
        return None, format_errors(exc.errors)
    return spec, ""


def check_values(values: list[Any] | tuple[Any, ...], preflight: bool = True) -> tuple[DistillSpec | None, str]:
    """Validate the form's fields: (spec, "") when it can run, else (None, markdown naming each bad field)."""
    spec, problems = _checked(lambda: DistillSpec.parse(values_to_dict(values)), preflight)
    return spec, problems and "**Cannot launch:**\n" + problems


def check_yaml(text: str, preflight: bool = True) -> tuple[DistillSpec | None, str]:
    """Validate the YAML pane (strict YAML: a key set twice or an alias is refused, naming it)."""
    spec, problems = _checked(lambda: DistillSpec.from_yaml((text.strip() or "{}") + "\n"), preflight)
    return spec, problems and "**Cannot launch** (the YAML pane, edited last):\n" + problems


def check_form(
    source: str, yaml_text: str, values: list[Any] | tuple[Any, ...], preflight: bool = True
) -> tuple[DistillSpec | None, str]:
    """What Launch and Validate check: the side of the form edited last (`source`, one of SOURCES).

    The fields rewrite the YAML pane on every change, and the YAML pane fills the fields when it is
    applied, so the two agree except while an edit is on its way or when the YAML does not apply.
    Then the side the user touched last is what they mean; it alone is checked and launched.
    """
    if source == "yaml":
        return check_yaml(yaml_text or "", preflight)
    return check_values(values, preflight)


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
    # a newline: text, never a path
    spec, problems = _checked(lambda: DistillSpec.from_yaml((text.strip() or "{}") + "\n"), preflight=False)
    if spec is None:
        return None, "**YAML not applied:**\n" + problems
    return spec_to_values(spec), ""


def presets() -> dict[str, Path]:
    """The example specs shipped in examples/, by file stem."""
    return spec_presets()


def preset_title(text: str) -> str:
    """A preset's readable name, from its YAML alone: the first comment's lead-in (up to ':') and, for
    GKD-family objectives, the spec's λ and β: 'On-policy GKD (λ=1, β=0.5)'."""
    comment = next((line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")), "")
    title = comment.split(":", 1)[0].strip()
    spec = DistillSpec.from_yaml(text if text.strip() else "{}\n")
    if spec.objective == "gkd":
        title += f" (λ={spec.lmbda:g}, β={spec.beta:g})"
    return title


def preset_choices() -> list[tuple[str, str]]:
    """(readable name, file stem) of each example, for the preset dropdown."""
    return [(preset_title(path.read_text()), name) for name, path in presets().items()]


def preset_yaml(name: str) -> str:
    files = presets()
    if name not in files:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(files)}")
    return files[name].read_text()
