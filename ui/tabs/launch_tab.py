"""Launch tab: the form generated from the spec (one component per field), presets, the YAML pane,
Validate and Launch.

Round trips: a field edit redraws the YAML pane in the browser (ui/static/form.js, from the spec's
field names and defaults); the server checks the fields when one is left (blur) or picked (dropdowns,
checkboxes), not on every keystroke. The YAML pane, when left, fills the fields (one round trip).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from app import crud
from app.models import ExperimentCreate
from app.services import experiments as experiment_service
from app.services.errors import ServiceError
from app.services.session import open_session
from app.settings import get_settings
from core_distill.spec import SpecError
from ui import form, runs

FORM_JS = Path(__file__).resolve().parents[1] / "static" / "form.js"
# the YAML pane and Validate/Launch stay in view while the (long) form scrolls beside them; Gradio's
# container clips with overflow: hidden, which would make it the sticky column's scroll box: clip instead
CSS = """
.gradio-container {overflow: clip !important;}
#launch-side {position: sticky; top: 0; align-self: flex-start; max-height: 100vh; overflow-y: auto;}
"""


def head() -> str:
    """The page head's script for the form: the spec's field names and defaults, then ui/static/form.js."""
    defaults = dict(zip(form.FIELD_NAMES, form.default_values(), strict=True))
    data = json.dumps({"names": form.FIELD_NAMES, "defaults": defaults, "numbers": form.TEXT_NUMBERS})
    data = data.replace("</", "<\\/")
    return f"<script>window.distillFormSpec = {data};\n{FORM_JS.read_text()}</script>"


def launch(
    name: str, tags_text: str, notes: str, *values: Any, owner: str | None = None, spec_yaml: str | None = None
) -> tuple[str, int | None]:
    """Validate the form and queue a run; (message, new run id or None). Nothing is written on error.

    `spec_yaml`: the YAML pane's text when it was edited after the fields; it is then what is checked
    and launched (`form.check_form`), else the field values are.
    """
    source = "fields" if spec_yaml is None else "yaml"
    spec, problems = form.check_form(source, spec_yaml or "", values, preflight=False)
    if spec is None:
        return problems, None
    try:
        experiment_in = ExperimentCreate(
            name=(name or "").strip() or f"{spec.objective} {spec.student}", tags=runs.parse_tags(tags_text),
            notes=notes or "", spec=spec, launch=True,
        )  # fmt: skip
    except ValueError as exc:
        return f"**Cannot launch:** {exc}", None
    with open_session() as session:
        try:
            experiment, run = experiment_service.create_experiment(
                session=session, experiment_in=experiment_in, user=owner
            )
        except SpecError as exc:
            return "**Cannot launch:**\n" + form.format_errors(exc.errors), None
        except ServiceError as exc:
            return f"**Cannot launch:** {exc}", None
        return f"Queued run {run.id} of experiment {experiment.id} *{experiment.name}*.", run.id


def validate(*values: Any, spec_yaml: str | None = None) -> str:
    """The checks Launch runs (validation, the server's path policy, the preflight), writing nothing."""
    source = "fields" if spec_yaml is None else "yaml"
    spec, problems = form.check_form(source, spec_yaml or "", values, preflight=False)
    if spec is not None:
        try:  # the policy first, as at Launch: in team mode Validate must not tell which files exist
            crud.validate_spec(spec)
        except SpecError as exc:
            problems = "**Cannot launch:**\n" + form.format_errors(exc.errors)
    if problems:
        return problems.replace("**Cannot launch", "**Not valid", 1)
    return "The spec is valid: every field is in range and its models and data exist."


def spec_components() -> list[gr.components.Component]:
    """The form: one accordion per spec group, one component per field (order = form.FIELD_NAMES)."""
    makers = {"dropdown": gr.Dropdown, "checkbox": gr.Checkbox, "slider": gr.Slider, "number": gr.Number,
              "text": gr.Textbox}  # fmt: skip
    components = []
    widgets = form.field_widgets()
    for group in dict.fromkeys(w.group for w in widgets):
        with gr.Accordion(form.GROUP_TITLES.get(group, group), open=group in ("models", "method")):
            for w in (w for w in widgets if w.group == group):
                components.append(makers[w.kind](**w.kwargs, elem_id=f"spec-{w.name}"))
    return components


class LaunchTab:
    def __init__(self) -> None:
        with gr.Tab("Launch", id="launch"):
            with gr.Row():
                self.preset = gr.Dropdown(form.preset_choices(), label="preset (examples/)", value=None, scale=2)
                self.name = gr.Textbox(label="experiment name", scale=2)
                self.tags = gr.Textbox(label="tags", placeholder="baseline, toy", scale=2)
            self.notes = gr.Textbox(label="notes", lines=1)
            with gr.Row():
                with gr.Column(scale=3):
                    self.spec_inputs = spec_components()
                with gr.Column(scale=2, elem_id="launch-side"):
                    self.spec_yaml = gr.Code(form.values_to_yaml([c.value for c in self.spec_inputs]),
                                             language="yaml",
                                             label="spec.yaml (only fields that differ from the defaults)",
                                             interactive=True, lines=16, elem_id="spec-yaml")  # fmt: skip
                    self.spec_status = gr.Markdown(elem_id="spec-status")  # the YAML pane's and the fields' problems
                    self.apply_yaml = gr.Button("Apply YAML to the form")
                    # which side was edited last ("fields" or "yaml"): set in the browser, so it is
                    # current when Launch is clicked even while the edit's own round trip is on its way
                    self.spec_source = gr.Textbox("fields", visible=False, elem_id="spec-source")
                    # form.js's stamp; "hidden", not False: in the page (not drawn), so its change event fires
                    self.spec_check = gr.Textbox("", visible="hidden", elem_id="spec-check")
                    with gr.Row():
                        self.check = gr.Button("Validate")
                        self.launch = gr.Button("Launch", variant="primary", elem_id="launch-button")
                    self.message = gr.Markdown(elem_id="form-message")

    def wire(self, *, tabs: gr.Tabs, live_run: gr.Number) -> None:
        spec_inputs, spec_yaml, spec_status, spec_source = (self.spec_inputs, self.spec_yaml, self.spec_status,
                                                            self.spec_source)  # fmt: skip

        def load_preset(name_: str):
            if not name_:
                return [gr.skip()] * (len(spec_inputs) + 4)
            text = form.preset_yaml(name_)
            values, problems = form.yaml_to_values(text)
            if values is None:
                return [*[gr.skip()] * len(spec_inputs), text, problems, "", gr.skip()]
            title = form.preset_title(text)
            return [*values, text, f"Loaded preset *{title}* (examples/{name_}.yaml).", "", title]

        # .select: once per pick (.input also fired when the dropdown lost the focus)
        self.preset.select(load_preset, self.preset, [*spec_inputs, spec_yaml, self.message, spec_status, self.name])

        # One source of truth: the fields rewrite the YAML pane on every edit (in the browser, form.js);
        # the YAML pane fills the fields when applied (button or leaving it). Launch and Validate check
        # the side edited last (spec_source), so they never launch a value that the screen does not show.
        spec_yaml.input(None, None, spec_source, js="() => 'yaml'")
        # .change, not .input: a Textbox's input event misses Backspace, Delete and paste (Gradio 6.31)
        gr.on([c.change for c in spec_inputs], None, [*spec_inputs, spec_yaml, spec_source], [spec_yaml, spec_source],
              js="(...args) => window.distillForm.fieldChanged(...args)")  # fmt: skip

        def apply(text: str):
            values, problems = form.yaml_to_values(text)
            if values is None:
                return [*[gr.skip()] * len(spec_inputs), problems]
            return [*values, "YAML applied to the form."]

        self.apply_yaml.click(apply, spec_yaml, [*spec_inputs, spec_status])
        spec_yaml.blur(apply, spec_yaml, [*spec_inputs, spec_status], show_progress="hidden")

        def check_fields(*values):
            return form.check_values(values, preflight=False)[1]

        # the server's check of the fields: when one is left (or a checkbox ticked: it has no blur) after an
        # edit; form.js stamps spec_check then, and only then, and the stamp's change runs the check
        left = [c.input if isinstance(c, gr.Checkbox) else c.blur for c in spec_inputs]
        gr.on(left, None, self.spec_check, self.spec_check, js="(stamp) => window.distillForm.leftField(stamp)")
        self.spec_check.change(check_fields, spec_inputs, spec_status, show_progress="hidden",
                               trigger_mode="always_last")  # fmt: skip

        def shown_yaml(source: str, text: str) -> str | None:
            return text if source == "yaml" else None

        self.check.click(lambda source, text, *values: validate(*values, spec_yaml=shown_yaml(source, text)),
                         [spec_source, spec_yaml, *spec_inputs], self.message)  # fmt: skip

        # Gradio injects positional requests only
        def launch_and_open(request: gr.Request, name_, tags_, notes_, source, text, *values):
            owner = request.username if request is not None and get_settings().auth == "on" else None
            message, run_id = launch(name_, tags_, notes_, *values, owner=owner, spec_yaml=shown_yaml(source, text))
            if run_id is None:
                return message, gr.skip(), gr.skip()
            return message, run_id, gr.Tabs(selected="live")

        self.launch.click(launch_and_open, [self.name, self.tags, self.notes, spec_source, spec_yaml, *spec_inputs],
                          [self.message, live_run, tabs])  # fmt: skip
