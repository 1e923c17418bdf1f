"""Compare tab: overlaid runs' charts, the spec fields that differ, final metrics, a shareable link."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.services import run_views
from app.services.session import open_session
from ui import compare as compare_view


def compare_outputs(run_text: str, keys: list[str], smoothing: float, x_axis: str) -> list[Any]:
    """Charts' container (one chart per metric), spec diff, finals, link markdown; errors go in the link slot."""
    try:
        shown = compare_view.compare(run_text, keys or compare_view.DEFAULT_KEYS, smoothing, x_axis)
    except compare_view.CompareError as exc:
        return ["", None, None, f"**Cannot compare:** {exc}"]
    return list(shown)


def known_metric_keys(run_text: str) -> list[str]:
    try:
        run_ids = compare_view.parse_run_ids(run_text)
    except compare_view.CompareError:
        return compare_view.DEFAULT_KEYS
    with open_session() as session:
        keys = run_views.known_keys(session=session, run_ids=run_ids)
    return sorted(set(keys) | set(compare_view.DEFAULT_KEYS))


class CompareTab:
    def __init__(self) -> None:
        with gr.Tab("Compare", id="compare") as self.tab:
            with gr.Row():
                self.runs = gr.Textbox(label="runs (ids)", placeholder="3, 7, 9", elem_id="compare-runs", scale=2)
                self.keys = gr.Dropdown(compare_view.DEFAULT_KEYS, value=compare_view.DEFAULT_KEYS, multiselect=True,
                                        allow_custom_value=True, label="metrics", scale=3)  # fmt: skip
                self.smoothing = gr.Slider(0, 0.99, value=0.0, step=0.01, label="smoothing (EMA)", scale=1)
                self.x_axis = gr.Radio([("step", "step"), ("wall time", "wall_time")], value="step", label="x axis")
                self.button = gr.Button("Compare", variant="primary", scale=0, elem_id="compare-button")
            self.link = gr.Markdown(elem_id="compare-link")
            self.charts = gr.HTML("", elem_id="compare-charts", js_on_load=None)
            gr.Markdown("#### Spec fields that differ")
            self.diff_table = gr.Dataframe(interactive=False, elem_id="spec-diff")
            gr.Markdown("#### Final metrics")
            self.finals_table = gr.Dataframe(interactive=False, elem_id="final-metrics")
        self.outputs = [self.charts, self.diff_table, self.finals_table, self.link]  # compare_outputs' order

    def wire(self) -> None:
        inputs = [self.runs, self.keys, self.smoothing, self.x_axis]
        for trigger in (self.button.click, self.runs.submit, self.smoothing.release, self.x_axis.change):
            trigger(compare_outputs, inputs, self.outputs, show_progress="hidden")
        self.tab.select(lambda text: gr.Dropdown(choices=known_metric_keys(text)), self.runs, self.keys)
