"""A bounded schemathesis run over /openapi.json: no 5xx and no response that breaks its declared schema.

A few generated requests per operation, valid (positive) and invalid (negative) ones, against the real
database and Redis of the session (run once more with DISTILL_TEST_SQLITE=1 for SQLite). The figures
are printed (`-s`) and kept in the test report: operations, requests, 5xx, violations.
"""

from __future__ import annotations

import time

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from app.db import get_engine
from app.main import create_app
from tests.helpers.factories import post_experiment

EXAMPLES = 12  # per operation and mode: the whole run stays under a minute or two on a loaded 2-core box
SKIPPED = {"/api/runs/{run_id}/events"}  # a live stream: a generated id that exists would follow it until the run ends


def fuzz_operation(operation, mode: GenerationMode, figures: dict) -> None:
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call()
        figures["requests"] += 1
        if response.status_code >= 500:
            figures["5xx"].append(f"{case.method} {case.formatted_path} -> {response.status_code}")
        try:
            case.validate_response(response, checks=[response_schema_conformance, not_a_server_error])
        except Exception as exc:  # noqa: BLE001  (schemathesis raises a FailureGroup of what failed)
            if response.status_code < 500:
                figures["violations"].append(f"{case.method} {case.formatted_path} -> {response.status_code}: {exc}")

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # an operation without parameters has no invalid request


def test_no_5xx_and_no_schema_violation(client, service_env):
    post_experiment(client, name="seen")  # a run and an experiment with ids 1.., so lookups also find something
    app = create_app(ui=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    figures: dict = {"operations": 0, "requests": 0, "5xx": [], "violations": []}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIPPED:
            continue
        figures["operations"] += 1
        for mode in GenerationMode:
            fuzz_operation(operation, mode, figures)
    seconds = time.monotonic() - started
    database = get_engine().dialect.name
    print(
        f"\nschemathesis on {database}: {figures['operations']} operations, {figures['requests']} requests, "
        f"{len(figures['5xx'])} 5xx, {len(figures['violations'])} violations, {seconds:.0f} s"
    )
    assert figures["operations"] >= 15 and figures["requests"] >= figures["operations"]
    assert not figures["5xx"], figures["5xx"]
    assert not figures["violations"], "\n".join(figures["violations"][:10])
