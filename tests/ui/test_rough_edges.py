"""Issue 22's dashboard rough edges, in headless Chromium against the real app (uvicorn subprocess, the
test database and Redis; no worker: rows are written as a worker writes them, streamed points go
through the worker's real DatabaseReporter).

Checked as the page shows them: true status words for finished runs (a cancelled run is not an
"Error", a finished run does not say it is followed live); a long traceback wraps inside the page; a
one-point series is drawn as a marker and becomes a line when a second point streams in; an all-zero
series gets a 0..1 (0..100 %) axis that moves when real values arrive; Enter in the smoothing box
applies it; the heat map's colours are on a fixed scale in nats, with a legend saying so; accuracy
is in % in the tables as in the charts; a run keeps its colour whatever its place in a comparison;
the fields' help text meets WCAG AA contrast; Cancel asks first, and dismissing it sends nothing.
"""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import insert
from sqlmodel import Session

from app.db import get_engine
from app.models import MetricPoint, Run
from core_distill import metric_keys as mk
from tests.ui.browser import BROWSER_TEST, SERVER_MS, open_page
from tests.ui.browser import shot as _shot
from tests.ui.factories import add_run

pytestmark = BROWSER_TEST

WIDTH = 1440
TRACEBACK = (
    'Traceback (most recent call last):\n  File "/srv/distill/core_distill/train.py", line 412, in run\n'
    "ValueError: " + "a_very_long_token_without_spaces_" * 30 + "end"
)
SAMPLES = [{"prompt": "1+1=", "completion": "2 ok", "reference": "2", "correct": True,
            "tokens": ["2", " ok", "!"], "token_div": [0.0049, 0.0049, 2.0]}]  # fmt: skip


@pytest.fixture
def tab():
    with open_page(width=WIDTH) as page:
        yield page


def chart_js(family: str, body: str, root: str = ".distill-live") -> str:
    return (f"() => {{ const gd = document.querySelector('{root} .distill-chart[data-family=\"{family}\"]'); "
            f"if (!gd || !gd.data) return null; {body} }}")  # fmt: skip


def _points(run_id: int, points: dict[str, list[tuple[int, float]]]) -> None:
    with Session(get_engine()) as session:
        rows = [{"run_id": run_id, "step": s, "key": k, "value": v, "wall_time": 1e9 + s}
                for k, pts in points.items() for s, v in pts]  # fmt: skip
        session.execute(insert(MetricPoint), rows)
        session.commit()


def _set(run_id: int, **values) -> None:
    with Session(get_engine()) as session:
        run = session.get(Run, run_id)
        for name, value in values.items():
            setattr(run, name, value)
        session.add(run)
        session.commit()


def _open_run(tab, api: str, run_id: int) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{api}/ui/?run={run_id}")
    expect(tab.locator("#live-header")).to_contain_text(f"Run {run_id} ", timeout=2 * SERVER_MS)


def test_run_pages_say_true_words_and_draw_sparse_flat_and_heat_map_honestly(api, tab):
    from playwright.sync_api import expect

    from app import events
    from worker.reporter import DatabaseReporter

    with Session(get_engine()) as session:
        sparse = add_run(session, name="sparse", status="running", keys=())
        done = add_run(session, name="done", steps=40, keys=("loss",), samples=SAMPLES)
        cancelled = add_run(session, name="stopped by hand", status="cancelled", steps=5, keys=("loss",))
        failed = add_run(session, name="broken", status="failed")
    _points(sparse.id, {"loss": [(1, 0.9)], mk.DATA_TRUNCATED_PROMPTS: [(1, 0.0), (2, 0.0), (3, 0.0)],
                        mk.EVAL_EXACT_MATCH: [(0, 0.0), (3, 0.0)]})  # fmt: skip
    _points(done.id, {mk.EVAL_EXACT_MATCH: [(40, 0.6)]})
    _set(cancelled.id, error="cancelled at step 5 (checkpoint kept; resume to continue)")
    _set(failed.id, error=TRACEBACK)
    status_line = tab.locator(".distill-live .distill-status")

    # a running run with one loss point: a marker, not nothing; all-zero series: 0..1 and 0..100 %
    _open_run(tab, api, sparse.id)
    tab.wait_for_function(chart_js("loss", "return gd.data[0].x.length === 1;"), timeout=SERVER_MS)
    assert "markers" in tab.evaluate(chart_js("loss", "return gd.data[0].mode;"))
    assert tab.evaluate(chart_js("truncated", "return gd._fullLayout.yaxis.range;")) == [0, 1]
    assert tab.evaluate(chart_js("eval_accuracy", "return gd._fullLayout.yaxis.range;")) == [0, 100]
    expect(status_line).to_have_text("following the run live")
    reporter = DatabaseReporter(sparse.id, engine=get_engine(), redis_client=events.redis_client(), flush_seconds=0.1)
    try:
        reporter.log(4, {"loss": 0.7, mk.DATA_TRUNCATED_PROMPTS: 2.0})
        reporter.flush()
    finally:
        reporter.close()
    # the second point streams in: a line now, and the flat axis makes room for the new value
    tab.wait_for_function(chart_js("loss", "return gd.data[0].x.length === 2 && gd.data[0].mode === 'lines';"),
                          timeout=SERVER_MS)  # fmt: skip
    tab.wait_for_function(chart_js("truncated", "return gd._fullLayout.yaxis.range[1] >= 2;"), timeout=SERVER_MS)

    # Enter in the smoothing box applies it (no blur, no slider drag)
    box = tab.locator("#live-smoothing input[type=number]")
    box.fill("0.5")
    box.press("Enter")
    tab.wait_for_function(chart_js("loss", "return gd.data.some(t => t.name === 'loss (smoothed 0.5)');"),
                          timeout=SERVER_MS)  # fmt: skip

    # a finished run: its history, no "following the run live"; the heat map on its fixed scale in nats
    _open_run(tab, api, done.id)
    expect(status_line).to_have_text("The run succeeded: every point it logged is shown.", timeout=SERVER_MS)
    legend = tab.locator("#samples .legend")
    expect(legend).to_contain_text("in nats")
    expect(legend).to_contain_text("≥ 10")
    alphas = tab.evaluate("""() => [...document.querySelectorAll('#samples .completion .tok')].map(t => {
        const m = getComputedStyle(t).backgroundColor.match(/rgba?\\(([^)]*)\\)/)[1].split(',');
        return m.length === 4 ? Number(m[3]) : 1; })""")
    assert alphas[0] == alphas[1] < 0.35 < alphas[2], alphas  # 0.0049 nats is pale, 2 nats is not
    _shot(tab, "rough-edges-finished")

    # a cancelled run is not an error
    _open_run(tab, api, cancelled.id)
    header = tab.locator("#live-header")
    expect(header).to_contain_text("cancelled")
    expect(header).to_contain_text("Stopped:")
    expect(header).not_to_contain_text("Error")
    expect(status_line).to_have_text("The run was cancelled: every point it logged is shown.", timeout=SERVER_MS)

    # a failed run's traceback wraps inside the page instead of running off its right edge
    _open_run(tab, api, failed.id)
    expect(header).to_contain_text("Error:")
    pre = header.locator("pre")
    expect(pre).to_contain_text("a_very_long_token")
    fits = pre.evaluate("(p) => [p.scrollWidth, p.clientWidth, p.getBoundingClientRect().right, innerWidth]")
    assert fits[0] <= fits[1] + 1 and fits[2] <= fits[3], (
        fits,
        pre.evaluate(
            "(p) => [p.outerHTML.slice(0, 400), ...[p, ...p.querySelectorAll('*')].slice(0, 4).map(e => [e.tagName, getComputedStyle(e).whiteSpace, getComputedStyle(e).overflowWrap, getComputedStyle(e).wordBreak])]"
        ),
    )
    expect(tab.locator("#live-charts .distill-empty")).to_have_text(
        "The run failed without logging a metric: nothing to chart.", timeout=SERVER_MS
    )
    _shot(tab, "rough-edges-traceback")

    # compare: accuracy in % in the finals table as in its chart; a run's colour is its own
    styles = []
    for order in ((done.id, cancelled.id), (cancelled.id, done.id)):
        tab.goto(f"{api}/ui/?compare={','.join(map(str, order))}")
        drawn = f".distill-compare[data-drawn='1'][data-runs^='[[{order[0]},']"
        tab.wait_for_selector(drawn, state="attached", timeout=2 * SERVER_MS)
        styles.append(
            tab.evaluate(f"""() => Object.fromEntries([...document.querySelectorAll("{drawn} .distill-chart")]
            .filter(d => d.data).flatMap(d => d.data.map(t => [t.meta.run, t.line.color + ' ' + t.line.dash])))""")
        )
        finals = tab.locator("#final-metrics")
        expect(finals.get_by_role("columnheader", name="eval/exact_match (%)", exact=True)).to_have_count(1)
        expect(finals.get_by_role("row").filter(has_text=f"#{done.id} done")).to_contain_text("60")
    accuracy = tab.evaluate(chart_js("eval_accuracy", "return gd.data[0].y.at(-1);", root=".distill-compare"))
    assert accuracy == pytest.approx(60.0)
    assert styles[0] == styles[1] and styles[0][str(done.id)] != styles[0][str(cancelled.id)], styles


def _contrast(rgb_text: str, background: str) -> float:
    def luminance(text: str) -> float:
        channels = [int(c) / 255 for c in re.findall(r"[\d.]+", text)[:3]]
        lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    high, low = sorted((luminance(rgb_text), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_help_text_is_readable_and_cancel_asks_first(api, tab):
    from playwright.sync_api import expect

    with Session(get_engine()) as session:
        running = add_run(session, name="keep me running", status="running", steps=3, keys=("loss",))
    tab.goto(f"{api}/ui/")
    expect(tab.get_by_text("1 run(s) match")).to_be_visible(timeout=2 * SERVER_MS)

    # every field's help text against what is behind it: WCAG AA, 4.5:1
    tab.get_by_role("tab", name="Launch").click()
    expect(tab.locator("#spec-student .info-text")).to_be_visible()
    pairs = tab.evaluate("""() => [...document.querySelectorAll('.info-text')].filter(e => e.offsetParent).map(e => {
        let b = e, bg;
        while (b && (bg = getComputedStyle(b).backgroundColor) === 'rgba(0, 0, 0, 0)') b = b.parentElement;
        return [getComputedStyle(e).color, bg || 'rgb(255, 255, 255)', e.textContent.slice(0, 40)]; })""")
    assert len(pairs) > 10, pairs
    low = [(text, round(_contrast(fg, bg), 2)) for fg, bg, text in pairs if _contrast(fg, bg) < 4.5]
    assert not low, low

    # Cancel run: a dismissed confirmation sends no event, the run keeps running; accepting cancels it
    tab.get_by_role("tab", name="Runs").click()
    selected = tab.locator("#selected-run input")
    selected.fill(str(running.id))
    selected.press("Tab")
    cancel_fn = tab.evaluate("""() => { const c = window.gradio_config;  // the event the button's click starts
        const id = c.components.find(x => x.props && x.props.elem_id === 'cancel-run').id;
        return c.dependencies.find(d => d.targets.some(t => t[0] === id && t[1] === 'click')).id; }""")
    sent: list[str] = []
    tab.on("request", lambda r: sent.append(r.post_data or "") if "/queue/join" in r.url else None)
    asked: list[str] = []

    def dismiss(dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    tab.once("dialog", dismiss)
    tab.get_by_role("button", name="Cancel run").click()
    deadline = time.monotonic() + 30
    while not asked:
        assert time.monotonic() < deadline, "Cancel run asked nothing"
        tab.wait_for_timeout(100)
    assert asked[0].startswith(f"Cancel run {running.id}?"), asked
    with Session(get_engine()) as session:
        assert not session.get(Run, running.id).cancel_requested
    tab.once("dialog", lambda dialog: dialog.accept())
    tab.get_by_role("button", name="Cancel run").click()
    expect(tab.locator("#run-action-message")).to_contain_text(f"Run {running.id} asked to stop")
    cancels = [body for body in sent if f'"fn_index":{cancel_fn},' in body.replace(" ", "")]
    assert len(cancels) == 1, cancels  # the accepted click only: the dismissed one never reached the server
    with Session(get_engine()) as session:
        run = session.get(Run, running.id)
        assert run.status == "running" and run.cancel_requested
