"""The Sweeps tab: the list of sweeps, and one sweep's view (`/ui/?sweep=3`).

The view is the service's `app.services.sweeps.get_sweep` (groups, each final eval metric's mean ± sd
over the group's succeeded seeds) plus what the page adds in `ui.sweep_stats`: the 95 % interval over
seeds, the chosen setting (best mean of the picked metric among finished groups) and the groups' mean
curves, read with `app.services.comparison.series` like the Compare tab. Cancel and export are the
service's too (the export links are the REST API's `GET /api/sweeps/{id}/export`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from app.models import RunStatus, SweepGroupView, SweepView
from app.services import comparison
from app.services import sweeps as sweep_service
from app.services.errors import NotFoundError, ServiceError
from app.services.session import open_session
from core_distill import metric_keys
from ui import sweep_charts
from ui.sweep_stats import Band, Chosen, choose, half_width, higher_is_better, mean_curve, scale_of

DEFAULT_METRIC = metric_keys.EVAL_EXACT_MATCH
SWEEP_COLUMNS = ("sweep", "name", "status", "runs", "succeeded", "running", "queued", "failed", "cancelled",
                 "owner", "created (UTC)")  # fmt: skip
PAGE_SIZE = 100
CURVE_POINTS = 5000  # points per chart read from the database, shared by the sweep's runs
CHOSEN_MARK = "★"


# --- fingerprints: the service's aggregate queries, for every tick of every open page -------------
def list_fingerprint() -> str:
    """Changes when a sweep is added or one of a sweep's runs changes status."""
    with open_session() as session:
        return sweep_service.sweeps_fingerprint(session=session)


def view_fingerprint(sweep_id: int | None) -> str:
    """Changes when a run of the sweep is added, changes status, resumes or makes progress."""
    if not sweep_id:
        return ""
    with open_session() as session:
        return sweep_service.sweep_fingerprint(session=session, sweep_id=int(sweep_id))


# --- the list --------------------------------------------------------------------------------------
def sweeps_table(owner: str = "", page: int = 0) -> tuple[pd.DataFrame, str]:
    """(table, caption): sweeps newest first, one owner's when `owner` is given, with their run counts."""
    owner = (owner or "").strip() or None
    with open_session() as session:
        rows, total = sweep_service.list_sweeps(
            session=session, owner=owner, skip=max(int(page or 0), 0) * PAGE_SIZE, limit=PAGE_SIZE
        )
    records = [
        {"sweep": s.id, "name": s.name, "status": s.status, "runs": s.runs,
         **{k: s.counts.get(k, 0) for k in ("succeeded", "running", "queued", "failed", "cancelled")},
         "owner": s.owner or "", "created (UTC)": s.created_at.strftime("%Y-%m-%d %H:%M")}
        for s in rows
    ]  # fmt: skip
    whose = f" of {owner}" if owner else ""
    caption = f"{total} sweep(s){whose}; showing {len(records)} (page {int(page or 0) + 1}). Click one to open it."
    return pd.DataFrame(records, columns=list(SWEEP_COLUMNS)), caption


# --- one sweep -------------------------------------------------------------------------------------
def load(sweep_id: int) -> SweepView:
    with open_session() as session:
        return sweep_service.get_sweep(session=session, sweep_id=int(sweep_id))


def _fmt(value: float | None, key: str, width: bool = False) -> str:
    """Shares as % with 2 decimals; other values to 4 significant digits (a ± width to 2)."""
    if value is None:
        return ""
    scaled = value * scale_of(key)
    return f"{scaled:.2f}" if scale_of(key) != 1 else f"{scaled:.2g}" if width else f"{scaled:.4g}"


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "no runs"


def score_text(group: SweepGroupView, key: str, band: Band = "ci") -> str:
    """'63.80 ± 2.40 (n=3)': the mean ± the band's half-width, in the metric's unit (% for shares)."""
    summary = group.metrics.get(key)
    if summary is None:
        return ""
    width = half_width(summary.sd, summary.n, band)
    return (
        _fmt(summary.mean, key)
        + (f" ± {_fmt(width, key, width=True)}" if width is not None else "")
        + f" (n={summary.n})"
    )


def groups_table(view: SweepView, key: str, chosen: Chosen | None) -> pd.DataFrame:
    """One row per setting: the mark of the chosen one, its fields (the base spec's value where a setting
    leaves one out), its runs by status and their ids, the picked metric's mean, sd, 95 % interval over
    seeds and n, then every other eval metric as mean ± sd."""
    fields = sweep_charts.setting_fields(view.groups)
    unit = " (%)" if scale_of(key) != 1 else ""
    rows = []
    for group in view.groups:
        summary = group.metrics.get(key)
        ci = half_width(summary.sd, summary.n, "ci") if summary else None
        counts: dict[str, int] = {}
        for run in group.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        row: dict[str, Any] = {"chosen": CHOSEN_MARK if chosen and chosen.label == group.label else "",
                               "setting": group.label}  # fmt: skip
        row.update({f: _cell(group.setting.get(f, view.spec.get(f))) for f in fields})
        row.update({
            "runs": _counts_text(counts),
            f"{key} mean{unit}": _fmt(summary.mean, key) if summary else "",
            f"sd{unit}": _fmt(summary.sd, key, width=True) if summary else "",
            f"95% CI{unit}": f"{_fmt(summary.mean - ci, key)} to {_fmt(summary.mean + ci, key)}" if ci is not None else "",
            "n seeds": summary.n if summary else 0,
        })  # fmt: skip
        for other in view.metric_keys:
            if other != key:
                row[other] = score_text(group, other, "sd")
        row["run ids"] = " ".join(f"#{r.run_id}" for r in group.runs)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str | bool) else str(value)


def header(view: SweepView, key: str, chosen: Chosen | None) -> str:
    """Status and counts, what was swept, the chosen setting and why, the downloads."""
    owner = f" · owner {view.owner}" if view.owner else ""
    what = (f"grid over {', '.join(view.grid)}" + (f" ({view.samples} drawn at random)" if view.search == "random" else "")
            if view.grid is not None else f"{len(view.settings or [])} explicit settings" if view.settings else "the base spec")  # fmt: skip
    lines = [
        f"### Sweep {view.id} · {view.name} · **{view.status}**{owner}",
        f"{view.runs} runs ({_counts_text(view.counts)}): {len(view.groups)} settings "
        f"({what}) × seeds {', '.join(map(str, view.seeds))}.",
    ]
    direction = "highest" if higher_is_better(key) else "lowest"
    if chosen is None:
        lines.append(f"Chosen setting: none yet (the {direction} mean final `{key}` among finished settings).")
    else:
        ci = half_width(chosen.summary.sd, chosen.summary.n, "ci")
        interval = f", 95% CI ± {_fmt(ci, key, width=True)}" if ci is not None else " (one seed: no interval)"
        unit = " %" if scale_of(key) != 1 else ""
        lines.append(
            f"Chosen setting {CHOSEN_MARK} **{chosen.label}**: the {direction} mean final `{key}` among "
            f"{chosen.among} finished setting(s), {_fmt(chosen.summary.mean, key)}{unit}{interval} over "
            f"{chosen.summary.n} seed(s). Overlapping intervals mean the choice is within the seeds' noise."
        )
        group = next(g for g in view.groups if g.label == chosen.label)
        ids = [str(r.run_id) for r in group.runs][: comparison.MAX_COMPARED]
        lines[-1] += f" Its runs side by side: [/ui/?compare={','.join(ids)}](/ui/?compare={','.join(ids)})."
    lines.append(f"Export (one row per run): [sweep-{view.id}.csv](/api/sweeps/{view.id}/export?format=csv) · "
                 f"[sweep-{view.id}.json](/api/sweeps/{view.id}/export?format=json)")  # fmt: skip
    return "\n\n".join(lines)


def group_curves(view: SweepView, key: str, band: Band) -> dict[str, Any]:
    """Each group's mean curve of `key` over its runs (any status: a running sweep's curves grow)."""
    run_ids = [r.run_id for g in view.groups for r in g.runs]
    per_run = max(50, CURVE_POINTS // max(len(run_ids), 1))
    with open_session() as session:
        series = comparison.series(session=session, run_ids=run_ids, keys=[key], max_points=per_run, x="step")
    return {g.label: mean_curve([series[r.run_id][key] for r in g.runs], band) for g in view.groups}


def metric_choices(view: SweepView) -> list[str]:
    """The sweep's eval keys (the ones with final scores), then the compared training curves."""
    return list(dict.fromkeys([*view.metric_keys, DEFAULT_METRIC, *metric_keys.COMPARED]))


def sweep_outputs(sweep_id: int | None, key: str | None, band: Band = "ci", x_field: str | None = None) -> list[Any]:
    """[header, groups table, curves figure, setting figure, metric choices, x-field choices, x field]."""
    if not sweep_id:
        return ["Pick a sweep in the list or type its id.", pd.DataFrame(), None, None, [DEFAULT_METRIC], [], None]
    try:
        view = load(int(sweep_id))
    except NotFoundError as exc:
        return [f"**{exc}.**", pd.DataFrame(), None, None, [DEFAULT_METRIC], [], None]
    key = key or DEFAULT_METRIC
    band = band if band in ("ci", "sd") else "ci"
    chosen = choose(view.groups, key)
    fields = sweep_charts.setting_fields(view.groups)
    x_field = x_field if x_field in fields else sweep_charts.default_x_field(view.groups)
    curves = sweep_charts.curves_figure(group_curves(view, key, band), key, band, chosen.label if chosen else None)
    setting = sweep_charts.setting_figure(view.groups, view.spec, key, x_field, band, chosen)
    return [header(view, key, chosen), groups_table(view, key, chosen), curves, setting, metric_choices(view), fields,
            x_field]  # fmt: skip


def cancel(sweep_id: int | None, *, user: str | None = None) -> str:
    """Cancel every unfinished run of the sweep as `user` (its owner or an admin); the message says what happened."""
    if not sweep_id:
        return "Open a sweep first."
    with open_session() as session:
        try:
            view = sweep_service.cancel_sweep(session=session, sweep_id=int(sweep_id), user=user)
        except ServiceError as exc:
            return f"**Cancel failed:** {exc}"
    stopping = view.counts.get(RunStatus.running.value, 0)
    tail = f"; {stopping} running run(s) stop at their next step" if stopping else ""
    return f"Sweep {view.id} cancelled: {_counts_text(view.counts)}{tail}."
