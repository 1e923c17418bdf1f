"""Runs tab: the filtered runs table, the selected run's panel (tags, notes, cancel/re-run/resume), GPUs."""

from __future__ import annotations

import gradio as gr

from app.services import run_views
from app.services.session import open_session
from ui import compare as compare_view
from ui import hosts, runs
from ui.tabs.common import CHEAP, REDRAW, TABLE_TICK_SECONDS, acting_user


def table_fingerprint() -> str:
    """Changes whenever a run is added, changes status or makes progress."""
    with open_session() as session:
        return run_views.runs_fingerprint(session=session)


class RunsTab:
    def __init__(self) -> None:
        with gr.Tab("Runs", id="runs") as self.tab:
            with gr.Row():
                self.status = gr.Dropdown(runs.STATUS_CHOICES, value="all", label="status", scale=1)
                self.tag_filter = gr.Textbox(label="tag", placeholder="baseline", scale=1)
                self.field_filter = gr.Textbox(label="spec fields", placeholder="beta=0.5 objective=gkd", scale=2)
                # across every page (the column headers' own sort orders the page shown)
                self.sort = gr.Dropdown(runs.sort_choices(), value="", label="sort by", scale=1, elem_id="runs-sort")
                self.page = gr.Number(0, label="page", precision=0, minimum=0, scale=0)
                self.refresh = gr.Button("Refresh", scale=0)
            self.caption = gr.Markdown()
            # read-only, selection only (runs.CSS: no edit-mode look on click); run, name, status stay
            # in view while the differing spec fields and metrics scroll
            self.table = gr.Dataframe(headers=list(runs.RUN_COLUMNS), interactive=False, elem_id="runs-table",
                                      max_height=520, wrap=False, pinned_columns=3, max_chars=40)  # fmt: skip
            with gr.Row():
                self.selected = gr.Number(label="selected run", precision=0, scale=0, elem_id="selected-run")
                self.details = gr.Markdown("Select a run in the table.", elem_id="selected-run-details")
            with gr.Row():
                self.tags_box = gr.Textbox(label="tags (comma-separated)", scale=1)
                self.notes_box = gr.Textbox(label="notes", lines=2, scale=2)
                self.save = gr.Button("Save tags & notes", scale=0)
            with gr.Row():
                self.open_live = gr.Button("Open live view", variant="primary")
                self.add_compare = gr.Button("Add to comparison")
                self.cancel = gr.Button("Cancel run", variant="stop", elem_id="cancel-run")  # asks: confirm.js
                self.rerun = gr.Button("Re-run")
                self.resume = gr.Button("Resume")
            self.action_msg = gr.Markdown(elem_id="run-action-message")
            hosts.panel()  # each worker host's GPUs and the run holding each (ui/hosts.py)
            self.table_version = gr.State("")
            self.timer = gr.Timer(TABLE_TICK_SECONDS)  # the Sweeps tab's lists tick with it
        self.inputs = [self.status, self.tag_filter, self.field_filter, self.page, self.sort]

    def wire(self, *, tabs: gr.Tabs, live_run: gr.Number, compare_runs: gr.Textbox) -> None:
        table_out = [self.table, self.caption]
        # the selected-run panel follows the table: every redraw of the table re-reads its status lines
        triggers = (self.refresh.click, self.status.change, self.tag_filter.submit, self.field_filter.submit,
                    self.page.submit, self.tab.select, self.sort.change)  # fmt: skip
        for i, trigger in enumerate(triggers):
            # the first one is the API's /runs_table (ui/endpoints.py); the others are the same call
            trigger(runs.runs_table, self.inputs, table_out, api_name="runs_table" if i == 0 else None, **REDRAW).then(
                runs.run_summary, self.selected, self.details, show_progress="hidden"
            )

        def table_tick(current: str):
            latest = table_fingerprint()
            return gr.skip() if latest == current else latest

        self.timer.tick(table_tick, self.table_version, self.table_version, **CHEAP)
        self.table_version.change(runs.runs_table, self.inputs, table_out, **REDRAW).then(
            runs.run_summary, self.selected, self.details, show_progress="hidden"
        )

        def pick_row(evt: gr.SelectData):
            run_id = int(evt.row_value[0]) if evt.row_value else None
            return (run_id, *runs.run_details(run_id))

        self.table.select(pick_row, None, [self.selected, self.details, self.tags_box, self.notes_box],
                          show_progress="hidden")  # fmt: skip

        def save_as_user(request: gr.Request, run_id, tags_text: str, notes: str) -> str:
            return runs.save_tags_notes(run_id, tags_text, notes, user=acting_user(request))

        self.save.click(save_as_user, [self.selected, self.tags_box, self.notes_box], self.action_msg,
                        api_name="save_tags_notes").then(
            runs.runs_table, self.inputs, table_out, show_progress="hidden"
        )  # fmt: skip
        for button, action in ((self.cancel, "cancel"), (self.rerun, "rerun"), (self.resume, "resume")):

            def act_as_user(request: gr.Request, run_id, action_: str = action) -> str:
                return runs.act_on_run(action_, run_id, user=acting_user(request))[0]

            button.click(act_as_user, self.selected, self.action_msg, api_name=f"{action}_run").then(
                runs.runs_table, self.inputs, table_out, show_progress="hidden"
            ).then(runs.run_summary, self.selected, self.details, show_progress="hidden")
        self.open_live.click(lambda run_id: (run_id, gr.Tabs(selected="live")), self.selected, [live_run, tabs])

        def add_to_compare(run_id, current: str):
            ids = [str(i) for i in compare_view.parse_run_ids(current or "")] if current else []
            if run_id and str(int(run_id)) not in ids:
                ids.append(str(int(run_id)))
            return ", ".join(ids), f"Comparison: runs {', '.join(ids)} (open the Compare tab)."

        self.add_compare.click(add_to_compare, [self.selected, compare_runs], [compare_runs, self.action_msg])
