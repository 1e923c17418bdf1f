"""The Sweep view's two figures (Plotly, drawn by Gradio's Plot component): every group's mean curve over
seeds with its band, and setting against score with error bars. Built from `ui.sweep_stats`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from app.models import SweepGroupView
from core_distill import metric_keys
from ui.sweep_stats import Band, Chosen, Curve, half_width, scale_of, unit_of

# Plotly's default colour cycle, as RGB so a band can take the line's colour at low opacity
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))  # fmt: skip
BAND_NAMES = {"ci": "95 % CI of the mean over seeds", "sd": "± 1 sd over seeds"}
# the legend under the plot: group labels are long, and the plot keeps the width
LAYOUT = {"height": 460, "margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "template": "plotly_white",
          "legend": {"font": {"size": 11}, "orientation": "h", "y": -0.2, "yanchor": "top"}}  # fmt: skip


def _rgb(i: int, alpha: float = 1.0) -> str:
    r, g, b = PALETTE[i % len(PALETTE)]
    return f"rgba({r}, {g}, {b}, {alpha})"


def _empty(title: str, message: str) -> go.Figure:
    figure = go.Figure(layout={**LAYOUT, "title": title})
    figure.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return figure


def curves_figure(curves: dict[str, Curve], key: str, band: Band, chosen: str | None) -> go.Figure:
    """One line per group (mean over its seeds) over the step, with its band where it has 2 or more runs;
    the chosen group's line is thicker and its name starts with ★."""
    family = metric_keys.family_of(key)
    title = f"{key}: mean over seeds, band {BAND_NAMES[band].removesuffix(' over seeds')}"
    if not any(c.steps for c in curves.values()):
        return _empty(title, f"No {key} points yet.")
    scale = scale_of(key)
    figure = go.Figure(layout={**LAYOUT, "title": {"text": title, "font": {"size": 14}}})
    for i, (label, curve) in enumerate(curves.items()):
        if not curve.steps:
            continue
        name = ("★ " if label == chosen else "") + label
        banded = [j for j, low in enumerate(curve.low) if low is not None]
        if banded:  # a closed polygon: the upper edge left to right, the lower edge back
            xs = [curve.steps[j] for j in banded]
            ys = [curve.high[j] * scale for j in banded] + [curve.low[j] * scale for j in reversed(banded)]
            figure.add_trace(go.Scatter(x=xs + xs[::-1], y=ys, mode="lines", fill="toself", fillcolor=_rgb(i, 0.15),
                                        line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=label,
                                        name=f"{name} band"))  # fmt: skip
        figure.add_trace(go.Scatter(
            x=curve.steps, y=[m * scale for m in curve.mean], mode="lines+markers" if metric_keys.is_sparse(key) else "lines",
            name=name, legendgroup=label, line={"color": _rgb(i), "width": 4 if label == chosen else 2},
            customdata=curve.n, hovertemplate="step %{x}: %{y:.4g} (mean of %{customdata} runs)<extra>%{fullData.name}</extra>",
        ))  # fmt: skip
    figure.update_xaxes(title_text="step")
    figure.update_yaxes(title_text=family.unit)
    return figure


def numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def default_x_field(groups: Sequence[SweepGroupView]) -> str | None:
    """The field to put on the x axis: the first swept field with numeric values that vary, else the first field."""
    fields = setting_fields(groups)
    for field in fields:
        values = [g.setting.get(field) for g in groups]
        if numeric(values) and len({json.dumps(v) for v in values}) > 1:
            return field
    return fields[0] if fields else None


def setting_fields(groups: Sequence[SweepGroupView]) -> list[str]:
    """Every field some group sets, in first-seen order."""
    return list(dict.fromkeys(field for g in groups for field in g.setting))


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "all groups"


def setting_figure(
    groups: Sequence[SweepGroupView], base: dict[str, Any], key: str, x_field: str | None, band: Band,
    chosen: Chosen | None,
) -> go.Figure:  # fmt: skip
    """The score (mean over seeds, error bars = the band) against `x_field`'s value, one line per value of
    the other swept fields; a field a group does not set takes the base spec's value. The chosen setting is
    a star. Groups without a score yet are left out."""
    title = f"Setting against final {key}, error bars {BAND_NAMES[band].removesuffix(' over seeds')}"
    scored = [g for g in groups if key in g.metrics]
    if x_field is None or not scored:
        return _empty(title, "No scores yet." if x_field else "One setting only: nothing to plot against.")
    fields = setting_fields(groups)
    scale = scale_of(key)
    lines: dict[str, list[tuple[Any, SweepGroupView]]] = {}
    for group in scored:
        values = {f: group.setting.get(f, base.get(f)) for f in fields}
        others = {f: v for f, v in values.items() if f != x_field}
        lines.setdefault(_label(others), []).append((values.get(x_field), group))
    xs_all = [x for line in lines.values() for x, _ in line]
    is_numeric = numeric(xs_all)
    figure = go.Figure(layout={**LAYOUT, "title": {"text": title, "font": {"size": 14}}})
    for i, (name, points) in enumerate(lines.items()):
        if is_numeric:
            points.sort(key=lambda p: p[0])
        xs = [x if is_numeric else str(x) for x, _ in points]
        means = [g.metrics[key].mean * scale for _, g in points]
        widths = [half_width(g.metrics[key].sd, g.metrics[key].n, band) for _, g in points]
        figure.add_trace(go.Scatter(
            x=xs, y=means, mode="lines+markers", name=name, line={"color": _rgb(i)},
            error_y={"type": "data", "array": [(w or 0) * scale for w in widths], "visible": True},
            customdata=[[g.label, g.metrics[key].n] for _, g in points],
            hovertemplate="%{customdata[0]}: %{y:.4g} (n=%{customdata[1]})<extra></extra>",
        ))  # fmt: skip
    best = next((g for g in scored if chosen and g.label == chosen.label), None)
    if best is not None:
        x = best.setting.get(x_field, base.get(x_field))
        figure.add_trace(go.Scatter(x=[x if is_numeric else str(x)], y=[best.metrics[key].mean * scale],
                                    mode="markers", name=f"chosen: {best.label}",
                                    marker={"symbol": "star", "size": 18, "color": "gold",
                                            "line": {"color": "black", "width": 1}}))  # fmt: skip
    positive = is_numeric and all(x > 0 for x in xs_all)
    wide = positive and max(xs_all) / min(xs_all) >= 10  # learning rates: a log axis
    figure.update_xaxes(title_text=x_field, type="log" if wide else ("linear" if is_numeric else "category"))
    if is_numeric:  # a tick at each swept value, written as in the spec
        ticks = sorted(set(xs_all))
        figure.update_xaxes(tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    figure.update_yaxes(title_text=f"final {key}, {unit_of(key)}")
    return figure
