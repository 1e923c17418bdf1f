"""Browser tests wait for server-side work on a shared, often loaded 2-core machine: no assertion may
use Playwright's default 5 s (a run-table refresh once took longer than that and failed the suite)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ui.browser import serve_dashboard

try:
    from playwright.sync_api import expect
except ImportError:  # the browser tests skip themselves without Playwright
    pass
else:
    expect.set_options(timeout=60_000)


@pytest.fixture
def api(service_env, toy_dir, tmp_path, request) -> Iterator[str]:
    """The base URL of a running API + dashboard (no worker: runs stay queued unless a test moves them)."""
    with serve_dashboard(tmp_path, request.module.__name__.rpartition(".")[2]) as url:
        yield url
