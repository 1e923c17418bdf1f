"""The dashboard's Gradio API, as a team's `gradio_client` sees it: only the meant endpoints, by
stable names, with named parameters (ui/endpoints.py); every other event stays private."""

from __future__ import annotations

import httpx
import pytest

from ui.endpoints import PUBLIC

MEANT = {
    "/runs_table": ["status", "tag_text", "field_text", "page", "sort"],
    "/validate": ["spec_yaml"],
    "/launch": ["spec_yaml", "name", "tags", "notes"],
    "/save_tags_notes": ["run_id", "tags_text", "notes"],
    "/cancel_run": ["run_id"],
    "/rerun_run": ["run_id"],
    "/resume_run": ["run_id"],
    "/validate_sweep": ["text"],
    "/launch_sweep": ["text"],
    "/cancel_sweep": ["sweep_id"],
}


def test_only_the_meant_endpoints_are_listed_and_they_work(api):
    gradio_client = pytest.importorskip("gradio_client")
    assert set(MEANT) == {f"/{name}" for name in PUBLIC}
    info = httpx.get(f"{api}/ui/gradio_api/info", timeout=60).json()
    assert info["unnamed_endpoints"] == {}
    listed = {name: [p["parameter_name"] for p in ep["parameters"]] for name, ep in info["named_endpoints"].items()}
    assert listed == MEANT

    client = gradio_client.Client(f"{api}/ui/", verbose=False)
    assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == set(MEANT)
    problems = client.predict("max_steps: -3\n", api_name="/validate")
    assert "Not valid" in problems and "max_steps" in problems
    message, run_id = client.predict("max_steps: 7\nbeta: 0.25\n", "via gradio_client", "api, toy", "",
                                     api_name="/launch")  # fmt: skip
    assert run_id is not None and f"Queued run {run_id}" in message
    spec = httpx.get(f"{api}/api/runs/{run_id}", timeout=30).json()
    experiment = httpx.get(f"{api}/api/experiments/{spec['experiment_id']}", timeout=30).json()
    assert (experiment["name"], experiment["tags"]) == ("via gradio_client", ["api", "toy"])
    assert (experiment["spec"]["max_steps"], experiment["spec"]["beta"]) == (7, 0.25)
    table, caption = client.predict("all", "toy", "", 0, "", api_name="/runs_table")
    assert "1 run(s) match" in caption
    assert table["data"][0][0] == run_id
    # a private event is not callable by name (the page itself still runs it)
    with pytest.raises(ValueError):
        client.predict(api_name="/form_changed")
