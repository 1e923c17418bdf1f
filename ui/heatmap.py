"""Eval completions with the per-token student/teacher divergence drawn as a heat map over the tokens.

Each token is a <span> whose background goes from white (no divergence) to red (the largest
divergence in the view); hovering shows the token and its value. Every piece of model or
dataset text is HTML-escaped: a completion can contain anything.
"""

from __future__ import annotations

import html
from typing import Any

LEGEND_STEPS = 6


def _colour(value: float, scale: float) -> str:
    # white -> red; alpha keeps text readable on both themes
    share = 0.0 if scale <= 0 else min(max(value / scale, 0.0), 1.0)
    return f"rgba(220, 38, 38, {0.08 + 0.85 * share:.2f})" if share > 0 else "transparent"


def _show(token: str) -> str:
    # whitespace made visible so a divergent space or newline is still a coloured box
    return html.escape(token.replace("\n", "⏎").replace(" ", "·"))


def token_spans(tokens: list[str], divergences: list[float], scale: float) -> str:
    spans = []
    for i, token in enumerate(tokens):
        div = divergences[i] if i < len(divergences) else None
        if div is None:
            spans.append(f'<span class="tok" title="{html.escape(repr(token))}: no score">{_show(token)}</span>')
            continue
        spans.append(
            f'<span class="tok" style="background:{_colour(div, scale)}" '
            f'title="{html.escape(repr(token))}: {div:.4f}" data-div="{div:.5f}">{_show(token)}</span>'
        )
    return "".join(spans)


def legend(scale: float) -> str:
    cells = "".join(
        f'<span class="tok" style="background:{_colour(scale * i / (LEGEND_STEPS - 1), scale)}">'
        f"{scale * i / (LEGEND_STEPS - 1):.3g}</span>"  # significant digits: tiny divergences stay readable
        for i in range(LEGEND_STEPS)
    )
    return f'<div class="legend">per-token divergence (student vs teacher): {cells}</div>'


def samples_html(samples: list[dict[str, Any]], step: int | None) -> str:
    """The samples of one evaluation as HTML: prompt, coloured completion, reference and verdict."""
    if not samples:
        return '<div class="samples">No evaluation samples yet.</div>'
    scale = max((max(s.get("token_div") or [0.0]) for s in samples), default=0.0)
    parts = [f'<div class="samples"><h4>Eval samples at step {step}</h4>', legend(scale)]
    for sample in samples:
        verdict = {True: "✓ correct", False: "✗ wrong", None: ""}[sample.get("correct")]
        tokens = sample.get("tokens") or [sample.get("completion", "")]
        parts.append(
            '<div class="sample">'
            f'<div class="prompt">{html.escape(str(sample.get("prompt", "")))}</div>'
            f'<div class="completion">{token_spans(tokens, sample.get("token_div") or [], scale)}</div>'
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
