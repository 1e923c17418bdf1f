"""The dashboard's Gradio API: what `gradio_client` lists, by stable names, and nothing else.

Gradio makes an endpoint of every event (a tab's select, a field's input, a timer's tick), named after
its function (`/lambda_3`, `/runs_table_11`) with one positional parameter per input (the form's
Validate had 51). Here every event is private (the page still runs them; clients cannot list or call
them) except PUBLIC: the runs table, the spec checks and launch (from a YAML text, not 51 fields) and
the run and sweep actions. The REST API (/docs) remains the full interface; these call the same services.
"""

# no `from __future__ import annotations`: gr.api reads these hints as types, for the endpoints' schemas
import gradio as gr

from ui.tabs.common import acting_user
from ui.tabs.launch_tab import launch, validate

PUBLIC = ("runs_table", "validate", "launch", "save_tags_notes", "cancel_run", "rerun_run", "resume_run",
          "validate_sweep", "launch_sweep", "cancel_sweep")  # fmt: skip


def validate_spec(spec_yaml: str) -> str:
    """Check a spec (YAML, the fields that differ from the defaults) as Launch would, writing nothing."""
    return validate(spec_yaml=spec_yaml)


def launch_spec(
    spec_yaml: str, name: str = "", tags: str = "", notes: str = "", request: gr.Request | None = None
) -> tuple[str, int | None]:
    """Queue a run of a spec (YAML); (message, the new run's id or None). `tags`: comma-separated."""
    return launch(name, tags, notes, owner=acting_user(request), spec_yaml=spec_yaml)


def add_api_endpoints() -> None:
    """The endpoints that have no button of their own (call inside the Blocks)."""
    gr.api(validate_spec, api_name="validate")
    gr.api(launch_spec, api_name="launch")


def hide_internal_events(demo: gr.Blocks) -> None:
    """Every event outside PUBLIC becomes private, including ones added later (the safe default). Each
    PUBLIC name must be there exactly once: Gradio renames a clash (`validate_1`), which would break clients."""
    named = [fn.api_name for fn in demo.fns.values()]
    missing = [name for name in PUBLIC if named.count(name) != 1]
    if missing:
        raise RuntimeError(f"dashboard endpoints missing or renamed by a clash: {', '.join(missing)}")
    for fn in demo.fns.values():
        if fn.api_name not in PUBLIC:
            fn.api_visibility = "private"
