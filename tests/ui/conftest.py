"""Browser tests wait for server-side work on a shared, often loaded 2-core machine: no assertion may
use Playwright's default 5 s (a run-table refresh once took longer than that and failed the suite)."""

from __future__ import annotations

try:
    from playwright.sync_api import expect
except ImportError:  # the browser tests skip themselves without Playwright
    pass
else:
    expect.set_options(timeout=60_000)
