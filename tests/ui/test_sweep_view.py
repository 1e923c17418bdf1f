"""The Sweep view in headless Chromium: the API + dashboard as a subprocess on the test database and Redis
(no worker: a sweep is created through the service and its runs finished as a worker would leave them).

/ui/?sweep=ID opens the sweep: the groups table with the chosen setting marked, its header, the mean
curves with their bands and the setting plot drawn; then a sweep launched from the YAML box (a bad one
first, refused naming the field) opens in the same view and is cancelled as a whole. Screenshot:
test-artifacts/ui/sweep.png (docs/img/dashboard-sweep.png with DISTILL_DOCS_SCREENSHOTS=1).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.specs import tiny_spec
from tests.ui.browser import BROWSER_TEST, SERVER_MS, open_page
from tests.ui.browser import shot as _shot
from tests.ui.test_sweeps import SCORES, scored_sweep

pytestmark = BROWSER_TEST

BEST = "learning_rate=0.001, beta=0.5"
TRACES = "(sel) => document.querySelectorAll(sel + ' .scatterlayer .trace').length"


@pytest.fixture
def tab():
    with open_page(width=1440, height=1100) as page:
        yield page


def _type_yaml(tab, text: str) -> None:
    from playwright.sync_api import expect

    editor = tab.locator("#sweep-yaml .cm-content")
    editor.click()
    tab.keyboard.press("Control+a")
    tab.keyboard.press("Delete")
    tab.keyboard.type(text)
    expect(editor).to_have_text(text.strip().replace("\n", ""), timeout=10_000)


def test_the_sweep_view_marks_the_chosen_setting_and_draws_its_charts(api, tab):
    from playwright.sync_api import expect

    sweep_id = scored_sweep()
    elsewhere: list[str] = []  # the page works offline: Gradio's own Plotly bundle, nothing from a CDN
    tab.on("request", lambda r: None if r.url.startswith((api, "data:", "blob:")) else elsewhere.append(r.url))
    tab.goto(f"{api}/ui/?sweep={sweep_id}")
    header = tab.locator("#sweep-header")
    expect(header).to_contain_text(f"Sweep {sweep_id} · lr-beta", timeout=2 * SERVER_MS)
    expect(header).to_contain_text(f"Chosen setting ★ {BEST}")
    groups = tab.locator("#sweep-groups")
    for label in SCORES:
        expect(groups).to_contain_text(label)
    expect(groups.get_by_role("row").filter(has_text=BEST)).to_contain_text("★")
    expect(groups.get_by_role("row").filter(has_text=BEST)).to_contain_text("64.00")
    running = groups.get_by_role("row").filter(has_text="learning_rate=0.01, beta=0.5")
    expect(running).to_contain_text("2 succeeded, 1 running")
    # 4 mean lines + 4 bands; the setting plot: a line per beta and the chosen star
    tab.wait_for_function(f"({TRACES})('#sweep-curves') >= 8", timeout=SERVER_MS)
    tab.wait_for_function(f"({TRACES})('#sweep-setting-plot') >= 3", timeout=SERVER_MS)
    expect(tab.locator("#sweep-curves")).to_contain_text(f"★ {BEST}")  # the legend
    expect(tab.locator("#sweeps-table")).to_contain_text("lr-beta")
    tab.locator("#sweep-groups").scroll_into_view_if_needed()
    _shot(tab, "sweep")
    assert elsewhere == []

    # the export link is the REST API's, one row per run
    rows = tab.request.get(f"{api}/api/sweeps/{sweep_id}/export?format=json").json()
    assert len(rows) == 12 and {r["group"] for r in rows} == set(SCORES)

    # launch a sweep from the YAML box: a typo is refused naming the field, a good one opens in the view
    tab.get_by_role("button", name="Launch a sweep").click()
    spec = json.dumps(tiny_spec())
    _type_yaml(tab, f"name: from the page\nspec: {spec}\ngrid: {{bta: [0.0, 0.5]}}\nseeds: [0, 1]\n")
    message = tab.locator("#sweep-form-message")
    tab.get_by_role("button", name="Launch sweep", exact=True).click()
    expect(message).to_contain_text("grid.bta", timeout=SERVER_MS)
    expect(message).to_contain_text("did you mean 'beta'")
    _type_yaml(tab, f"name: from the page\nspec: {spec}\ngrid: {{beta: [0.0, 0.5]}}\nseeds: [0, 1]\n")
    tab.get_by_role("button", name="Launch sweep", exact=True).click()
    expect(message).to_contain_text("Queued sweep", timeout=SERVER_MS)
    new_id = int(message.inner_text().split("Queued sweep ")[1].split()[0])
    expect(header).to_contain_text(f"Sweep {new_id} · from the page · queued", timeout=SERVER_MS)
    expect(tab.locator("#sweeps-table")).to_contain_text("from the page", timeout=SERVER_MS)  # the tick saw it

    # Cancel asks first (ui/static/confirm.js): dismissed, nothing is sent; accepted, the sweep is cancelled,
    # and its message counts all 4 runs, which it could not had the dismissed click cancelled them
    asked: list[str] = []
    tab.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    tab.get_by_role("button", name="Cancel sweep").click()
    tab.wait_for_function("() => true")  # one round trip through the page: the dialog has been handled
    assert asked and asked[0].startswith(f"Cancel sweep {new_id}?"), asked
    tab.once("dialog", lambda dialog: dialog.accept())
    tab.get_by_role("button", name="Cancel sweep").click()
    expect(tab.locator("#sweep-action-message")).to_contain_text(f"Sweep {new_id} cancelled: 4 cancelled")
    expect(header).to_contain_text("cancelled", timeout=SERVER_MS)
