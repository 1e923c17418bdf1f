"""A bounded schemathesis run over /openapi.json with every check (`st run --checks all`): no 5xx, every
status and header declared, responses that match their schema, valid data accepted, invalid data
rejected, declared auth enforced.

A few generated requests per operation, valid (positive) and invalid (negative) ones, against the real
database and Redis of the session (run once more with DISTILL_TEST_SQLITE=1 for SQLite), with auth off
(the token optional, as the document then says) and on (a bearer token, which must be enforced). The
figures are printed (`-s`): operations, requests, failures, and the semantic 422s let through (below).

One kind of 422 cannot be declared in a JSON schema: a submitted spec whose fields are each valid but
do not go together (`objective: minillm` with `lmbda: 0.5`), or that names files the server does not
have (the preflight), or a sweep of more runs than the server's DISTILL_SWEEP_MAX_RUNS. A submit route's
422 on schema-valid data passes only when every entry of its `detail` is such a rule (`type`
`spec_combination`, `spec_error` or `sweep_error` at a spec field, or `sweep_too_large`); anything
else (an undeclared limit on a name, a tag, an id) fails the test.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.openapi.checks import RejectedPositiveData
from sqlmodel import Session

from app.auth import create_token
from app.db import get_engine
from app.main import create_app
from app.settings import get_settings
from tests.helpers.specs import tiny_spec

EXAMPLES = 12  # per operation and mode: the whole run stays under a minute or two on a loaded 2-core box
SKIPPED = {"/api/runs/{run_id}/events"}  # a live stream: a generated id that exists would follow it until the run ends
SUBMITS = {"POST /api/experiments", "POST /api/experiments/yaml", "POST /api/sweeps"}
SEMANTIC_TYPES = {"spec_combination", "spec_error", "sweep_error"}  # at a spec field (of a setting)
TOO_LARGE = "sweep_too_large"  # more runs than the server's DISTILL_SWEEP_MAX_RUNS


def semantic_rejection(label: str, response) -> bool:
    """A submit's 422 whose every problem is a spec rule no schema can state (module docstring)."""
    if label not in SUBMITS or response.status_code != 422:
        return False
    detail = response.json().get("detail")
    return bool(detail) and all(
        p["loc"][:1] == ["body"] and (p["type"] == TOO_LARGE or (p["type"] in SEMANTIC_TYPES and len(p["loc"]) >= 3))
        for p in detail
    )


def fuzz_operation(operation, mode: GenerationMode, headers: dict[str, str], figures: dict) -> None:
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(headers=headers)
        figures["requests"] += 1
        try:
            case.validate_response(response, headers=headers)  # every check enabled (schemathesis 4's default)
        except FailureGroup as group:
            for failure in group.exceptions:
                if isinstance(failure, RejectedPositiveData) and semantic_rejection(operation.label, response):
                    figures["semantic"][operation.label] += 1
                    continue
                figures["failures"].append(
                    f"{case.method} {case.formatted_path} query={case.query} body={str(case.body)[:300]!s}"
                    f" -> {response.status_code} {response.text[:300]}\n{failure}"
                )

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # an operation without parameters has no invalid request


@pytest.mark.parametrize("auth", ["off", "on"])
def test_every_check_passes(client, service_env, monkeypatch, auth):
    headers: dict[str, str] = {}
    if auth == "on":
        monkeypatch.setenv("DISTILL_AUTH", "on")
        get_settings.cache_clear()
        with Session(get_engine()) as session:
            headers = {"Authorization": f"Bearer {create_token(session=session, name='fuzzer')}"}
    seen = client.post("/api/experiments", json={"name": "seen", "spec": tiny_spec()}, headers=headers)
    assert seen.status_code == 201, seen.text  # a run and an experiment with ids 1..: lookups find one
    app = create_app(ui=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    figures: dict = {"operations": 0, "requests": 0, "failures": [], "semantic": Counter()}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIPPED:
            continue
        figures["operations"] += 1
        for mode in GenerationMode:
            fuzz_operation(operation, mode, headers, figures)
    seconds = time.monotonic() - started
    database = get_engine().dialect.name
    print(
        f"\nschemathesis (auth {auth}) on {database}: {figures['operations']} operations, {figures['requests']} "
        f"requests, {len(figures['failures'])} failures, semantic 422s {dict(figures['semantic'])}, {seconds:.0f} s"
    )
    assert figures["operations"] >= 15 and figures["requests"] >= figures["operations"]
    assert not figures["failures"], "\n\n".join(figures["failures"][:8])
