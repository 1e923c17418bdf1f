"""Sweeps tab: launch one from YAML, the list, one sweep's groups, scores and curves."""

from __future__ import annotations

import gradio as gr

from ui import sweep_launch
from ui import sweeps as sweep_view
from ui.tabs.common import CHEAP, REDRAW, acting_user


class SweepsTab:
    def __init__(self) -> None:
        with gr.Tab("Sweeps", id="sweeps") as self.tab:
            with gr.Accordion("Launch a sweep", open=False):
                with gr.Row():
                    self.example = gr.Dropdown([*sweep_launch.examples()], value=None, scale=1,
                                               label="example (examples/sweeps/)")  # fmt: skip
                self.yaml = gr.Code(sweep_launch.TEMPLATE, language="yaml", interactive=True, lines=12,
                                    label="sweep.yaml (the POST /api/sweeps body, as `distill sweep submit` reads it)",
                                    elem_id="sweep-yaml")  # fmt: skip
                with gr.Row():
                    self.check = gr.Button("Validate sweep")
                    self.launch = gr.Button("Launch sweep", variant="primary", elem_id="sweep-launch")
                self.form_msg = gr.Markdown(elem_id="sweep-form-message")
            with gr.Row():
                self.owner = gr.Textbox(label="owner", placeholder="empty: everyone's", scale=1)
                self.page = gr.Number(0, label="page", precision=0, minimum=0, scale=0)
                self.refresh = gr.Button("Refresh", scale=0)
            self.caption = gr.Markdown()
            self.list = gr.Dataframe(headers=list(sweep_view.SWEEP_COLUMNS), interactive=False,
                                     elem_id="sweeps-table", max_height=260, wrap=False)  # fmt: skip
            with gr.Row():
                self.sweep_id = gr.Number(label="sweep", precision=0, scale=0, elem_id="sweep-id")
                self.metric = gr.Dropdown([sweep_view.DEFAULT_METRIC], value=sweep_view.DEFAULT_METRIC,
                                          allow_custom_value=True, label="metric", scale=2,
                                          elem_id="sweep-metric")  # fmt: skip
                self.band = gr.Radio([("95% CI of the mean", "ci"), ("± 1 sd", "sd")], value="ci",
                                     label="bands and error bars over seeds", scale=2)  # fmt: skip
                self.x_field = gr.Dropdown([], value=None, label="setting plot: x axis", scale=1, elem_id="sweep-x")
                self.cancel = gr.Button("Cancel sweep", variant="stop", scale=0, elem_id="cancel-sweep")  # confirm.js
            self.header = gr.Markdown(elem_id="sweep-header")
            self.msg = gr.Markdown(elem_id="sweep-action-message")
            self.groups = gr.Dataframe(interactive=False, elem_id="sweep-groups", wrap=True)
            with gr.Row():
                self.curves = gr.Plot(show_label=False, elem_id="sweep-curves")
                self.setting_plot = gr.Plot(show_label=False, elem_id="sweep-setting-plot")
            self.list_version = gr.State("")
            self.view_version = gr.State("")

    def wire(self, *, timer: gr.Timer) -> None:
        """`timer`: the Runs tab's table tick, which also polls the sweep list and the shown sweep."""
        list_inputs = [self.owner, self.page]
        for trigger in (self.refresh.click, self.owner.submit, self.page.submit, self.tab.select,
                        self.list_version.change):  # fmt: skip
            trigger(sweep_view.sweeps_table, list_inputs, [self.list, self.caption], **REDRAW)

        def sweeps_tick(current_list: str, current_view: str, shown: int | None):
            latest_list, latest_view = sweep_view.list_fingerprint(), sweep_view.view_fingerprint(shown)
            return (gr.skip() if latest_list == current_list else latest_list,
                    gr.skip() if latest_view == current_view else latest_view)  # fmt: skip

        timer.tick(sweeps_tick, [self.list_version, self.view_version, self.sweep_id],
                   [self.list_version, self.view_version], **CHEAP)  # fmt: skip

        def pick_sweep(evt: gr.SelectData):
            return int(evt.row_value[0]) if evt.row_value else gr.skip()

        self.list.select(pick_sweep, None, self.sweep_id, show_progress="hidden")

        def show_sweep(sweep_id_, key, band, x_field):
            head, groups, curves, setting, keys, fields, x_now = sweep_view.sweep_outputs(sweep_id_, key, band, x_field)
            return (head, groups, curves, setting, gr.Dropdown(choices=keys), gr.Dropdown(choices=fields, value=x_now))

        inputs = [self.sweep_id, self.metric, self.band, self.x_field]
        outputs = [self.header, self.groups, self.curves, self.setting_plot, self.metric, self.x_field]
        # .input for the dropdowns: show_sweep rewrites their choices, which must not trigger it again
        for trigger in (self.sweep_id.change, self.metric.input, self.band.change, self.x_field.input,
                        self.view_version.change):  # fmt: skip
            trigger(show_sweep, inputs, outputs, trigger_mode="always_last", **REDRAW)

        def cancel_sweep_as_user(request: gr.Request, sweep_id) -> str:
            return sweep_view.cancel(sweep_id, user=acting_user(request))

        self.cancel.click(cancel_sweep_as_user, self.sweep_id, self.msg, api_name="cancel_sweep").then(
            show_sweep, inputs, outputs, show_progress="hidden"
        )

        def load_sweep_example(name_: str):
            return sweep_launch.example_yaml(name_) if name_ else gr.skip()

        self.example.input(load_sweep_example, self.example, self.yaml)
        self.check.click(sweep_launch.validate, self.yaml, self.form_msg, api_name="validate_sweep")

        def launch_sweep_as_user(request: gr.Request, text: str):
            message, new_id = sweep_launch.launch(text, owner=acting_user(request))
            return message, new_id if new_id is not None else gr.skip()

        self.launch.click(launch_sweep_as_user, self.yaml, [self.form_msg, self.sweep_id], api_name="launch_sweep")
