"""The runs table and the run page in headless Chromium at a laptop's 1440 px: the API + dashboard run
as a subprocess against the test database (no worker: rows are written as a worker would write them).

The runs table puts the spec fields that tell runs apart where they are seen, looks read-only when
clicked, and its selected-run panel follows a cancel to its end; a queued run's page says its place
in line; a failed run's page shows its error as preformatted text and no empty chart frame; the
compare tab's final table has the student-before and teacher rows. Screenshots: test-artifacts/ui/
(docs/img/ with DISTILL_DOCS_SCREENSHOTS=1).
"""

from __future__ import annotations

import pytest
from sqlalchemy import insert
from sqlmodel import Session

from app import run_state
from app.db import get_engine
from app.models import MetricPoint, Run
from core_distill import metric_keys as mk
from core_distill.spec import DistillSpec
from tests.ui.browser import BROWSER_TEST, SERVER_MS, open_page
from tests.ui.browser import shot as _shot
from tests.ui.factories import add_run
from ui import form

pytestmark = BROWSER_TEST

WIDTH = 1440  # a laptop: beta was scrolled out of view at this width (and at 1920)
SERVER = SERVER_MS


@pytest.fixture
def tab():
    with open_page(width=WIDTH) as page:
        yield page


def _example(stem: str, **overrides) -> dict:
    """An example preset's spec (what Launch would queue for it), with overrides."""
    return {**DistillSpec.from_yaml(form.preset_yaml(stem)).model_dump(mode="json"), **overrides}


def _log(run_id: int, step: int, values: dict[str, float]) -> None:
    with Session(get_engine()) as session:
        rows = [
            {"run_id": run_id, "step": step, "key": k, "value": v, "wall_time": 1e9 + step} for k, v in values.items()
        ]
        session.execute(insert(MetricPoint), rows)
        session.commit()


def test_runs_table_shows_what_differs_and_its_panel_follows_a_cancel(api, tab):
    from playwright.sync_api import expect

    tab.goto(f"{api}/ui/")
    expect(tab.get_by_text("0 run(s) match")).to_be_visible(timeout=2 * SERVER)  # connected: its load event ran
    _shot(tab, "runs-empty")

    # two methods that differ in beta only (the on-policy examples), one still queued, one running
    with Session(get_engine()) as session:
        jsd = add_run(session, name="on-policy JSD", spec=_example("gkd_on_policy"), steps=120, tags=["sweep"])
        rkl = add_run(session, name="on-policy reverse KL", spec=_example("reverse_kl_on_policy"), steps=120, seed=1)
        queued = add_run(session, name="on-policy reverse KL, lr 3e-4", status="queued",
                         spec=_example("reverse_kl_on_policy", learning_rate=3e-4))  # fmt: skip
        running = add_run(session, name="on-policy JSD, seed 1", status="running", steps=40,
                          spec=_example("gkd_on_policy", seed=1))  # fmt: skip
    for run, accuracy in ((jsd, 0.41), (rkl, 0.37), (running, 0.33)):
        _log(run.id, run.last_step, {mk.EVAL_EXACT_MATCH: accuracy})
    table = tab.locator("#runs-table")
    expect(tab.get_by_text("4 run(s) match")).to_be_visible()  # the table refreshed on its own
    expect(table).to_contain_text("queued (1st in line)")

    # the fields that differ come right after status and step, inside the table's visible part
    headers = [h.strip() for h in table.get_by_role("columnheader").all_inner_texts() if h.strip()]
    assert headers[:7] == ["run", "name", "status", "step", "beta", "learning_rate", "seed"], headers
    visible_right = min(WIDTH, table.bounding_box()["x"] + table.bounding_box()["width"])
    for field in ("beta", "learning_rate", "seed"):
        box = table.get_by_role("columnheader", name=field, exact=True).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= visible_right, (field, box)
    row = table.get_by_role("row").filter(has_text="on-policy reverse KL, lr 3e-4")
    expect(row).to_contain_text("0.0003")
    expect(table.get_by_role("columnheader", name="eval/exact_match (%)", exact=True)).to_have_count(1)
    jsd_row = table.get_by_role("row").filter(has=tab.get_by_text("on-policy JSD", exact=True)).first
    expect(jsd_row).to_contain_text("41")  # the last eval/exact_match, in % as the charts show it
    expect(jsd_row).not_to_contain_text("0.41")

    # a click selects the run; the table is read-only and does not look like a cell editor
    table.get_by_text("on-policy JSD, seed 1", exact=True).filter(visible=True).first.click()
    expect(tab.locator("#selected-run input")).to_have_value(str(running.id))
    expect(tab.locator("#runs-table .cell-selected")).to_have_count(1)
    looks = tab.evaluate("""() => { const c = document.querySelector('#runs-table .cell-selected');
        return [c, ...c.querySelectorAll('*')].map(e => getComputedStyle(e).boxShadow)
            .concat([...document.querySelectorAll('#runs-table .selection-button')]
                .map(b => getComputedStyle(b).display)); }""")
    assert set(looks) <= {"none"}, looks  # no outline, no row/column selection arrows
    expect(tab.locator("#runs-table input, #runs-table textarea").filter(visible=True)).to_have_count(0)  # no editor
    _shot(tab, "runs")

    # cancel the running run: the panel says it is stopping, then follows the worker's end of it
    details = tab.locator("#selected-run-details")
    expect(details).to_contain_text(f"Run {running.id}")
    tab.once("dialog", lambda dialog: dialog.accept())  # Cancel asks first (ui/static/confirm.js)
    tab.get_by_role("button", name="Cancel run").click()
    expect(tab.locator("#run-action-message")).to_contain_text(f"Run {running.id} asked to stop")
    expect(details).to_contain_text("running (cancelling)")
    with Session(get_engine()) as session:  # what the worker does at its next step
        assert run_state.finish_run(session=session, run_id=running.id, status="cancelled", last_step=41)
    expect(details).to_contain_text(": cancelled, step 41/", timeout=2 * SERVER)  # no click: the table's refresh
    expect(table.get_by_role("row").filter(has_text="on-policy JSD, seed 1")).to_contain_text("cancelled")
    assert {jsd.id, rkl.id, queued.id}  # the other rows stayed as they were
    expect(table).to_contain_text("queued (1st in line)")


def test_run_pages_queue_place_failure_and_reference_rows(api, tab):
    from playwright.sync_api import expect

    error = (
        'Traceback (most recent call last):\n  File "train.py", line 3\n    x = `y` <b>bold</b> *em*\nValueError: ```'
    )
    with Session(get_engine()) as session:
        waiting = [add_run(session, name=f"waiting {i}", status="queued") for i in range(3)]
        failed = add_run(session, name="broken at start", status="failed")
        session.get(Run, failed.id).error = error
        session.commit()
        spec = _example("gkd_on_policy")
        a = add_run(session, name="jsd", spec=spec, steps=20, keys=("loss",))
        b = add_run(session, name="rkl", spec=_example("reverse_kl_on_policy"), steps=20, keys=("loss",), seed=1)
    for run, before, after in ((a, 0.3, 0.45), (b, 0.3, 0.4)):
        _log(run.id, 0, {mk.EVAL_EXACT_MATCH: before})
        _log(run.id, 20, {mk.EVAL_EXACT_MATCH: after})

    # a queued run's header says where it is in line
    tab.goto(f"{api}/ui/?run={waiting[2].id}")
    header = tab.locator("#live-header")
    expect(header).to_contain_text(f"Run {waiting[2].id}", timeout=2 * SERVER)
    expect(header).to_contain_text("queued (3rd in line)")

    # a failed run: its error as one preformatted block, exactly as stored; no chart frame
    tab.goto(f"{api}/ui/?run={failed.id}")
    expect(header).to_contain_text(f"Run {failed.id}", timeout=2 * SERVER)
    expect(header).to_contain_text("failed")
    pre = header.locator("pre")
    expect(pre).to_have_count(1)
    assert pre.inner_text().strip() == error
    assert header.locator("b, em").count() == 0  # nothing in it was read as HTML or Markdown
    # the chart view read the (empty) history and the run's final status: it says so instead of framing nothing
    expect(tab.locator("#live-charts .distill-empty")).to_have_text(
        "The run failed without logging a metric: nothing to chart.", timeout=2 * SERVER
    )
    frames = tab.locator("#live-charts .distill-chart")
    assert frames.count() == 0, f"{frames.count()} chart frame(s) for a run that logged nothing"
    _shot(tab, "live-failed")

    # compare: the final table has the student before training and the teacher
    tab.goto(f"{api}/ui/?compare={a.id},{b.id}")
    finals = tab.locator("#final-metrics")
    expect(finals).to_contain_text(f"#{b.id} rkl", timeout=2 * SERVER)
    before_row = finals.get_by_role("row").filter(has_text="student before")
    expect(before_row).to_contain_text(f"toy:student (#{a.id} at step 0)")
    expect(before_row).to_contain_text("30")  # eval/exact_match in %, as the charts show it
    expect(finals.get_by_role("row").filter(has_text="teacher: toy:teacher")).to_contain_text("test split")
