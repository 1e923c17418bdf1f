"""What the tabs share: event settings for refresh ticks and redraws, and who the page acts as."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.auth import auth_enabled

LIVE_TICK_SECONDS = 2.0
TABLE_TICK_SECONDS = 5.0
# refresh ticks: never queue behind others
CHEAP: dict[str, Any] = {"show_progress": "hidden", "concurrency_limit": None}
# re-queries after a tick saw a change: several viewers' redraws run side by side (Gradio's default is 1)
REDRAW: dict[str, Any] = {"show_progress": "hidden", "concurrency_limit": 4}


def acting_user(request: gr.Request | None) -> str | None:
    """Who the dashboard acts as: the token's name the page was opened with (auth on), None with auth off."""
    if not auth_enabled():
        return None
    return request.username if request is not None else None
