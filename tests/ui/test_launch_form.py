"""The Launch form in headless Chromium launches exactly what it shows (the API + dashboard run as a
subprocess against the test database and Redis; no worker: the runs stay queued).

Typed into the YAML pane or into a number box, the stored spec (read back through the REST API) is
what was typed; an invalid value, in either, queues nothing and the message names the field and value.
"""

from __future__ import annotations

import re

import httpx
import pytest

from core_distill.spec import DistillSpec
from tests.ui.browser import BROWSER_TEST, SERVER_MS, open_page

pytestmark = BROWSER_TEST

SERVER = SERVER_MS


@pytest.fixture
def browser():
    with open_page(timeout_ms=30_000) as tab:
        yield tab


def _run_count(url: str) -> int:
    return httpx.get(f"{url}/api/runs", timeout=30).json()["count"]


def _stored_spec(url: str, run_id: int) -> dict:
    experiment_id = httpx.get(f"{url}/api/runs/{run_id}", timeout=30).json()["experiment_id"]
    return httpx.get(f"{url}/api/experiments/{experiment_id}", timeout=30).json()["spec"]


def _type_yaml(tab, text: str) -> None:
    """Replace the YAML pane's text by typing it, as a user would (key by key into CodeMirror)."""
    from playwright.sync_api import expect

    editor = tab.locator("#spec-yaml .cm-content")
    editor.click()
    tab.keyboard.press("Control+a")
    tab.keyboard.press("Delete")
    tab.keyboard.type(text)
    expect(editor).to_have_text(text.strip().replace("\n", ""), timeout=10_000)  # no auto-indent crept in


def _click(tab, button: str, expected) -> str:
    """Click Launch or Validate and wait for the message of this click (`expected`: text or regex).

    Consecutive steps expect different messages, so the previous one must go first.
    """
    from playwright.sync_api import expect

    tab.get_by_role("tab", name="Launch").click()
    message = tab.locator("#form-message")
    before = message.inner_text()
    tab.get_by_role("button", name=button, exact=True).click()
    expect(message).not_to_have_text(before, timeout=SERVER)
    expect(message).to_contain_text(expected, timeout=SERVER)
    return message.inner_text()


def _launch(tab, expected) -> str:
    return _click(tab, "Launch", expected)


def test_launch_launches_what_the_form_shows(api, browser):
    tab = browser
    from playwright.sync_api import expect

    tab.goto(f"{api}/ui/")
    expect(tab.get_by_text("0 run(s) match")).to_be_visible(timeout=SERVER)  # connected: its load event ran
    tab.get_by_role("tab", name="Launch").click()
    tab.get_by_label("preset (examples/)").click()
    tab.get_by_role("option", name="On-policy GKD (λ=1, β=0.5)").click()
    expect(tab.locator("#form-message")).to_contain_text("Loaded preset", timeout=SERVER)
    base = "student: toy:student\nteacher: toy:teacher\nmax_steps: 3\nbatch_size: 2\nmax_new_tokens: 8\n"

    # a misspelt key in the YAML pane: refused, naming it and the field it resembles; nothing queued
    _type_yaml(tab, base + "lmdba: 0.7\n")
    message = _launch(tab, re.compile(r"Cannot launch.*lmdba", re.S))
    assert "did you mean 'lmbda'" in message, message
    assert _run_count(api) == 0

    # a value out of range in the YAML pane: refused naming field and value, even after Apply failed
    _type_yaml(tab, base + "beta: 2\n")
    tab.get_by_role("button", name="Apply YAML to the form").click()
    expect(tab.locator("#spec-status")).to_contain_text("YAML not applied", timeout=SERVER)
    message = _launch(tab, re.compile(r"Cannot launch.*YAML pane.*beta.*got 2", re.S))
    assert _run_count(api) == 0

    # typed into the YAML pane and launched at once: the stored spec is the typed one
    typed = base + "lmbda: 0.7\nbeta: 0.25\n"
    _type_yaml(tab, typed)
    message = _launch(tab, re.compile(r"Queued run \d+"))
    first = int(re.search(r"Queued run (\d+)", message).group(1))
    assert _stored_spec(api, first) == DistillSpec.from_yaml(typed).model_dump(mode="json")
    assert _run_count(api) == 1

    # the fields follow the YAML; now a number box: out of range is neither clamped nor launched
    tab.get_by_role("tab", name="Launch").click()
    beta_box = tab.locator("#spec-beta input").first
    expect(beta_box).to_have_value("0.25", timeout=SERVER)
    beta_box.fill("2")
    beta_box.press("Tab")
    expect(tab.locator("#spec-status")).to_contain_text("beta", timeout=SERVER)
    message = _launch(tab, re.compile(r"Cannot launch.*beta.*got 2", re.S))
    assert "YAML pane" not in message  # the fields were edited last
    expect(beta_box).to_have_value("2")  # not clamped to 1
    assert _run_count(api) == 1
    _click(tab, "Validate", re.compile(r"Not valid.*beta.*got 2", re.S))
    assert _run_count(api) == 1

    # a valid value typed into the box and launched at once: stored as typed, and the YAML shows it
    beta_box.fill("0.3")
    message = _launch(tab, re.compile(rf"Queued run (?!{first}\b)\d+"))
    second = int(re.search(r"Queued run (\d+)", message).group(1))
    expected = DistillSpec.from_yaml(typed).model_dump(mode="json") | {"beta": 0.3}
    assert _stored_spec(api, second) == expected
    assert _run_count(api) == 2
    tab.get_by_role("tab", name="Launch").click()
    expect(tab.locator("#spec-yaml .cm-content")).to_contain_text("beta: 0.3", timeout=SERVER)
