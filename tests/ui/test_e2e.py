"""The real dashboard in headless Chromium: the API + dashboard (uvicorn) and a Celery worker run as
subprocesses against the test database and Redis, and the miniature toy task trains for real.

One story, in order: launch the toy example from the form, watch its charts fill, cancel a
second run, compare the two. Screenshots of each view go to test-artifacts/ui/ (and to docs/img/
with DISTILL_DOCS_SCREENSHOTS=1, which is how the README's are taken).
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Iterator

import pytest

from tests.services import free_port, stop_group, wait_until_serving
from tests.ui.browser import ARTIFACTS, BROWSER_TEST, open_page, start_api, start_process
from tests.ui.browser import shot as _shot

pytestmark = BROWSER_TEST


@pytest.fixture
def service(service_env, toy_dir, tmp_path) -> Iterator[str]:
    """The base URL of a running API + dashboard with one CPU worker."""
    port = free_port()
    server = start_api(port, tmp_path / "api.log")
    worker = start_process(
        [sys.executable, "-m", "app.cli", "worker", "--loglevel", "WARNING"], tmp_path / "worker.log"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/ui/", server, tmp_path / "api.log")
        yield url
    finally:
        stop_group(worker, timeout=20)
        stop_group(server, timeout=20)
        for name in ("api.log", "worker.log"):
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / name, ARTIFACTS / name)


@pytest.fixture
def page():
    with open_page(timeout_ms=120_000) as page:
        yield page


def _fill_number(page, field: str, value: int) -> None:
    box = page.locator(f"#spec-{field} input").first
    box.fill(str(value))
    box.press("Tab")


def _launch_toy(page, preset: str, name: str, max_steps: int, eval_every: int, shot: str | None = None) -> int:
    """Launch tab: an example preset with tiny batches; returns the new run's id."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Launch").click()
    page.get_by_label("preset (examples/)").click()
    page.get_by_role("option", name=preset).click()
    expect(page.locator("#form-message")).to_contain_text("Loaded preset")
    page.get_by_label("experiment name").fill(name)
    for accordion, inside in (("Training", "max_steps"), ("Data", "eval_examples")):
        if not page.locator(f"#spec-{inside} input").first.is_visible():
            page.get_by_role("button", name=accordion).click()
    for field, value in {"max_steps": max_steps, "batch_size": 2, "max_new_tokens": 8, "eval_examples": 4,
                         "eval_every": eval_every, "save_every": eval_every}.items():  # fmt: skip
        _fill_number(page, field, value)
    expect(page.locator("#spec-max_steps input").first).to_have_value(str(max_steps))
    if shot:
        _shot(page, shot)
    page.locator("#launch-button").click()
    expect(page.locator("#form-message")).to_contain_text("Queued run", timeout=120_000)
    run_id = int(re.search(r"Queued run (\d+)", page.locator("#form-message").inner_text()).group(1))
    return run_id


# points drawn in the live loss chart (Plotly, ui/static/charts.js): grows as the run's points stream in
LOSS_SEGMENTS = """() => { const gd = document.querySelector('.distill-chart[data-family="loss"]');
    return gd && gd.data ? gd.data.reduce((n, t) => n + t.x.length, 0) : 0; }"""


def test_launch_watch_cancel_compare(service, page):
    from playwright.sync_api import expect

    page.goto(f"{service}/ui/")
    expect(page.get_by_text("0 run(s) match")).to_be_visible(
        timeout=120_000
    )  # the page is connected: its load event ran
    _shot(page, "runs-empty")

    # launch the toy example from the form; the dashboard jumps to the run's live view. A toy step
    # takes ~20 ms, so the run needs a few hundred steps to be watched while it trains.
    first = _launch_toy(
        page, "On-policy GKD (λ=1, β=0.5)", "toy on-policy GKD", max_steps=400, eval_every=200, shot="launch"
    )
    header = page.locator("#live-header")
    expect(header).to_contain_text(f"Run {first}", timeout=120_000)

    # the chart gains points while the worker trains (the view follows on its own: no reloads)
    expect(header).to_contain_text("running", timeout=180_000)
    while_running: list[int] = []  # line segments seen while the header said running
    deadline = time.monotonic() + 900  # ~20 ms a step when idle; 3.4 s a step was seen at load 20
    while "succeeded" not in (text := header.inner_text()):
        assert "failed" not in text, text
        assert time.monotonic() < deadline, f"run {first} did not finish: {text}"
        if "running" in text:
            while_running.append(page.evaluate(LOSS_SEGMENTS))
            if while_running[-1] > 0 and len(set(while_running) - {0}) == 1:
                _shot(page, "live-running")
        time.sleep(0.5)
    drawn = [n for n in while_running if n > 0]
    assert drawn, f"no points were drawn while the run was running: {while_running}"
    page.wait_for_function(f"({LOSS_SEGMENTS})() > {drawn[0]}", timeout=120_000)  # and more arrived after
    # the student's evaluation before its first update is the eval curve's first point
    page.wait_for_function("""() => { const gd = document.querySelector('.distill-chart[data-family="eval_accuracy"]');
        return gd && gd.data && gd.data[0].x[0] === 0; }""", timeout=60_000)  # fmt: skip
    expect(page.locator("#samples")).to_contain_text("Eval samples at step 400", timeout=120_000)
    assert page.locator("#samples .tok[data-div]").count() > 0  # the heat map has scored tokens
    _shot(page, "live")

    # a second, longer run: see it appear in the table, then cancel it while it runs
    second = _launch_toy(page, "Supervised KD (λ=0, β=0)", "toy run to cancel", max_steps=100_000, eval_every=1000)
    expect(header).to_contain_text(re.compile(r"running · step \d*[1-9]\d*/100000"), timeout=240_000)  # a few points
    page.get_by_role("tab", name="Runs").click()
    table = page.locator("#runs-table")
    expect(table).to_contain_text("toy run to cancel")
    table.get_by_text("toy run to cancel", exact=True).filter(visible=True).first.click()
    expect(page.locator("#selected-run input")).to_have_value(str(second))
    _shot(page, "runs")
    page.once("dialog", lambda dialog: dialog.accept())  # Cancel asks first (ui/static/confirm.js)
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-action-message")).to_contain_text(f"Run {second}")
    expect(table.locator("tr", has_text="toy run to cancel")).to_contain_text("cancelled", timeout=120_000)

    # compare the two through the shareable link
    page.goto(f"{service}/ui/?compare={first},{second}")
    expect(page.locator("#compare-link")).to_contain_text(f"?compare={first},{second}", timeout=120_000)
    expect(page.locator("#spec-diff")).to_contain_text("max_steps")
    expect(page.locator("#final-metrics")).to_contain_text("toy run to cancel")
    page.wait_for_function("() => document.querySelectorAll('.distill-compare .scatterlayer .trace').length >= 2",
                           timeout=60_000)  # fmt: skip
    _shot(page, "compare")
