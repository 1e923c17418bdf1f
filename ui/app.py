"""The dashboard: Gradio Blocks mounted into the FastAPI app at /ui, sharing its auth.

Tabs: Runs (table, filters, tags/notes, cancel/re-run/resume), Launch (form generated from the
spec, presets, YAML), Live (charts and eval heat map of one run), Compare (overlaid runs, spec
diff, final metrics), Sweeps (launch one from YAML, the list, one sweep's groups, scores and curves).
`/ui/?run=5` opens a run, `/ui/?compare=3,7` a comparison, `/ui/?sweep=2` a sweep.

Refresh handlers run on every tick of every open page, so they are cheap fingerprints
(`concurrency_limit=None`, hidden progress); the real queries run only when a fingerprint moved.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlmodel import Session

from app import crud
from app.auth import auth_enabled
from app.db import get_engine
from app.metrics_query import metric_keys
from app.models import ExperimentCreate, Run
from app.services import experiments as experiment_service
from app.services.errors import ServiceError
from app.settings import get_settings
from core_distill.spec import SpecError
from ui import charts, form, heatmap, hosts, live, runs, sweep_launch
from ui import compare as compare_view
from ui import sweeps as sweep_view

LIVE_TICK_SECONDS = 2.0
TABLE_TICK_SECONDS = 5.0
CHEAP = {"show_progress": "hidden", "concurrency_limit": None}  # refresh ticks: never queue behind others
# re-queries after a tick saw a change: several viewers' redraws run side by side (Gradio's default is 1)
REDRAW = {"show_progress": "hidden", "concurrency_limit": 4}

CSS = heatmap.CSS + runs.CSS


# --- handlers (plain functions; tested without a browser) ----------------------------------------
def acting_user(request: gr.Request | None) -> str | None:
    """Who the dashboard acts as: the token's name the page was opened with (auth on), None with auth off."""
    if not auth_enabled():
        return None
    return request.username if request is not None else None


def table_fingerprint() -> str:
    """Changes whenever a run is added, changes status or makes progress."""
    with Session(get_engine()) as session:
        totals = session.execute(select(func.count(Run.id), func.max(Run.id), func.sum(Run.last_step))).one()
        by_status = session.execute(select(Run.status, func.count(Run.id)).group_by(Run.status)).all()
    return f"{tuple(totals)}|{sorted(tuple(r) for r in by_status)}"


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
    with Session(get_engine()) as session:
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


def live_outputs(run_id: int | None, smoothing: float, x_axis: str) -> list[Any]:
    """Header, the charts' container, samples HTML. The container only changes with the run or the
    chart settings: the browser draws it and streams new points into it (ui/static/charts.js)."""
    if not run_id:
        return ["Pick a run in the Runs tab or type its id.", charts.live_html(None), heatmap.samples_html([], None)]
    samples, step = live.latest_samples(int(run_id))
    return [live.run_header(int(run_id)), charts.live_html(int(run_id), smoothing, x_axis),
            heatmap.samples_html(samples, step)]  # fmt: skip


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
    with Session(get_engine()) as session:
        keys = sorted({k for run_id in run_ids for k in metric_keys(session, run_id)})
    return sorted(set(keys) | set(compare_view.DEFAULT_KEYS))


# --- layout --------------------------------------------------------------------------------------
def _spec_components() -> list[gr.components.Component]:
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


def build_dashboard() -> gr.Blocks:
    # Gradio's queue keeps a record of its last 10,000 events for its monitoring page (not shown here);
    # a live page's 2 s tick fills that in hours, so memory grows all that time: keep the last 1,000
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    with gr.Blocks(title="distill dashboard", fill_width=True) as demo:  # wide tables use the width
        gr.Markdown("## distill · distillation experiments")
        with gr.Tabs(selected="runs") as tabs:
            with gr.Tab("Runs", id="runs") as runs_tab:
                with gr.Row():
                    status = gr.Dropdown(runs.STATUS_CHOICES, value="all", label="status", scale=1)
                    tag_filter = gr.Textbox(label="tag", placeholder="baseline", scale=1)
                    field_filter = gr.Textbox(label="spec fields", placeholder="beta=0.5 objective=gkd", scale=2)
                    page = gr.Number(0, label="page", precision=0, minimum=0, scale=0)
                    refresh = gr.Button("Refresh", scale=0)
                caption = gr.Markdown()
                # read-only, selection only (runs.CSS: no edit-mode look on click); run, name, status stay
                # in view while the differing spec fields and metrics scroll
                table = gr.Dataframe(headers=list(runs.RUN_COLUMNS), interactive=False, elem_id="runs-table",
                                     max_height=520, wrap=False, pinned_columns=3, max_chars=40)  # fmt: skip
                with gr.Row():
                    selected = gr.Number(label="selected run", precision=0, scale=0, elem_id="selected-run")
                    details = gr.Markdown("Select a run in the table.", elem_id="selected-run-details")
                with gr.Row():
                    tags_box = gr.Textbox(label="tags (comma-separated)", scale=1)
                    notes_box = gr.Textbox(label="notes", lines=2, scale=2)
                    save = gr.Button("Save tags & notes", scale=0)
                with gr.Row():
                    open_live = gr.Button("Open live view", variant="primary")
                    add_compare = gr.Button("Add to comparison")
                    cancel = gr.Button("Cancel run", variant="stop")
                    rerun = gr.Button("Re-run")
                    resume = gr.Button("Resume")
                action_msg = gr.Markdown(elem_id="run-action-message")
                hosts.panel()  # each worker host's GPUs and the run holding each (ui/hosts.py)
                table_version = gr.State("")
                table_timer = gr.Timer(TABLE_TICK_SECONDS)

            with gr.Tab("Launch", id="launch"):
                with gr.Row():
                    preset = gr.Dropdown(form.preset_choices(), label="preset (examples/)", value=None, scale=2)
                    name = gr.Textbox(label="experiment name", scale=2)
                    tags_new = gr.Textbox(label="tags", placeholder="baseline, toy", scale=2)
                notes_new = gr.Textbox(label="notes", lines=1)
                with gr.Row():
                    with gr.Column(scale=3):
                        spec_inputs = _spec_components()
                    with gr.Column(scale=2):
                        spec_yaml = gr.Code(form.values_to_yaml([c.value for c in spec_inputs]), language="yaml",
                                            label="spec.yaml (only fields that differ from the defaults)",
                                            interactive=True, lines=16, elem_id="spec-yaml")  # fmt: skip
                        spec_status = gr.Markdown(elem_id="spec-status")  # the YAML pane's and the fields' problems
                        apply_yaml = gr.Button("Apply YAML to the form")
                        # which side was edited last ("fields" or "yaml"): set in the browser, so it is
                        # current when Launch is clicked even while the edit's own round trip is on its way
                        spec_source = gr.Textbox("fields", visible=False, elem_id="spec-source")
                        with gr.Row():
                            check = gr.Button("Validate")
                            launch_btn = gr.Button("Launch", variant="primary", elem_id="launch-button")
                        form_msg = gr.Markdown(elem_id="form-message")

            with gr.Tab("Live", id="live") as live_tab:
                with gr.Row():
                    live_run = gr.Number(label="run", precision=0, scale=0, elem_id="live-run")
                    smoothing = gr.Slider(0, 0.99, value=0.0, step=0.01, label="smoothing (EMA)", elem_id="live-smoothing")
                    x_axis = gr.Radio([("step", "step"), ("wall time", "wall_time")], value="step", label="x axis")
                    follow = gr.Checkbox(True, label="follow (header and samples every 2 s; charts stream)")
                header = gr.Markdown(elem_id="live-header")
                live_charts = gr.HTML(charts.live_html(None), elem_id="live-charts", js_on_load=None)
                samples_html = gr.HTML(heatmap.samples_html([], None), elem_id="samples")
                live_version = gr.State("")
                live_timer = gr.Timer(LIVE_TICK_SECONDS)

            with gr.Tab("Compare", id="compare") as compare_tab:
                with gr.Row():
                    compare_runs = gr.Textbox(label="runs (ids)", placeholder="3, 7, 9", elem_id="compare-runs", scale=2)
                    compare_keys = gr.Dropdown(compare_view.DEFAULT_KEYS, value=compare_view.DEFAULT_KEYS,
                                               multiselect=True,
                                               allow_custom_value=True, label="metrics", scale=3)  # fmt: skip
                    compare_smoothing = gr.Slider(0, 0.99, value=0.0, step=0.01, label="smoothing (EMA)", scale=1)
                    compare_x = gr.Radio([("step", "step"), ("wall time", "wall_time")], value="step", label="x axis")
                    compare_btn = gr.Button("Compare", variant="primary", scale=0, elem_id="compare-button")
                compare_link = gr.Markdown(elem_id="compare-link")
                compare_charts = gr.HTML("", elem_id="compare-charts", js_on_load=None)
                gr.Markdown("#### Spec fields that differ")
                diff_table = gr.Dataframe(interactive=False, elem_id="spec-diff")
                gr.Markdown("#### Final metrics")
                finals_table = gr.Dataframe(interactive=False, elem_id="final-metrics")

            with gr.Tab("Sweeps", id="sweeps") as sweeps_tab:
                with gr.Accordion("Launch a sweep", open=False):
                    with gr.Row():
                        sweep_example = gr.Dropdown([*sweep_launch.examples()], value=None, scale=1,
                                                    label="example (examples/sweeps/)")  # fmt: skip
                    sweep_yaml = gr.Code(sweep_launch.TEMPLATE, language="yaml", interactive=True, lines=12,
                                         label="sweep.yaml (the POST /api/sweeps body, as `distill sweep submit` reads it)",
                                         elem_id="sweep-yaml")  # fmt: skip
                    with gr.Row():
                        sweep_check = gr.Button("Validate sweep")
                        sweep_launch_btn = gr.Button("Launch sweep", variant="primary", elem_id="sweep-launch")
                    sweep_form_msg = gr.Markdown(elem_id="sweep-form-message")
                with gr.Row():
                    sweep_owner = gr.Textbox(label="owner", placeholder="empty: everyone's", scale=1)
                    sweep_page = gr.Number(0, label="page", precision=0, minimum=0, scale=0)
                    sweep_refresh = gr.Button("Refresh", scale=0)
                sweeps_caption = gr.Markdown()
                sweeps_list = gr.Dataframe(headers=list(sweep_view.SWEEP_COLUMNS), interactive=False,
                                           elem_id="sweeps-table", max_height=260, wrap=False)  # fmt: skip
                with gr.Row():
                    sweep_id = gr.Number(label="sweep", precision=0, scale=0, elem_id="sweep-id")
                    sweep_metric = gr.Dropdown([sweep_view.DEFAULT_METRIC], value=sweep_view.DEFAULT_METRIC,
                                               allow_custom_value=True, label="metric", scale=2,
                                               elem_id="sweep-metric")  # fmt: skip
                    sweep_band = gr.Radio([("95% CI of the mean", "ci"), ("± 1 sd", "sd")], value="ci",
                                          label="bands and error bars over seeds", scale=2)  # fmt: skip
                    sweep_x = gr.Dropdown([], value=None, label="setting plot: x axis", scale=1, elem_id="sweep-x")
                    sweep_cancel = gr.Button("Cancel sweep", variant="stop", scale=0)
                sweep_header = gr.Markdown(elem_id="sweep-header")
                sweep_msg = gr.Markdown(elem_id="sweep-action-message")
                sweep_groups = gr.Dataframe(interactive=False, elem_id="sweep-groups", wrap=True)
                with gr.Row():
                    sweep_curves = gr.Plot(show_label=False, elem_id="sweep-curves")
                    sweep_setting_plot = gr.Plot(show_label=False, elem_id="sweep-setting-plot")
                sweeps_version = gr.State("")
                sweep_version = gr.State("")

        # --- runs tab events
        table_inputs = [status, tag_filter, field_filter, page]
        # the selected-run panel follows the table: every redraw of the table re-reads its status lines
        for trigger in (refresh.click, status.change, tag_filter.submit, field_filter.submit, page.submit,
                        runs_tab.select):  # fmt: skip
            trigger(runs.runs_table, table_inputs, [table, caption], **REDRAW).then(
                runs.run_summary, selected, details, show_progress="hidden"
            )

        def table_tick(current: str):
            latest = table_fingerprint()
            return gr.skip() if latest == current else latest

        table_timer.tick(table_tick, table_version, table_version, **CHEAP)
        table_version.change(runs.runs_table, table_inputs, [table, caption], **REDRAW).then(
            runs.run_summary, selected, details, show_progress="hidden"
        )

        def pick_row(evt: gr.SelectData):
            run_id = int(evt.row_value[0]) if evt.row_value else None
            return (run_id, *runs.run_details(run_id))

        table.select(pick_row, None, [selected, details, tags_box, notes_box], show_progress="hidden")

        def save_as_user(request: gr.Request, run_id, tags_text: str, notes: str) -> str:
            return runs.save_tags_notes(run_id, tags_text, notes, user=acting_user(request))

        save.click(save_as_user, [selected, tags_box, notes_box], action_msg, api_name="save_tags_notes").then(
            runs.runs_table, table_inputs, [table, caption], show_progress="hidden"
        )
        for button, action in ((cancel, "cancel"), (rerun, "rerun"), (resume, "resume")):

            def act_as_user(request: gr.Request, run_id, action_: str = action) -> str:
                return runs.act_on_run(action_, run_id, user=acting_user(request))[0]

            button.click(act_as_user, selected, action_msg, api_name=f"{action}_run").then(
                runs.runs_table, table_inputs, [table, caption], show_progress="hidden"
            ).then(runs.run_summary, selected, details, show_progress="hidden")
        open_live.click(lambda run_id: (run_id, gr.Tabs(selected="live")), selected, [live_run, tabs])

        def add_to_compare(run_id, current: str):
            ids = [str(i) for i in compare_view.parse_run_ids(current or "")] if current else []
            if run_id and str(int(run_id)) not in ids:
                ids.append(str(int(run_id)))
            return ", ".join(ids), f"Comparison: runs {', '.join(ids)} (open the Compare tab)."

        add_compare.click(add_to_compare, [selected, compare_runs], [compare_runs, action_msg])

        # --- launch tab events
        def load_preset(name_: str):
            if not name_:
                return [gr.skip()] * (len(spec_inputs) + 4)
            text = form.preset_yaml(name_)
            values, problems = form.yaml_to_values(text)
            if values is None:
                return [*[gr.skip()] * len(spec_inputs), text, problems, "", gr.skip()]
            title = form.preset_title(text)
            return [*values, text, f"Loaded preset *{title}* (examples/{name_}.yaml).", "", title]

        preset.input(load_preset, preset, [*spec_inputs, spec_yaml, form_msg, spec_status, name])

        # One source of truth: the fields rewrite the YAML pane on every change; the YAML pane fills
        # the fields when applied (button or leaving it). Launch and Validate check the side edited
        # last (spec_source), so they never launch a value that the screen does not show.
        spec_yaml.input(None, None, spec_source, js="() => 'yaml'")
        gr.on([c.input for c in spec_inputs], None, None, spec_source, js="() => 'fields'")

        def apply(text: str):
            values, problems = form.yaml_to_values(text)
            if values is None:
                return [*[gr.skip()] * len(spec_inputs), problems]
            return [*values, "YAML applied to the form."]

        apply_yaml.click(apply, spec_yaml, [*spec_inputs, spec_status])
        spec_yaml.blur(apply, spec_yaml, [*spec_inputs, spec_status], show_progress="hidden")

        def form_changed(*values):
            spec, problems = form.check_values(values, preflight=False)
            return form.values_to_yaml(values), problems

        gr.on([c.input for c in spec_inputs], form_changed, spec_inputs, [spec_yaml, spec_status],
              show_progress="hidden", trigger_mode="always_last")  # fmt: skip

        def shown_yaml(source: str, text: str) -> str | None:
            return text if source == "yaml" else None

        check.click(lambda source, text, *values: validate(*values, spec_yaml=shown_yaml(source, text)),
                    [spec_source, spec_yaml, *spec_inputs], form_msg)  # fmt: skip

        # Gradio injects positional requests only
        def launch_and_open(request: gr.Request, name_, tags_, notes_, source, text, *values):
            owner = request.username if request is not None and get_settings().auth == "on" else None
            message, run_id = launch(name_, tags_, notes_, *values, owner=owner, spec_yaml=shown_yaml(source, text))
            if run_id is None:
                return message, gr.skip(), gr.skip()
            return message, run_id, gr.Tabs(selected="live")

        launch_btn.click(launch_and_open, [name, tags_new, notes_new, spec_source, spec_yaml, *spec_inputs],
                         [form_msg, live_run, tabs])  # fmt: skip

        # --- live tab events
        live_inputs = [live_run, smoothing, x_axis]
        live_all = [header, live_charts, samples_html]

        def live_tick(run_id, current: str, following: bool):
            if not following:
                return gr.skip()
            latest = live.probe(run_id)
            return gr.skip() if latest == current else latest

        live_timer.tick(live_tick, [live_run, live_version, follow], live_version, **CHEAP)
        for trigger in (live_version.change, live_run.change, smoothing.release, x_axis.change, live_tab.select):
            trigger(live_outputs, live_inputs, live_all, trigger_mode="always_last", **REDRAW)
        follow.change(lambda on: gr.Timer(active=on), follow, live_timer)

        # --- compare tab events
        compare_all = [compare_charts, diff_table, finals_table, compare_link]
        compare_inputs = [compare_runs, compare_keys, compare_smoothing, compare_x]
        for trigger in (compare_btn.click, compare_runs.submit, compare_smoothing.release, compare_x.change):
            trigger(compare_outputs, compare_inputs, compare_all, show_progress="hidden")
        compare_tab.select(lambda text: gr.Dropdown(choices=known_metric_keys(text)), compare_runs, compare_keys)

        # --- sweeps tab events
        sweeps_inputs = [sweep_owner, sweep_page]
        for trigger in (sweep_refresh.click, sweep_owner.submit, sweep_page.submit, sweeps_tab.select,
                        sweeps_version.change):  # fmt: skip
            trigger(sweep_view.sweeps_table, sweeps_inputs, [sweeps_list, sweeps_caption], **REDRAW)

        def sweeps_tick(current_list: str, current_view: str, shown: int | None):
            latest_list, latest_view = sweep_view.list_fingerprint(), sweep_view.view_fingerprint(shown)
            return (gr.skip() if latest_list == current_list else latest_list,
                    gr.skip() if latest_view == current_view else latest_view)  # fmt: skip

        table_timer.tick(sweeps_tick, [sweeps_version, sweep_version, sweep_id], [sweeps_version, sweep_version],
                         **CHEAP)  # fmt: skip

        def pick_sweep(evt: gr.SelectData):
            return int(evt.row_value[0]) if evt.row_value else gr.skip()

        sweeps_list.select(pick_sweep, None, sweep_id, show_progress="hidden")

        def show_sweep(sweep_id_, key, band, x_field):
            head, groups, curves, setting, keys, fields, x_now = sweep_view.sweep_outputs(sweep_id_, key, band, x_field)
            return (head, groups, curves, setting, gr.Dropdown(choices=keys), gr.Dropdown(choices=fields, value=x_now))

        sweep_inputs = [sweep_id, sweep_metric, sweep_band, sweep_x]
        sweep_all = [sweep_header, sweep_groups, sweep_curves, sweep_setting_plot, sweep_metric, sweep_x]
        # .input for the dropdowns: show_sweep rewrites their choices, which must not trigger it again
        for trigger in (sweep_id.change, sweep_metric.input, sweep_band.change, sweep_x.input, sweep_version.change):
            trigger(show_sweep, sweep_inputs, sweep_all, trigger_mode="always_last", **REDRAW)

        def cancel_sweep_as_user(request: gr.Request, sweep_id_) -> str:
            return sweep_view.cancel(sweep_id_, user=acting_user(request))

        sweep_cancel.click(cancel_sweep_as_user, sweep_id, sweep_msg, api_name="cancel_sweep").then(
            show_sweep, sweep_inputs, sweep_all, show_progress="hidden"
        )

        def load_sweep_example(name_: str):
            return sweep_launch.example_yaml(name_) if name_ else gr.skip()

        sweep_example.input(load_sweep_example, sweep_example, sweep_yaml)
        sweep_check.click(sweep_launch.validate, sweep_yaml, sweep_form_msg)

        def launch_sweep_as_user(request: gr.Request, text: str):
            message, new_id = sweep_launch.launch(text, owner=acting_user(request))
            return message, new_id if new_id is not None else gr.skip()

        sweep_launch_btn.click(launch_sweep_as_user, sweep_yaml, [sweep_form_msg, sweep_id], api_name="launch_sweep")

        # --- deep links: /ui/?run=5, /ui/?compare=3,7 and /ui/?sweep=2
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

        demo.load(on_load, None, [compare_runs, live_run, sweep_id, tabs, *compare_all])
        demo.load(runs.runs_table, table_inputs, [table, caption], **REDRAW)
    return demo


def mount_dashboard(app: FastAPI) -> FastAPI:
    """Mount the dashboard at /ui (call after the API routes: a mount shadows what follows)."""
    from app.auth import auth_dependency  # the API's tokens (header or the login cookie); "anonymous" when off

    charts.mount_assets(app)  # before the mount: /dashboard-assets/... is not under /ui
    return gr.mount_gradio_app(
        app, build_dashboard(), path="/ui", auth_dependency=auth_dependency, css=CSS, footer_links=[],
        ssr_mode=False, head=charts.HEAD,
    )  # fmt: skip
