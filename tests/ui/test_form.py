"""The launch form is generated from DistillSpec and round-trips every field through form values and YAML."""

from __future__ import annotations

import typing

import pytest

from core_distill.spec import DistillSpec
from ui import form


def _changed_value(name: str):
    """A value other than the default for field `name`, inside its limits."""
    info = DistillSpec.model_fields[name]
    default = info.default
    if typing.get_origin(info.annotation) is typing.Literal:
        return next(c for c in typing.get_args(info.annotation) if c != default)
    if info.annotation is bool:
        return not default
    if typing.get_origin(info.annotation) is list:  # report_to: a list of names
        return ["tensorboard"]
    low, high = form._bounds(DistillSpec.model_json_schema()["properties"][name])
    if info.annotation is int:
        return default + 1 if high is None or default + 1 <= high else default - 1
    if info.annotation is float:
        candidate = (low + high) / 2 if low is not None and high is not None else default + 0.25
        return candidate if candidate != default else candidate / 2
    return "http://teacher:8600" if name == "teacher_server_url" else default + "x" if default else "x"


def test_every_field_has_one_widget_with_its_help_and_default():
    widgets = form.field_widgets()
    assert sorted(w.name for w in widgets) == sorted(DistillSpec.model_fields)
    for w in widgets:
        info = DistillSpec.model_fields[w.name]
        assert w.kwargs["info"].startswith(info.description)
        assert w.kwargs["value"] == form.form_value(w.name, info.default)  # "" for an empty number's text box
    by_name = {w.name: w for w in widgets}
    assert by_name["beta"].kind == "number" and by_name["beta"].kwargs["info"].endswith("(0 ≤ beta ≤ 1)")
    assert by_name["max_steps"].kind == "number" and "(1 ≤ max_steps ≤ " in by_name["max_steps"].kwargs["info"]
    assert by_name["objective"].kind == "dropdown"
    assert set(by_name["objective"].kwargs["choices"]) == {"gkd", "minillm", "sft"}
    assert by_name["seq_kd"].kind == "checkbox" and by_name["student"].kind == "text"
    assert by_name["report_to"].kind == "dropdown" and by_name["report_to"].kwargs["multiselect"] is True
    assert by_name["report_to"].kwargs["choices"] == ["mlflow", "wandb", "tensorboard", "trackio"]
    # grouped in the spec's group order
    groups = [w.group for w in widgets]
    assert groups == sorted(groups, key=form.GROUP_ORDER.index)


@pytest.mark.parametrize("name", list(DistillSpec.model_fields))
def test_each_field_round_trips_through_form_values_and_yaml(name):
    defaults = DistillSpec().model_dump()
    data = {**defaults, name: _changed_value(name)}
    # Gradio hands numbers back as floats
    values = [
        float(data[n]) if isinstance(data[n], int) and not isinstance(data[n], bool) else data[n]
        for n in form.FIELD_NAMES
    ]
    assert form.values_to_dict(values) == data
    spec, problems = form.check_values(values, preflight=False)
    if spec is None:  # a value that breaks a rule involving another field: the message names a field
        assert "**" in problems
        return
    back, problems = form.yaml_to_values(form.values_to_yaml(values))
    assert problems == "" and form.values_to_dict(back) == data  # form values: an empty number's box holds text


def test_gradio_never_clamps_or_rounds_a_number():
    """Limits are the spec's: a Gradio minimum/maximum would clamp (or refuse without naming the field),
    a precision would round; the value typed must reach DistillSpec, whose error names field and value."""
    for w in form.field_widgets():
        if w.kind == "number":
            assert not {"minimum", "maximum", "precision"} & set(w.kwargs), w
    assert all(w.kind != "slider" for w in form.field_widgets())
    values = form.spec_to_values(DistillSpec())
    for name, typed, shown in (
        ("beta", 2.0, "got 2.0"),
        ("max_steps", 2.5, "got 2.5"),
        ("batch_size", None, "got null"),
    ):
        bad = list(values)
        bad[form.FIELD_NAMES.index(name)] = typed  # what Gradio hands over: floats, None for an emptied box
        spec, message = form.check_values(bad, preflight=False)
        assert spec is None and f"**{name}**" in message and shown in message, message


def test_unknown_keys_name_the_closest_field():
    spec, message = form.check_yaml("lmdba: 0.7\n", preflight=False)
    assert spec is None and "**lmdba**: is not a spec field; did you mean 'lmbda'?" in message
    assert "did you mean" not in form.check_yaml("zzzz: 1\n", preflight=False)[1]


def test_yaml_keys_set_twice_are_refused_naming_the_key():
    values, message = form.yaml_to_values("beta: 0.1\nlmbda: 1.0\nbeta: 0.9\n")
    assert values is None and "**beta**: is set twice (lines 1 and 3); keep one" in message
    spec, message = form.check_form("yaml", "beta: 0.1\nbeta: 0.9\n", form.spec_to_values(DistillSpec()), False)
    assert spec is None and "**beta**" in message


def test_launch_checks_the_side_edited_last():
    fields = form.spec_to_values(DistillSpec(beta=0.25))
    spec, _ = form.check_form("fields", "beta: 0.75\n", fields, preflight=False)
    assert spec.beta == 0.25
    spec, _ = form.check_form("yaml", "beta: 0.75\n", fields, preflight=False)
    assert spec.beta == 0.75
    spec, message = form.check_form("yaml", "beta: 2\n", fields, preflight=False)  # not the valid fields
    assert spec is None and "YAML pane" in message and "**beta**" in message and "got 2" in message


def test_validation_message_names_the_field():
    values = form.spec_to_values(DistillSpec())
    values[form.FIELD_NAMES.index("beta")] = 1.5
    spec, message = form.check_values(values, preflight=False)
    assert spec is None and "**beta**" in message and "1.5" in message

    values = form.spec_to_values(DistillSpec())
    values[form.FIELD_NAMES.index("objective")] = "minillm"  # needs lmbda = 1
    spec, message = form.check_values(values, preflight=False)
    assert spec is None and "**lmbda**" in message


def test_preflight_names_missing_paths(tmp_path):
    values = form.spec_to_values(DistillSpec(train_data=str(tmp_path / "missing.jsonl")))
    spec, message = form.check_values(values, preflight=True)
    assert spec is None and "**train_data**" in message


def test_yaml_errors_name_the_problem():
    assert form.yaml_to_values("beta: 3\n")[0] is None
    assert "**beta**" in form.yaml_to_values("beta: 3\n")[1]
    assert "**lmbda_typo**" in form.yaml_to_values("lmbda_typo: 1\n")[1]
    assert "not valid YAML" in form.yaml_to_values("beta: [0.5\n")[1]
    values, problems = form.yaml_to_values("")  # empty = the defaults
    assert problems == "" and values == form.spec_to_values(DistillSpec())


def test_yaml_shows_only_changed_fields():
    values = form.spec_to_values(DistillSpec(beta=0.25, max_steps=7))
    assert form.values_to_yaml(values) == "beta: 0.25\nmax_steps: 7\n"


def test_every_example_preset_loads_into_the_form():
    names = list(form.presets())
    assert {"gkd_on_policy", "supervised_kd", "opsd", "minillm"} <= set(names)
    for name in names:
        values, problems = form.yaml_to_values(form.preset_yaml(name))
        assert problems == "", name
        assert DistillSpec.from_yaml(form.preset_yaml(name)).model_dump() == form.values_to_dict(values)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        form.preset_yaml("nope")


def test_a_number_that_may_stay_empty_is_a_text_box_so_opening_it_changes_nothing():
    """Gradio's Number shows and sends 0 for None once it is drawn (opening the Training accordion set
    auto_resume_attempts to 0, "never resume"); such fields are text boxes: empty is None, text a number."""
    assert form.TEXT_NUMBERS == ["auto_resume_attempts"]
    widget = next(w for w in form.field_widgets() if w.name == "auto_resume_attempts")
    assert (widget.kind, widget.kwargs["value"]) == ("text", "")
    defaults = form.spec_to_values(DistillSpec())
    at = form.FIELD_NAMES.index("auto_resume_attempts")
    assert defaults[at] == ""
    assert form.values_to_yaml(defaults) == "{}\n"
    for typed, stored in (("", None), (" 3 ", 3), ("0", 0)):
        values = [*defaults[:at], typed, *defaults[at + 1 :]]
        assert form.values_to_dict(values)["auto_resume_attempts"] == stored
        assert form.check_values(values, preflight=False)[0].auto_resume_attempts == stored
    spec, problems = form.check_values([*defaults[:at], "three", *defaults[at + 1 :]], preflight=False)
    assert spec is None and "auto_resume_attempts" in problems
    assert form.spec_to_values(DistillSpec(auto_resume_attempts=2))[at] == "2"
