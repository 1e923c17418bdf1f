"""A bounded schemathesis run over /openapi.json with every check (`st run --checks all`): no 5xx, every
status and header declared, responses that match their schema, valid data accepted, invalid data
rejected, declared auth enforced, undeclared methods a 405 with a true `Allow`.

schemathesis's own engine runs every phase the CLI runs (examples, coverage, fuzzing, stateful), with
a few generated requests per operation, valid (positive) and invalid (negative) ones, against the real
database and Redis of the session (run once more with DISTILL_TEST_SQLITE=1 for SQLite), with auth off
(the token optional, as the document then says) and on (a bearer token, which must be enforced). The
figures are printed (`-s`): requests, failures, and the semantic 422s let through (below).

One kind of 422 cannot be declared in a JSON schema: a submitted spec whose fields are each valid but
do not go together (`objective: minillm` with `lmbda: 0.5`), or that names files the server does not
have (the preflight), or a sweep of more runs than the server's DISTILL_SWEEP_MAX_RUNS. A submit route's
422 on schema-valid data passes only when every entry of its `detail` is such a rule (`type`
`spec_combination`, `spec_error` or `sweep_error` at a spec field, or `sweep_too_large`); anything
else (an undeclared limit on a name, a tag, an id) fails the test.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from schemathesis import engine
from schemathesis.engine import Status, events
from sqlmodel import Session

from app.auth import create_token
from app.db import get_engine
from app.main import create_app
from app.settings import get_settings
from tests.helpers.specs import tiny_spec

EXAMPLES = 12  # per operation and phase: the whole run stays within a couple of minutes on a loaded 2-core box
SKIPPED = "/api/runs/{run_id}/events"  # a live stream: a generated id that exists would follow it until the run ends
SUBMITS = {"POST /api/experiments", "POST /api/experiments/yaml", "POST /api/sweeps"}
SEMANTIC_TYPES = {"spec_combination", "spec_error", "sweep_error"}  # at a spec field (of a setting)
TOO_LARGE = "sweep_too_large"  # more runs than the server's DISTILL_SWEEP_MAX_RUNS


def semantic_rejection(label: str, response) -> bool:
    """A submit's 422 whose every problem is a spec rule no schema can state (module docstring)."""
    if label not in SUBMITS or response is None or response.status_code != 422:
        return False
    detail = json.loads(response.content).get("detail")
    return bool(detail) and all(
        p["loc"][:1] == ["body"] and (p["type"] == TOO_LARGE or (p["type"] in SEMANTIC_TYPES and len(p["loc"]) >= 3))
        for p in detail
    )


def fuzz(app, headers: dict[str, str], figures: dict, cache: Path) -> None:
    """schemathesis's engine, as `st run --checks all` runs it: examples, coverage (undeclared methods,
    missing headers, boundary values), fuzzing and stateful phases, every check on every response."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path=SKIPPED)
    schema.config.generation.update(max_examples=EXAMPLES)
    schema.config.cache.directory = cache  # not .schemathesis/ in the working tree
    schema.config.update(request_timeout=60)  # a submit's preflight on a loaded box may take seconds
    schema.config.update(headers=headers)
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.FatalError | events.NonFatalError):
            what = getattr(event, "value", None) or event.exception
            figures["failures"].append(f"{type(event).__name__} ({getattr(event, 'label', '')}): {what}")
        if not isinstance(event, events.ScenarioFinished):
            continue
        recorder = event.recorder
        figures["requests"] += len(recorder.interactions)
        for case_id, checks in recorder.checks.items():
            for check in checks:
                if check.status is not Status.FAILURE:
                    continue
                case = recorder.cases[case_id].value
                interaction = recorder.interactions.get(case_id)
                response = interaction.response if interaction else None
                label = case.operation.label
                if check.name == "positive_data_acceptance" and semantic_rejection(label, response):
                    figures["semantic"][label] += 1
                    continue
                answer = f"{response.status_code} {response.content[:300]!r}" if response else "no response"
                figures["failures"].append(
                    f"[{event.phase.value}] {check.name}: {case.method} {case.formatted_path} query={case.query} "
                    f"body={str(case.body)[:300]} -> {answer}\n{check.failure_info.failure if check.failure_info else ''}"
                )


@pytest.mark.parametrize("auth", ["off", "on"])
def test_every_check_passes(client, service_env, monkeypatch, tmp_path, auth):
    headers: dict[str, str] = {}
    if auth == "on":
        monkeypatch.setenv("DISTILL_AUTH", "on")
        get_settings.cache_clear()
        with Session(get_engine()) as session:
            headers = {"Authorization": f"Bearer {create_token(session=session, name='fuzzer')}"}
    seen = client.post("/api/experiments", json={"name": "seen", "spec": tiny_spec()}, headers=headers)
    assert seen.status_code == 201, seen.text  # a run and an experiment with ids 1..: lookups find one
    figures: dict = {"requests": 0, "failures": [], "semantic": Counter()}
    started = time.monotonic()
    fuzz(create_app(ui=False), headers, figures, tmp_path / "schemathesis-cache")
    seconds = time.monotonic() - started
    print(
        f"\nschemathesis (auth {auth}) on {get_engine().dialect.name}: {figures['requests']} requests, "
        f"{len(figures['failures'])} failures, semantic 422s {dict(figures['semantic'])}, {seconds:.0f} s"
    )
    assert figures["requests"] >= 500
    assert not figures["failures"], "\n\n".join(figures["failures"][:8])
