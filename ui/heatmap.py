"""Eval completions with the per-token student/teacher divergence drawn as a heat map over the tokens.

Each token is a <span> whose background goes from clear to red on a fixed scale in nats (the run's
distillation divergence per token, its `kd` term): logarithmic from 0.001 to 10 nats, the same at every
step and for every run, so a well-distilled student's tokens stay pale instead of each view being
stretched to its own largest value. Hovering shows the token and its value. Every piece of model or
dataset text is HTML-escaped: a completion can contain anything.
"""

from __future__ import annotations

import html
import math
from typing import Any

SCALE_MIN_NATS = 1e-3  # below: no colour (the student agrees with the teacher)
SCALE_MAX_NATS = 10.0  # at and above: the strongest colour
LEGEND_STOPS = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
_DECADES = math.log10(SCALE_MAX_NATS / SCALE_MIN_NATS)


def share(value: float) -> float:
    """Where `value` nats sits on the fixed scale: 0 below SCALE_MIN_NATS, 1 at SCALE_MAX_NATS and above."""
    if not value > SCALE_MIN_NATS:  # also NaN
        return 0.0
    return min(math.log10(value / SCALE_MIN_NATS) / _DECADES, 1.0)


def _colour(value: float) -> str:
    # clear -> red; alpha keeps text readable on both themes
    part = share(value)
    return f"rgba(220, 38, 38, {0.08 + 0.85 * part:.2f})" if part > 0 else "transparent"


def _show(token: str) -> str:
    # whitespace made visible so a divergent space or newline is still a coloured box
    return html.escape(token.replace("\n", "⏎").replace(" ", "·"))


def token_spans(tokens: list[str], divergences: list[float]) -> str:
    spans = []
    for i, token in enumerate(tokens):
        div = divergences[i] if i < len(divergences) else None
        if div is None:
            spans.append(f'<span class="tok" title="{html.escape(repr(token))}: no score">{_show(token)}</span>')
            continue
        spans.append(
            f'<span class="tok" style="background:{_colour(div)}" '
            f'title="{html.escape(repr(token))}: {div:.4g} nats" data-div="{div:.5f}">{_show(token)}</span>'
        )
    return "".join(spans)


def _stop_label(value: float) -> str:
    if value == 0:
        return f"&lt; {SCALE_MIN_NATS:g}"
    return f"≥ {value:g}" if value >= SCALE_MAX_NATS else f"{value:g}"


def legend() -> str:
    """The fixed scale's stops with their colours and the unit."""
    cells = "".join(
        f'<span class="tok" style="background:{_colour(v)}" data-nats="{v:g}">{_stop_label(v)}</span>'
        for v in LEGEND_STOPS
    )
    return (
        '<div class="legend">per-token divergence to the teacher, in nats (fixed log scale, the same for every '
        f"step and run): {cells} nats</div>"
    )


def samples_html(samples: list[dict[str, Any]], step: int | None) -> str:
    """The samples of one evaluation as HTML: prompt, coloured completion, reference and verdict."""
    if not samples:
        return '<div class="samples">No evaluation samples yet.</div>'
    parts = [f'<div class="samples"><h4>Eval samples at step {step}</h4>', legend()]
    for sample in samples:
        verdict = {True: "✓ correct", False: "✗ wrong", None: ""}[sample.get("correct")]
        tokens = sample.get("tokens") or [sample.get("completion", "")]
        parts.append(
            '<div class="sample">'
            f'<div class="prompt">{html.escape(str(sample.get("prompt", "")))}</div>'
            f'<div class="completion">{token_spans(tokens, sample.get("token_div") or [])}</div>'
            f'<div class="reference">reference: {html.escape(str(sample.get("reference") or "—"))} '
            f"<b>{verdict}</b></div></div>"
        )
    parts.append("</div>")
    return "".join(parts)


CSS = """
.samples .sample {border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 6px; margin: 6px 0;}
.samples .prompt {color: var(--body-text-color-subdued); white-space: pre-wrap; font-family: monospace;}
.samples .completion, .samples .legend {font-family: monospace; margin: 4px 0;}
.samples .tok {padding: 1px 0; border-radius: 2px;}
.samples .legend .tok {padding: 1px 6px; margin-right: 2px; border: 1px solid var(--border-color-primary);}
.samples .reference {font-size: 0.9em; color: var(--body-text-color-subdued);}
"""
