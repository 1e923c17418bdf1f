"""The dashboard: Gradio Blocks mounted into the FastAPI app at /ui, sharing its auth.

Tabs (one module each under ui/tabs/): Runs (table, filters, tags/notes, cancel/re-run/resume),
Launch (form generated from the spec, presets, YAML), Live (charts and eval heat map of one run),
Compare (overlaid runs, spec diff, final metrics), Sweeps (launch one from YAML, the list, one
sweep's groups, scores and curves). `/ui/?run=5` opens a run, `/ui/?compare=3,7` a comparison,
`/ui/?sweep=2` a sweep.

Refresh handlers run on every tick of every open page, so they are cheap fingerprints
(`concurrency_limit=None`, hidden progress); the real queries run only when a fingerprint moved.
"""

from __future__ import annotations

import os

import gradio as gr
from fastapi import FastAPI

from ui import charts, endpoints, form, heatmap, runs
from ui import compare as compare_view
from ui.tabs import launch_tab
from ui.tabs.common import CHEAP, LIVE_TICK_SECONDS, REDRAW, TABLE_TICK_SECONDS, acting_user
from ui.tabs.compare_tab import CompareTab, compare_outputs, known_metric_keys
from ui.tabs.launch_tab import LaunchTab, launch, validate
from ui.tabs.live_tab import LiveTab, live_outputs
from ui.tabs.runs_tab import RunsTab, table_fingerprint
from ui.tabs.sweeps_tab import SweepsTab

__all__ = ["CHEAP", "LIVE_TICK_SECONDS", "REDRAW", "TABLE_TICK_SECONDS", "acting_user", "build_dashboard",
           "compare_outputs", "known_metric_keys", "launch", "live_outputs", "mount_dashboard", "table_fingerprint",
           "validate"]  # fmt: skip

CSS = heatmap.CSS + runs.CSS + launch_tab.CSS + form.CSS


def build_dashboard() -> gr.Blocks:
    # Gradio's queue keeps a record of its last 10,000 events for its monitoring page (not shown here);
    # a live page's 2 s tick fills that in hours, so memory grows all that time: keep the last 1,000
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    with gr.Blocks(title="distill dashboard", fill_width=True) as demo:  # wide tables use the width
        gr.Markdown("## distill · distillation experiments")
        with gr.Tabs(selected="runs") as tabs:
            runs_tab, launch_tab, live_tab = RunsTab(), LaunchTab(), LiveTab()
            compare_tab, sweeps_tab = CompareTab(), SweepsTab()
        runs_tab.wire(tabs=tabs, live_run=live_tab.run, compare_runs=compare_tab.runs)
        launch_tab.wire(tabs=tabs, live_run=live_tab.run)
        live_tab.wire()
        compare_tab.wire()
        sweeps_tab.wire(timer=runs_tab.timer)

        # --- deep links: /ui/?run=5, /ui/?compare=3,7 and /ui/?sweep=2
        compare_all = compare_tab.outputs

        def on_load(request: gr.Request):
            params = dict(request.query_params) if request else {}
            unchanged = [gr.skip()] * len(compare_all)
            if params.get("compare"):  # one round trip: the comparison is computed in the load event itself
                shown = compare_outputs(params["compare"], compare_view.DEFAULT_KEYS, 0.0, "step")
                return [params["compare"], gr.skip(), gr.skip(), gr.Tabs(selected="compare"), *shown]
            if params.get("run", "").isdigit():
                return [gr.skip(), int(params["run"]), gr.skip(), gr.Tabs(selected="live"), *unchanged]
            if params.get("sweep", "").isdigit():  # the id's change event draws the sweep
                return [gr.skip(), gr.skip(), int(params["sweep"]), gr.Tabs(selected="sweeps"), *unchanged]
            return [gr.skip(), gr.skip(), gr.skip(), gr.skip(), *unchanged]

        demo.load(on_load, None, [compare_tab.runs, live_tab.run, sweeps_tab.sweep_id, tabs, *compare_all])
        demo.load(runs.runs_table, runs_tab.inputs, [runs_tab.table, runs_tab.caption], **REDRAW)
        endpoints.add_api_endpoints()
    endpoints.hide_internal_events(demo)
    return demo


def mount_dashboard(app: FastAPI) -> FastAPI:
    """Mount the dashboard at /ui (call after the API routes: a mount shadows what follows)."""
    from app.auth import auth_dependency  # the API's tokens (header or the login cookie); "anonymous" when off

    charts.mount_assets(app)  # before the mount: /dashboard-assets/... is not under /ui
    return gr.mount_gradio_app(
        app, build_dashboard(), path="/ui", auth_dependency=auth_dependency, css=CSS, footer_links=[],
        ssr_mode=False, head=charts.HEAD + launch_tab.head(),
    )  # fmt: skip
