"""The runs table: one row per run with its status (and place in the queue), its metrics and spec fields.

The spec fields that differ among the listed runs come first (`comparison.differing_fields`): they are
what tells the runs apart. Filtering happens in SQL (`app.crud.list_runs`); the metric columns are
index seeks per run (`latest_metrics`), never a scan of the metric table, so the table loads fast with
long runs.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pandas as pd

from app import crud
from app.models import Experiment, ExperimentUpdate, Run, RunStatus
from app.services import comparison, run_views
from app.services import experiments as experiment_service
from app.services import runs as run_service
from app.services.errors import NotFoundError, ServiceError
from app.services.session import open_session
from core_distill import metric_keys
from core_distill.spec import SpecError

SPEC_COLUMNS = ("student", "teacher", "objective", "lmbda", "beta", "loss_top_k", "opsd", "gpus")  # shown for every run
METRIC_KEYS = run_views.RESULT_KEYS  # each run's latest results (metric_keys.SUMMARY)
METRIC_COLUMNS = tuple(metric_keys.display_label(key) for key in METRIC_KEYS)  # shares in %, as the charts show them
# run id first: a selected row's first cell names the run
LEAD_COLUMNS = ("run", "name", "status", "step")
TAIL_COLUMNS = ("tags", "experiment", "created (UTC)")
RUN_COLUMNS = (*LEAD_COLUMNS, *METRIC_COLUMNS, *SPEC_COLUMNS, *TAIL_COLUMNS)  # when no field differs
# The table is read-only and a click only selects a run: no cell-editor outline, no row/column
# selection arrows, the clicked run's whole row highlighted instead.
CSS = """
#runs-table .cell-selected, #runs-table .cell-selected span {box-shadow: none !important;}
#runs-table .selection-button {display: none !important;}
#runs-table .body-cell {cursor: pointer;}
#runs-table [role=row]:has(.cell-selected) .body-cell, #runs-table .body-cell.cell-selected {
    background: var(--color-accent-soft) !important;
}
/* a run's error (a traceback) wraps inside the panel instead of running off its right edge */
#selected-run-details pre, #selected-run-details pre code, #live-header pre, #live-header pre code {
    white-space: pre-wrap !important; overflow-wrap: anywhere !important;
}
"""
STATUS_CHOICES = ["all", *[s.value for s in RunStatus]]
PAGE_SIZE = 100


class FilterError(ValueError):
    """A filter the user typed that cannot be applied; the message names the bad part."""


def parse_field_filter(text: str) -> dict[str, str]:
    """'beta=0.5 student=toy:student' -> {'beta': '0.5', 'student': 'toy:student'} (quotes allowed)."""
    raw: dict[str, str] = {}
    for clause in shlex.split(text or ""):
        name, sep, value = clause.partition("=")
        if not sep or not name.strip():
            raise FilterError(f"filter {clause!r} is not field=value")
        raw[name.strip()] = value.strip()
    return raw


def parse_tags(text: str) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def sort_choices() -> list[tuple[str, str]]:
    """The Runs tab's "sort by": newest first, or a result column highest or lowest first ("-key", "+key")."""
    both = [(f"{metric_keys.display_label(key)}, {word} first", f"{sign}{key}") for key in METRIC_KEYS
            for word, sign in (("highest", "-"), ("lowest", "+"))]  # fmt: skip
    return [("newest first", ""), *both]


def runs_table(
    status: str = "all", tag_text: str = "", field_text: str = "", page: int = 0, sort: str = ""
) -> tuple[pd.DataFrame, str]:
    """(table, caption) for the filters; bad filters give an empty table and a caption naming the problem.

    Columns: run, name, status, step, then the spec fields that differ among the listed runs, each run's
    latest results, the usual spec fields that do not differ, tags, experiment and creation time. `sort`
    ("-key" highest first, "+key" lowest first, "" newest first) orders every matching run, not one page.
    """
    try:
        spec_filters = crud.parse_spec_filters(parse_field_filter(field_text))
    except (FilterError, SpecError) as exc:
        return pd.DataFrame(columns=RUN_COLUMNS), f"**Filter not applied:** {exc}"
    with open_session() as session:  # the service behind GET /api/runs
        listed = run_views.runs_page(
            session=session,
            status=None if status in ("", "all") else status,
            tags=parse_tags(tag_text),
            spec_filters=spec_filters,
            skip=max(int(page or 0), 0) * PAGE_SIZE,
            limit=PAGE_SIZE,
            sort=(sort or "")[1:] or None,
            descending=(sort or "").startswith("-"),
        )
    rows, total, positions, metrics = listed.rows, listed.count, listed.positions, listed.results
    differing = comparison.differing_fields([experiment.spec for _, experiment in rows])
    columns = table_columns(differing)
    records = [
        _row(run, experiment, positions.get(run.id), metrics.get(run.id, {}), columns) for run, experiment in rows
    ]
    caption = f"{total} run(s) match; showing {len(records)} (page {int(page or 0) + 1})."
    if differing:
        caption += f" They differ in {', '.join(differing)} (first columns after step)."
    return pd.DataFrame(records, columns=columns), caption


def table_columns(differing: list[str]) -> list[str]:
    """The table's columns with the differing spec fields right after the run's status and step."""
    rest = [name for name in SPEC_COLUMNS if name not in differing]
    return [*LEAD_COLUMNS, *differing, *METRIC_COLUMNS, *rest, *TAIL_COLUMNS]


def status_text(run: Run, queue: int | None) -> str:
    """True words for every state: 'queued (2nd in line)', 'running (cancelling)', 'lost (resuming
    automatically)', else the status itself (succeeded, failed, cancelled, lost)."""
    status = RunStatus(run.status)
    if status == RunStatus.queued and queue is not None:
        return f"queued ({run_service.ordinal(queue)} in line)"
    if status == RunStatus.running and run.cancel_requested:
        return "running (cancelling)"
    if status == RunStatus.lost and run.resume_after is not None:
        return "lost (resuming automatically)"
    return status.value


def _row(
    run: Run, experiment: Experiment, queue: int | None, metrics: dict[str, float], columns: list[str]
) -> dict[str, Any]:
    spec = experiment.spec
    row: dict[str, Any] = {
        "run": run.id,
        "experiment": experiment.id,
        "name": experiment.name,
        "status": status_text(run, queue),
        "step": f"{run.last_step}/{run.max_steps}",
        "gpus": run.gpus,
        "tags": ", ".join(experiment.tags),
        "created (UTC)": run.created_at.strftime("%Y-%m-%d %H:%M"),
    }
    shown = {metric_keys.display_label(key): metric_keys.display_value(key, metrics.get(key)) for key in METRIC_KEYS}
    row.update(shown)
    row.update({name: _cell(spec.get(name)) for name in columns if name not in row})
    return row


def _cell(value: Any) -> Any:
    """Numbers, strings and booleans as they are; lists and dicts as short text."""
    return value if value is None or isinstance(value, int | float | str | bool) else str(value)


# --- actions on one run ---------------------------------------------------------------------------
def run_details(run_id: int | None) -> tuple[str, str, str]:
    """(summary markdown, tags, notes) of the run's experiment, for the side panel."""
    if not run_id:
        return "Select a run in the table.", "", ""
    try:
        with open_session() as session:
            _, experiment = run_views.run_with_experiment(session=session, run_id=int(run_id))
    except NotFoundError:
        return f"No run {int(run_id)}.", "", ""
    return run_summary(run_id), ", ".join(experiment.tags), experiment.notes


def run_summary(run_id: int | None) -> str:
    """The side panel's status lines: refreshed with the table, so it follows a cancel or a failure."""
    if not run_id:
        return "Select a run in the table."
    try:
        with open_session() as session:
            view = run_views.run_status_view(session=session, run_id=int(run_id))
    except NotFoundError:
        return f"No run {int(run_id)}."
    run, experiment, queue, history = view.run, view.experiment, view.queue_position, view.history
    summary = (
        f"**Run {run.id}** of experiment {experiment.id} *{experiment.name}*: {status_text(run, queue)}, "
        f"step {run.last_step}/{run.max_steps}, attempt {run.attempt}"
    )
    if healing := run_service.healing_line(run, experiment.spec, history):
        summary += f"\n\n*{healing}*"
    summary += "".join(f"\n\n{line}" for line in run_service.header_lines(history))
    summary += "".join(f"\n\n**{line}**" for line in run_service.warning_lines(history))
    return summary + ("\n\n" + error_block(run.error, run.status) if run.error else "")


# The heading over a run's stored `error` text: only a failure is an error (a cancelled run's text says
# where it stopped, a lost run's why it was lost)
ERROR_HEADINGS = {RunStatus.failed: "Error", RunStatus.cancelled: "Stopped", RunStatus.lost: "Lost"}


def error_block(error: str, status: str = RunStatus.failed) -> str:
    """A run's error as a fenced block (rendered as <pre>, its text shown as is, wrapped by CSS) under a
    heading true to its status; the fence is longer than any run of backticks inside, so a traceback
    cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", error)), default=0)
    fence = "`" * max(3, longest + 1)
    heading = ERROR_HEADINGS.get(RunStatus(status), "Last error")
    return f"**{heading}:**\n\n{fence}text\n{error.rstrip()}\n{fence}"


def save_tags_notes(run_id: int | None, tags_text: str, notes: str, *, user: str | None = None) -> str:
    """Save the tags and notes of the run's experiment as `user` (its owner or an admin)."""
    if not run_id:
        return "Select a run first."
    try:
        update = ExperimentUpdate(tags=parse_tags(tags_text), notes=notes)
    except ValueError as exc:
        return f"**Not saved:** {exc}"
    with open_session() as session:
        try:
            run, _ = run_views.run_with_experiment(session=session, run_id=int(run_id))
            experiment = experiment_service.update_experiment(
                session=session, experiment_id=run.experiment_id, experiment_in=update, user=user
            )
        except ServiceError as exc:
            return f"**Not saved:** {exc}"
        return f"Saved tags and notes of experiment {experiment.id}."


def act_on_run(action: str, run_id: int | None, *, user: str | None = None) -> tuple[str, int | None]:
    """cancel | rerun | resume the run as `user`; (message, id of the run to show)."""
    if not run_id:
        return "Select a run first.", None
    with open_session() as session:
        try:
            if action == "cancel":
                run = run_service.cancel_run(session=session, run_id=int(run_id), user=user)
                verb = "cancelled" if run.status == RunStatus.cancelled else "asked to stop (it checkpoints first)"
                return f"Run {run.id} {verb}.", run.id
            if action == "resume":
                run = run_service.resume_run(session=session, run_id=int(run_id), user=user)
                return f"Run {run.id} queued again (attempt {run.attempt}), from its last checkpoint.", run.id
            if action == "rerun":
                run, _ = run_views.run_with_experiment(session=session, run_id=int(run_id))
                new_run = experiment_service.rerun_experiment(
                    session=session, experiment_id=run.experiment_id, user=user
                )
                return f"Run {new_run.id} queued: a fresh run of experiment {run.experiment_id}.", new_run.id
        except (ServiceError, SpecError) as exc:
            return f"**{action} failed:** {exc}", int(run_id)
    raise ValueError(f"unknown action {action!r}")
