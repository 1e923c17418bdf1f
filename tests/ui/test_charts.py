"""The dashboard's charts in headless Chromium against the real app (uvicorn subprocess), the test
database and Redis. Points are logged through the worker's real DatabaseReporter (database write,
then XADD onto the run's event stream), and the page must draw them without a reload.

Checks: chart titles and y-axis labels (metric and unit), one family per chart, the step-0 eval
point, raw + smoothed traces, the log-scale toggle, a zoom that fetches finer buckets, streaming
(with its latency asserted loosely: timing targets are in benchmarks/bench_dashboard.py), a run
without points showing no empty chart frames, and a five-metric comparison drawing five charts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import insert
from sqlmodel import Session

from tests.ui.browser import BROWSER_TEST, open_page, serve_dashboard, shot
from tests.ui.factories import add_run

pytestmark = BROWSER_TEST

DENSE = ("loss", "loss/kd", "div/fkl", "div/rkl", "lr", "grad_norm", "perf/tokens_per_sec")
TOY_SPEC = {"teacher": "toy:teacher", "student": "toy:student", "eval_metric": "countdown", "eval_temperature": 1.0}


def chart(family: str) -> str:
    return f'.distill-chart[data-family="{family}"]'


def trace_js(family: str, body: str) -> str:
    """A JS function over the Plotly div of `family` (gd); null while it is not drawn."""
    return f"() => {{ const gd = document.querySelector('{chart(family)}'); if (!gd || !gd.data) return null; {body} }}"


def _shot(page, name: str) -> None:
    """To test-artifacts/ui/ only: the docs' screenshots come from test_e2e.py's real training run."""
    shot(page, name, docs=False)


@pytest.fixture
def page():
    with open_page() as page:
        yield page


@pytest.fixture
def server(service_env, tmp_path) -> Iterator[str]:
    with serve_dashboard(tmp_path, "charts") as url:
        yield url


def seed_running_run(steps: int, name: str = "streamed run") -> int:
    """A running run with `steps` dense points per key and evaluations at steps 0 and steps // 2."""
    from app.db import get_engine
    from app.models import MetricPoint

    with Session(get_engine()) as session:
        run = add_run(session, name=name, status="running", steps=steps, keys=DENSE,
                      spec={**TOY_SPEC, "max_steps": 10_000})  # fmt: skip
        t0 = time.time() - steps
        evals = [{"run_id": run.id, "step": s, "key": k, "value": v, "wall_time": t0 + s}
                 for s, acc in ((0, 0.55), (steps // 2, 0.37)) for k, v in (("eval/exact_match", acc), ("eval/div/fkl", 1.2))]  # fmt: skip
        session.execute(insert(MetricPoint), evals)
        session.commit()
        return run.id


def test_live_charts_read_at_a_glance(server, page):
    from playwright.sync_api import expect

    run_id = seed_running_run(steps=3000)
    page.goto(f"{server}/ui/?run={run_id}")
    expect(page.locator("#live-header")).to_contain_text(f"Run {run_id}", timeout=120_000)
    expected = {  # family: (title, y-axis label)
        "loss": ("Training loss", "loss (nats/token)"),
        "divergence": ("Divergence to the teacher", "divergence (nats/token)"),
        "eval_accuracy": ("Eval accuracy", "accuracy (%)"),
        "lr": ("Learning rate", "learning rate"),
        "grad_norm": ("Gradient norm", "L2 norm"),
        "throughput": ("Training throughput", "tokens/s"),
    }
    for family, (title, unit) in expected.items():
        expect(page.locator(f"{chart(family)} .gtitle")).to_contain_text(title)
        expect(page.locator(f"{chart(family)} .ytitle")).to_have_text(unit)
        expect(page.locator(f"{chart(family)} .xtitle")).to_have_text("optimizer step")
    # one family per chart: accuracy never shares an axis with a divergence
    names = page.evaluate(trace_js("eval_accuracy", "return gd.data.map(t => t.name);"))
    assert names == ["eval/exact_match"], names
    assert page.locator(".distill-chart").count() == 7  # the families this run logged, no empty frame
    # the step-0 evaluation is a drawn point, in %, with markers; the teacher's score is a reference line
    first = page.evaluate(trace_js("eval_accuracy", "const t = gd.data[0]; return [t.x[0], t.y[0], t.mode];"))
    assert first[0] == 0 and first[1] == pytest.approx(55.0) and first[2] == "lines+markers", first
    expect(page.locator(f"{chart('eval_accuracy')} .annotation-text")).to_contain_text("teacher toy:teacher")
    # the history is downsampled (500 points per series at most), spikes kept by the server
    n_loss = page.evaluate(trace_js("loss", "return gd.data[0].x.length;"))
    assert 0 < n_loss <= 500, n_loss

    # log scale: the toggle switches every chart's y axis
    page.locator(".distill-log").first.check()
    page.wait_for_function(trace_js("loss", "return gd._fullLayout.yaxis.type === 'log';"), timeout=60_000)
    assert page.evaluate(trace_js("grad_norm", "return gd._fullLayout.yaxis.type;")) == "log"
    page.locator(".distill-log").first.uncheck()
    page.wait_for_function(trace_js("loss", "return gd._fullLayout.yaxis.type === 'linear';"), timeout=60_000)

    # zoom on steps 1000..1100: finer buckets of that range are fetched (every step there: 101 points)
    page.evaluate(f"() => Plotly.relayout(document.querySelector('{chart('loss')}'), {{'xaxis.range': [1000, 1100]}})")
    page.wait_for_function(trace_js("loss", "return gd.dataset.zoomedPoints > 0 && gd.data[0].x.length === 101;"),
                           timeout=60_000)  # fmt: skip
    steps = page.evaluate(trace_js("loss", "return [gd.data[0].x[0], gd.data[0].x.at(-1)];"))
    assert steps == [1000, 1100], steps

    # smoothing: a faint raw trace under the smoothed one; the sparse eval series stays unsmoothed
    box = page.locator("#live-smoothing input[type=number]")
    box.fill("0.8")
    box.press("Enter")
    box.blur()
    page.wait_for_function(trace_js("divergence", "return gd.data.length === 4;"), timeout=60_000)
    raw, smooth = page.evaluate(
        trace_js("divergence", "return gd.data.slice(0, 2).map(t => [t.name, t.opacity ?? 1]);")
    )
    assert raw == ["div/fkl (raw)", 0.25] and smooth == ["div/fkl (smoothed 0.8)", 1], (raw, smooth)
    assert page.evaluate(trace_js("eval_accuracy", "return gd.data.length;")) == 1
    # debiased EMA: the smoothed curve starts at the first raw value, and is calmer than the raw one
    first_raw, first_smooth, spread_raw, spread_smooth = page.evaluate(
        trace_js(
            "divergence",
            """
        const spread = (ys) => Math.max(...ys.slice(100)) - Math.min(...ys.slice(100));
        return [gd.data[0].y[0], gd.data[1].y[0], spread(gd.data[0].y), spread(gd.data[1].y)];""",
        )
    )
    assert first_smooth == pytest.approx(first_raw) and spread_smooth < spread_raw

    # hover: the exact value of every series with its step and wall time
    box = page.locator(f"{chart('loss')} .nsewdrag").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    hover = page.locator(f"{chart('loss')} .hoverlayer")
    expect(hover).to_contain_text("loss (smoothed 0.8)")
    expect(hover).to_contain_text(re.compile(r"step \d+ · \d\d:\d\d:\d\d \(\+"))
    _shot(page, "charts-live")


def test_points_stream_in_without_a_reload(server, page):
    from playwright.sync_api import expect

    from app import events
    from app.db import get_engine
    from worker.reporter import DatabaseReporter

    run_id = seed_running_run(steps=50)
    page.goto(f"{server}/ui/?run={run_id}")
    expect(page.locator("#live-header")).to_contain_text(f"Run {run_id}", timeout=120_000)
    page.wait_for_function(trace_js("loss", "return gd.data[0].x.length === 50;"), timeout=120_000)
    expect(page.locator(".distill-status")).to_contain_text("following the run live")
    page.evaluate("() => { window.distillCharts.draws.length = 0; window.__marker = 1; }")  # gone after a reload

    reporter = DatabaseReporter(run_id, engine=get_engine(), redis_client=events.redis_client(), flush_seconds=0.2)
    try:
        for step in range(51, 61):
            reporter.log(step, {"loss": 1.0 / step, "grad_norm": 0.5, "eval/exact_match": 0.6} if step == 60 else
                         {"loss": 1.0 / step, "grad_norm": 0.5})  # fmt: skip
            time.sleep(0.05)
        reporter.flush()
    finally:
        reporter.close()
    page.wait_for_function(trace_js("loss", "return gd.data[0].x.at(-1) === 60 && gd.data[0].x.length === 60;"),
                           timeout=60_000)  # fmt: skip
    page.wait_for_function(trace_js("eval_accuracy", "return gd.data[0].x.at(-1) === 60;"), timeout=60_000)
    assert page.evaluate("() => window.__marker") == 1  # the same page: no reload
    draws = page.evaluate("() => window.distillCharts.draws")
    assert {d["step"] for d in draws if d["key"] == "loss"} == set(range(51, 61))
    latencies = [d["drawn"] - d["logged"] for d in draws]
    assert all(0 <= ms < 30_000 for ms in latencies), latencies  # loose: the targets are benchmarked
    _shot(page, "charts-streamed")


def test_a_run_without_points_shows_no_empty_frames(server, page):
    from playwright.sync_api import expect

    from app.db import get_engine

    with Session(get_engine()) as session:
        run = add_run(session, name="queued run", status="queued", steps=0)
    page.goto(f"{server}/ui/?run={run.id}")
    expect(page.locator("#live-header")).to_contain_text(f"Run {run.id}", timeout=120_000)
    expect(page.locator(".distill-live .distill-empty")).to_contain_text("No data yet")
    assert page.locator(".distill-chart").count() == 0


def test_compare_draws_one_chart_per_metric_for_five_metrics(server, page):
    from playwright.sync_api import expect

    from app.db import get_engine

    keys = ["loss", "div/fkl", "div/rkl", "eval/exact_match", "lr"]
    with Session(get_engine()) as session:
        ids = [add_run(session, name=f"beta {b}", spec={"beta": b}, steps=400, keys=tuple(keys), seed=i).id
               for i, b in enumerate((0.0, 0.5, 1.0))]  # fmt: skip
    page.goto(f"{server}/ui/?compare={','.join(map(str, ids))}")
    expect(page.locator("#compare-link")).to_contain_text("?compare=", timeout=120_000)
    dropdown = page.get_by_label("metrics")
    for key in ("lr",):  # 4 by default; a 5th is no longer ignored
        dropdown.click()
        dropdown.fill(key)
        page.get_by_role("option", name=key, exact=True).click()
    page.keyboard.press("Escape")
    page.locator("#compare-button").click()
    drawn = ".distill-compare[data-drawn='1'][data-keys*='lr']"
    page.wait_for_selector(drawn, state="attached", timeout=60_000)
    assert page.locator(".distill-compare").count() == 1
    titles = page.locator(f"{drawn} .gtitle").all_text_contents()
    assert titles == [
        "Training loss · loss", "Divergence to the teacher (training batches) · div/fkl",
        "Divergence to the teacher (training batches) · div/rkl", "Eval accuracy (exact match) · eval/exact_match",
        "Learning rate · lr",
    ], titles  # fmt: skip
    per_chart = f"() => [...document.querySelectorAll(`{drawn} .distill-chart`)].map(d => d.data ? d.data.length : -1)"
    page.wait_for_function(f"({per_chart})().join() === '3,3,3,3,3'", timeout=60_000)  # three runs in each
    assert page.locator(f"{drawn} .ytitle").first.text_content() == "loss (nats/token)"
    _shot(page, "charts-compare")
