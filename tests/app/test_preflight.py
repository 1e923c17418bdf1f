"""Checks at submit (issue 11, findings 4 and 8): data the engine cannot use and hub ids that cannot be
fetched are refused at create with a 422 naming the field, in seconds, without stalling other requests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core_distill.spec import DistillSpec
from tests.helpers.factories import row_counts
from tests.helpers.specs import tiny_spec
from tests.services import free_port, stop_group


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def bad_data_cases(folder: Path) -> list[tuple[dict, str, str]]:
    """(spec changes, field, words the message holds)."""
    txt = folder / "train.txt"
    txt.write_text("1+1=2\n2+2=4\n")
    prose = folder / "prose.jsonl"
    prose.write_text("Once upon a time there was a model.\nIt learned to add.\n")
    no_columns = write_jsonl(folder / "text.jsonl", [{"text": "1+1=2"}])
    prompt_only = write_jsonl(folder / "prompts.jsonl", [{"prompt": "1+1="}])
    no_teacher_prompt = write_jsonl(folder / "pairs.jsonl", [{"prompt": "1+1=", "completion": "2"}])
    empty = folder / "empty.jsonl"
    empty.write_text("\n")
    return [
        ({"train_data": str(txt)}, "train_data", "unknown data format"),
        ({"train_data": str(prose)}, "train_data", "not valid JSON"),
        ({"eval_data": str(prose)}, "eval_data", "not valid JSON"),
        ({"train_data": no_columns}, "train_data", "'messages' or 'prompt'"),
        ({"train_data": prompt_only, "lmbda": 0.5}, "train_data", "completions"),
        ({"train_data": no_teacher_prompt, "opsd": "dynamic", "teacher": ""}, "train_data", "teacher_prompt"),
        ({"train_data": str(empty)}, "train_data", "no rows"),
    ]


def test_unusable_data_is_refused_at_create_and_usable_data_in_every_format_is_not(
    client, service_env, data_dir, toy_dir
):
    before = row_counts()
    for change, field, words in bad_data_cases(data_dir):
        response = client.post("/api/experiments", json={"name": "bad data", "spec": tiny_spec(**change)})
        assert response.status_code == 422, (change, response.text)
        detail = {tuple(d["loc"]): d["msg"] for d in response.json()["detail"]}
        assert ("body", "spec", field) in detail, (change, detail)
        assert words in detail[("body", "spec", field)], (change, detail)
    assert row_counts() == before

    rows = [json.loads(line) for line in (toy_dir / "data" / "train.jsonl").read_text().splitlines()[:8]]
    json_array = data_dir / "rows.json"
    json_array.write_text(json.dumps(rows))
    parquet = data_dir / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for train in (write_jsonl(data_dir / "rows.jsonl", rows), str(json_array), str(parquet)):
        response = client.post("/api/experiments", json={"name": "ok", "spec": tiny_spec(train_data=train)})
        assert response.status_code == 201, (train, response.text)


def test_the_dashboards_validate_refuses_the_same_data(service_env, data_dir):
    from ui import form
    from ui.app import validate

    for change, field, words in bad_data_cases(data_dir):
        message = validate(*form.spec_to_values(DistillSpec.parse(tiny_spec(**change))))
        assert field in message and words in message, (change, message)


def test_a_hub_id_with_hf_hub_offline_fails_in_seconds(client, service_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = row_counts()
    started = time.monotonic()
    response = client.post("/api/experiments", json={"name": "x", "spec": tiny_spec(student="nosuchorg/nosuchmodel")})
    assert time.monotonic() - started < 10
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "spec", "student"] and "HF_HUB_OFFLINE" in problem["msg"]
    assert row_counts() == before


# --- a hub that never answers, behind a real server process --------------------------------------------
@pytest.fixture
def silent_hub() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: the hub on a machine whose network is gone."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def api_process(service_env, silent_hub) -> Iterator[str]:
    """`uvicorn app.main:create_api` in its own process, online (no HF_HUB_OFFLINE) with the silent hub."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | {"HF_ENDPOINT": silent_hub}
    command = [sys.executable, "-m", "uvicorn", "app.main:create_api", "--factory", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=Path(__file__).parents[2], start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    else:
        stop_group(process, timeout=10)
        pytest.fail("the API process did not start")
    yield url
    stop_group(process, timeout=10)


def test_a_slow_create_does_not_stall_health_and_fails_in_seconds(api_process):
    result: dict = {}

    def create() -> None:
        started = time.monotonic()
        body = {"name": "offline", "spec": tiny_spec(student="someorg/some-model", teacher="someorg/some-teacher")}
        result["response"] = httpx.post(f"{api_process}/api/experiments", json=body, timeout=120)
        result["seconds"] = time.monotonic() - started

    creator = threading.Thread(target=create)
    creator.start()
    health_times = []
    with httpx.Client(timeout=60) as client:
        while creator.is_alive():
            started = time.monotonic()
            assert client.get(f"{api_process}/api/health").status_code == 200
            health_times.append(time.monotonic() - started)
    creator.join()
    print(f"\nslow create: {result['seconds']:.1f} s; /api/health meanwhile: {len(health_times)} requests, "
          f"slowest {max(health_times) * 1000:.0f} ms")  # fmt: skip
    assert health_times and max(health_times) < 1.0, health_times
    response = result["response"]
    assert response.status_code == 422, response.text
    detail = {tuple(d["loc"]): d["msg"] for d in response.json()["detail"]}
    assert "unreachable" in detail[("body", "spec", "student")], detail
    assert "unreachable" in detail[("body", "spec", "teacher")], detail
    assert result["seconds"] < 15, result["seconds"]  # one request with a timeout, not the loaders' retries
