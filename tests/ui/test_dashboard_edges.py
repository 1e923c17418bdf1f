"""The dashboard's rough edges, in headless Chromium (the API + dashboard as a subprocess, no worker):

- the YAML pane follows every field edit, deletions included (Backspace in a text box sent no event in
  Gradio 6.31, and the pane kept `teacherZ`), with no server round trip per keystroke: a preset plus
  four field edits cost one round trip each (the preset, and the check when a field is left);
- every text box of the form is named by its field (Gradio named it after label *and* help text);
- Validate and Launch stay in view however far the form is scrolled;
- the runs table shows each run's latest results beside its spec fields, sortable across pages by
  "sort by" and within the page by the column's own menu.
"""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import insert
from sqlmodel import Session

from app.db import get_engine
from app.models import MetricPoint
from core_distill import metric_keys as mk
from tests.ui.browser import BROWSER_TEST, SERVER_MS, open_page
from tests.ui.browser import shot as _shot
from tests.ui.factories import add_run
from ui import form

pytestmark = BROWSER_TEST

TEXT_FIELDS = [w.name for w in form.field_widgets() if w.kind == "text"]
# the refresh timers and the redraws they start: not the form's doing
TICKS = {"table_tick", "sweeps_tick", "live_tick", "hosts_markdown", "runs_table", "run_summary", "sweeps_table",
         "show_sweep"}  # fmt: skip


@pytest.fixture(params=[1440, 1920], ids=["1440px", "1920px"])
def tab(request):
    with open_page(width=request.param, height=900) as page:
        yield page


def _yaml(tab) -> str:
    return tab.locator("#spec-yaml .cm-content").inner_text()


def _connected(tab, api: str) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{api}/ui/")
    expect(tab.get_by_text("run(s) match")).to_be_visible(timeout=2 * SERVER_MS)  # its load event ran


def _form_round_trips(tab, api: str) -> list[str]:
    """Record the name of each event the page sends to the server (the refresh ticks left out)."""
    names = {d["id"]: d["api_name"] for d in httpx.get(f"{api}/ui/config", timeout=60).json()["dependencies"]}
    sent: list[str] = []

    def on_request(request) -> None:
        if request.method == "POST" and "/queue/join" in request.url:
            name = names.get(json.loads(request.post_data or "{}").get("fn_index"), "?")
            if name.rstrip("_0123456789") not in TICKS:
                sent.append(name)

    tab.on("request", on_request)
    return sent


def test_yaml_pane_follows_deletions_labels_and_sticky_buttons(api, tab):
    from playwright.sync_api import expect

    _connected(tab, api)
    sent = _form_round_trips(tab, api)
    tab.get_by_role("tab", name="Launch").click()
    pane = tab.locator("#spec-yaml .cm-content")

    # every text box is named by its field, in every accordion (they render when opened)
    for accordion in ("MiniLLM", "Data", "Training"):
        tab.get_by_role("button", name=accordion).click()
    for name in TEXT_FIELDS:
        expect(tab.get_by_role("textbox", name=name, exact=True)).to_have_count(1)

    # type, then delete: the pane follows both; a number box's deletion too
    teacher = tab.get_by_role("textbox", name="teacher", exact=True)
    teacher.click()
    tab.keyboard.press("End")
    tab.keyboard.type("Z")
    expect(pane).to_contain_text("teacher: toy:teacherZ")
    tab.keyboard.press("Backspace")
    expect(pane).not_to_contain_text("teacherZ")
    expect(pane).to_have_text("{}")  # back to the default: nothing differs
    tab.keyboard.press("Control+a")
    tab.keyboard.press("Delete")
    expect(pane).to_contain_text('teacher: ""')  # an empty string, quoted: YAML reads it back as ""
    tab.keyboard.type("toy:teacher")
    steps = tab.locator("#spec-max_steps input").first
    steps.fill("1234")
    expect(pane).to_contain_text("max_steps: 1234")
    steps.press("Backspace")
    expect(pane).to_contain_text("max_steps: 123")
    expect(pane).not_to_contain_text("1234")
    steps.press("Tab")  # leaving the field: the server checks the fields
    expect(tab.locator("#spec-status")).to_have_text("")
    tab.locator("#spec-beta input").first.fill("2")
    tab.locator("#spec-beta input").first.press("Tab")
    expect(tab.locator("#spec-status")).to_contain_text("beta")
    assert "beta: 2" in _yaml(tab)
    tab.locator("#spec-beta input").first.fill("0.5")
    tab.locator("#spec-beta input").first.press("Tab")
    expect(tab.locator("#spec-status")).not_to_contain_text("beta")

    # a preset plus four field edits: one round trip each, none per keystroke
    sent.clear()
    tab.get_by_label("preset (examples/)").click()
    tab.get_by_role("option", name="On-policy GKD (λ=1, β=0.5)").click()
    expect(tab.locator("#form-message")).to_contain_text("Loaded preset")
    for field, value in (("max_steps", "40"), ("batch_size", "2"), ("max_new_tokens", "8"), ("eval_examples", "4")):
        box = tab.locator(f"#spec-{field} input").first
        box.click()
        box.press("Control+a")
        box.type(value)  # key by key
        box.press("Tab")
        expect(pane).to_contain_text(f"{field}: {value}")
    expect(tab.locator("#spec-status")).to_have_text("")
    tab.wait_for_timeout(500)  # let a stray event show up, were one sent
    assert sorted(sent) == ["check_fields"] * 4 + ["load_preset"], sent

    # however far the form is scrolled, Validate and Launch are on screen
    tab.mouse.wheel(0, 20_000)
    tab.wait_for_function("() => window.scrollY > 500")
    height = tab.viewport_size["height"]
    for button in ("Validate", "Launch"):
        box = tab.get_by_role("button", name=button, exact=True).bounding_box()
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height, (button, box)
    _shot(tab, f"launch-scrolled-{tab.viewport_size['width']}", docs=False)


def _log(run_id: int, values: dict[str, float], step: int = 10) -> None:
    with Session(get_engine()) as session:
        session.execute(insert(MetricPoint), [{"run_id": run_id, "step": step, "key": k, "value": v,
                                               "wall_time": 1e9 + step} for k, v in values.items()])  # fmt: skip
        session.commit()


def _column(table, header: str) -> list[str]:
    headers = [h.strip() for h in table.get_by_role("columnheader").all_inner_texts()]
    index = headers.index(header)
    rows = [row.get_by_role("gridcell").all_inner_texts() for row in table.get_by_role("row").all()]
    return [cells[index].strip() for cells in rows if cells]


def test_runs_table_shows_latest_results_sortable(api, tab):
    from playwright.sync_api import expect

    results = {  # name: (eval accuracy, fkl, rkl, loss, tokens/s)
        "steady": (0.5, 0.20, 0.30, 1.25, 900.0),
        "best": (0.9, 0.10, 0.15, 0.75, 800.0),
        "worst": (0.1, 0.40, 0.50, 2.5, 1000.0),
    }
    with Session(get_engine()) as session:
        runs = {name: add_run(session, name=name, keys=()) for name in results}
    for name, values in results.items():
        _log(runs[name].id, {mk.EVAL_EXACT_MATCH: 0.01, mk.LOSS: 9.0}, step=0)  # older points: the latest counts
        _log(runs[name].id, dict(zip(mk.SUMMARY, values, strict=True)))
    _connected(tab, api)
    table = tab.locator("#runs-table")
    expect(tab.get_by_text("3 run(s) match")).to_be_visible(timeout=SERVER_MS)

    headers = [h.strip() for h in table.get_by_role("columnheader").all_inner_texts()]
    assert {mk.display_label(key) for key in mk.SUMMARY} <= set(headers), headers
    assert headers.index(mk.display_label(mk.EVAL_EXACT_MATCH)) < headers.index("student")  # results beside the spec fields
    assert _column(table, "name") == ["worst", "best", "steady"]  # newest first
    assert _column(table, mk.LOSS) == ["2.5", "0.75", "1.25"]
    assert _column(table, mk.PERF_TOKENS_PER_SEC) == ["1000", "800", "900"]

    # "sort by": every matching run, through the service (GET /api/runs?sort=...)
    tab.get_by_label("sort by").click()
    tab.get_by_role("option", name=f"{mk.display_label(mk.EVAL_EXACT_MATCH)}, highest first").click()
    expect(table.get_by_role("row").nth(1)).to_contain_text("best")
    assert _column(table, "name") == ["best", "steady", "worst"]
    tab.get_by_label("sort by").click()
    tab.get_by_role("option", name=f"{mk.DIV_FKL}, lowest first").click()
    expect(table.get_by_role("row").nth(3)).to_contain_text("worst")
    assert _column(table, "name") == ["best", "steady", "worst"]

    # the column's own menu sorts the page shown
    header = table.locator(f'th[title="{mk.LOSS}"]')  # its accessible name also holds the menu button's
    header.hover()
    header.get_by_role("button", name="Open cell menu").click()
    tab.get_by_role("menuitem", name="Sort descending").click()
    expect(table.get_by_role("row").nth(1)).to_contain_text("worst")
    assert _column(table, mk.LOSS) == ["2.5", "1.25", "0.75"]
    _shot(tab, f"runs-results-{tab.viewport_size['width']}", docs=False)
