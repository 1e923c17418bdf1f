"""The dashboard reads through app/services/ like the REST routes: no module under ui/ opens a database
session or queries a table itself (issue 22). Nothing is allow-listed."""

from __future__ import annotations

import re
from pathlib import Path

UI = Path(__file__).resolve().parents[2] / "ui"
# `select(` not after a dot or a name: a Gradio event (`table.select(...)`) is no query
FORBIDDEN = {
    "Session(": re.compile(r"\bSession\("),
    "select(": re.compile(r"(?<![.\w])select\("),
    "session.get(": re.compile(r"\bsession\.get\("),
    "session.execute(": re.compile(r"\bsession\.execute\("),
    "get_engine(": re.compile(r"\bget_engine\("),
    "crud.get_": re.compile(r"\bcrud\.get_"),
    "import of app.db": re.compile(r"^\s*(from app\.db import|import app\.db)", re.MULTILINE),
}


def direct_reads(text: str) -> list[str]:
    return [name for name, pattern in FORBIDDEN.items() if pattern.search(text)]


def test_the_scan_sees_a_direct_read() -> None:
    """The patterns catch what they are for, and let a Gradio event and a service's session through."""
    code = "with Session(get_engine()) as session:\n    run = session.get(Run, 1)\n    session.execute(select(Run))\n"
    assert direct_reads(code) == ["Session(", "select(", "session.get(", "session.execute(", "get_engine("]
    assert direct_reads("from app.db import get_engine\n") == ["import of app.db"]
    assert direct_reads("self.table.select(pick_row)\nwith open_session() as session:\n") == []


def test_ui_opens_no_session_and_runs_no_query() -> None:
    files = sorted(UI.rglob("*.py"))
    assert len(files) > 10, f"found only {len(files)} modules under {UI}"
    found = {str(p.relative_to(UI.parent)): hits for p in files if (hits := direct_reads(p.read_text()))}
    assert found == {}, f"ui/ reads the database itself (move the query to app/services/): {found}"
