"""The dashboard's GPUs panel: each worker host, its GPUs and the run holding each (booked or running).

Read from the same service as `GET /api/hosts` (app.services.booking.list_hosts); `panel()` is
called inside the Runs tab and refreshes itself every few seconds.
"""

from __future__ import annotations

import gradio as gr

from app.services import booking
from app.services.session import open_session

REFRESH_SECONDS = 5.0


def hosts_markdown() -> str:
    """A Markdown table: host, state, and one cell per GPU (`0: run 12`, `1: free`)."""
    with open_session() as session:
        hosts = booking.list_hosts(session=session)
    if not hosts:
        return "No worker host has announced itself yet: start one with `distill worker --gpus 0,1` (or `distill up`)."
    lines = ["| host | state | GPUs (holder) |", "|---|---|---|"]
    for host in hosts:
        state = "live" if host.live else ("stopped" if host.stopped_at else "silent")
        if host.reserved_for is not None:
            state += f", draining for run {host.reserved_for}"
        cells = ", ".join(f"`{g.label}`: {f'run {g.run_id}' if g.run_id is not None else 'free'}" for g in host.gpus)
        lines.append(f"| {host.name} | {state} | {cells or '—'} |")
    return "\n".join(lines)


def panel() -> gr.Markdown:
    """The panel (an accordion with a self-refreshing table); call inside a gr.Blocks context."""
    with gr.Accordion("GPUs", open=False, elem_id="gpus-panel"):
        view = gr.Markdown(hosts_markdown, elem_id="gpus-table")
        timer = gr.Timer(REFRESH_SECONDS)
        timer.tick(hosts_markdown, None, view, show_progress="hidden", queue=False)
    return view
