"""Live tab: one run's header, charts (streamed into the browser by ui/static/charts.js) and eval heat map."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui import charts, heatmap, live
from ui.tabs.common import CHEAP, LIVE_TICK_SECONDS, REDRAW


def live_outputs(run_id: int | None, smoothing: float, x_axis: str) -> list[Any]:
    """Header, the charts' container, samples HTML. The container only changes with the run or the
    chart settings: the browser draws it and streams new points into it (ui/static/charts.js)."""
    if not run_id:
        return ["Pick a run in the Runs tab or type its id.", charts.live_html(None), heatmap.samples_html([], None)]
    samples, step = live.latest_samples(int(run_id))
    return [live.run_header(int(run_id)), charts.live_html(int(run_id), smoothing, x_axis),
            heatmap.samples_html(samples, step)]  # fmt: skip


class LiveTab:
    def __init__(self) -> None:
        with gr.Tab("Live", id="live") as self.tab:
            with gr.Row():
                self.run = gr.Number(label="run", precision=0, scale=0, elem_id="live-run")
                self.smoothing = gr.Slider(0, 0.99, value=0.0, step=0.01, label="smoothing (EMA)",
                                           elem_id="live-smoothing")  # fmt: skip
                self.x_axis = gr.Radio([("step", "step"), ("wall time", "wall_time")], value="step", label="x axis")
                self.follow = gr.Checkbox(True, label="follow (header and samples every 2 s; charts stream)")
            self.header = gr.Markdown(elem_id="live-header")
            self.charts = gr.HTML(charts.live_html(None), elem_id="live-charts", js_on_load=None)
            self.samples = gr.HTML(heatmap.samples_html([], None), elem_id="samples")
            self.version = gr.State("")
            self.timer = gr.Timer(LIVE_TICK_SECONDS)

    def wire(self) -> None:
        inputs = [self.run, self.smoothing, self.x_axis]
        outputs = [self.header, self.charts, self.samples]

        def live_tick(run_id, current: str, following: bool):
            if not following:
                return gr.skip()
            latest = live.probe(run_id)
            return gr.skip() if latest == current else latest

        self.timer.tick(live_tick, [self.run, self.version, self.follow], self.version, **CHEAP)
        for trigger in (self.version.change, self.run.change, self.smoothing.release, self.x_axis.change,
                        self.tab.select):  # fmt: skip
            trigger(live_outputs, inputs, outputs, trigger_mode="always_last", **REDRAW)
        self.follow.change(lambda on: gr.Timer(active=on), self.follow, self.timer)
