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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.auth import create_token
from app.db import get_engine
from app.main import create_app
from app.settings import get_settings
from core_distill.spec import DistillSpec
from tests.helpers.factories import row_counts
from tests.helpers.servers import answering_teacher_url
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


def test_a_teacher_server_url_where_nothing_answers_is_refused_in_seconds_everywhere(client, service_env, tmp_path):
    """The API's create, the dashboard's Validate and `distill run` probe teacher_server_url (issue 22)
    instead of leaving it to the worker's retries a minute after the run was queued."""
    import yaml
    from typer.testing import CliRunner

    from core_distill.cli import engine_cli
    from ui import form
    from ui.app import validate

    def remote(url: str, api: str = "distill") -> dict:
        return tiny_spec(teacher_server_url=url, teacher_server_api=api, loss_top_k=4)

    dead = f"http://127.0.0.1:{free_port()}"
    before = row_counts()
    with answering_teacher_url() as (alive, _):
        cases = [(dead, "distill", f"cannot reach a teacher server at {dead}"),
                 (f"{alive}/elsewhere", "distill", "answered GET /info with HTTP 404"),
                 (f"{alive}/elsewhere", "vllm", "answered GET /v1/models with HTTP 404")]  # fmt: skip
        for url, api, words in cases:
            started = time.monotonic()
            response = client.post("/api/experiments", json={"name": "x", "spec": remote(url, api)})
            assert time.monotonic() - started < 10
            assert response.status_code == 422, response.text
            detail = {tuple(d["loc"]): d["msg"] for d in response.json()["detail"]}
            assert words in detail.get(("body", "spec", "teacher_server_url"), ""), detail
        assert row_counts() == before
        message = validate(*form.spec_to_values(DistillSpec.parse(remote(dead))))
        assert "teacher_server_url" in message and "cannot reach a teacher server" in message, message
        spec_file = tmp_path / "remote.yaml"
        spec_file.write_text(yaml.safe_dump(remote(dead)))
        result = CliRunner().invoke(engine_cli, ["run", str(spec_file), "-o", str(tmp_path / "run")])
        assert result.exit_code == 2 and "error: teacher_server_url: cannot reach" in result.output, result.output
        for api in ("distill", "vllm"):  # a server that answers its probe passes
            ok = client.post("/api/experiments", json={"name": "x", "spec": remote(alive, api)})
            assert ok.status_code == 201, ok.text


# --- a hub that never answers, behind a real server process --------------------------------------------
@pytest.fixture
def silent_hub() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: the hub on a machine whose network is gone."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@contextmanager
def api_server(**env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`uvicorn app.main:create_api` in its own process (on service_env's settings, plus `env`): (URL, process)."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app.main:create_api", "--factory", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, env=os.environ | env, cwd=Path(__file__).parents[2], start_new_session=True)
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
    try:
        yield url, process
    finally:
        stop_group(process, timeout=10)


@pytest.fixture
def api_process(service_env, silent_hub, monkeypatch) -> Iterator[str]:
    """An API process online (no HF_HUB_OFFLINE) with the silent hub."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with api_server(HF_ENDPOINT=silent_hub) as (url, _):
        yield url


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


# --- bounded submit checks (issue 20, item 3) ----------------------------------------------------------
REQUEST_SECONDS = 60  # a submit that has not answered by then is taken to hang


def at_once(call: Callable[[int], httpx.Response], count: int) -> list[httpx.Response]:
    """`count` calls started together (a barrier), their responses in order; a timeout fails the test."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call(index)
        except httpx.TimeoutException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    hung = [r for r in results if isinstance(r, Exception)]
    assert not hung, f"{len(hung)} of {count} submits did not answer in {REQUEST_SECONDS} s: {hung[0]!r}"
    return results


def problems(response: httpx.Response) -> dict[tuple, str]:
    return {tuple(d["loc"]): d["msg"] for d in response.json()["detail"]}


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_five_first_submits_to_a_fresh_api_at_once_all_answer(service_env, toy_dir):
    """Bug: the first submits of a fresh `distill up`, all at once, raced on importing transformers (500)."""
    with api_server() as (url, _):
        body = {"name": "first", "spec": tiny_spec(), "launch": False}
        responses = at_once(lambda i: httpx.post(f"{url}/api/experiments", json=body, timeout=300), 5)
    assert [r.status_code for r in responses] == [201] * 5, [r.text[:300] for r in responses]


def test_fifos_and_a_huge_line_are_refused_in_seconds_with_bounded_memory(service_env, toy_dir, data_dir):
    fifo = data_dir / "stream.jsonl"
    os.mkfifo(fifo)
    huge = data_dir / "huge.jsonl"
    with open(huge, "wb") as f:
        f.truncate(2 * 2**30)  # sparse: 2 GiB of NUL bytes in one "line", nothing on disk
    with api_server() as (url, process):
        warm = httpx.post(f"{url}/api/experiments", json={"name": "warm", "spec": tiny_spec()}, timeout=300)
        assert warm.status_code == 201, warm.text  # the checkers are imported; what follows is the reads alone
        peak_before = peak_rss_bytes(process.pid)

        def post_fifo(index: int) -> httpx.Response:
            field = ("train_data", "eval_data")[index % 2]
            body = {"name": "fifo", "spec": tiny_spec(**{field: str(fifo)})}
            return httpx.post(f"{url}/api/experiments", json=body, timeout=REQUEST_SECONDS)

        started = time.monotonic()
        for index, response in enumerate(at_once(post_fifo, 45)):  # 41 of these used to hang every route
            field = ("train_data", "eval_data")[index % 2]
            assert response.status_code == 422, response.text
            assert f"{fifo} is a FIFO, not a regular file" in problems(response)[("body", "spec", field)]
        fifo_seconds = time.monotonic() - started
        assert httpx.get(f"{url}/api/health", timeout=10).status_code == 200

        started = time.monotonic()
        body = {"name": "huge", "spec": tiny_spec(train_data=str(huge))}
        response = httpx.post(f"{url}/api/experiments", json=body, timeout=REQUEST_SECONDS)
        huge_seconds = time.monotonic() - started
        growth = peak_rss_bytes(process.pid) - peak_before
    print(f"\n45 FIFO submits answered in {fifo_seconds:.2f} s; a 2 GiB line refused in {huge_seconds:.2f} s, "
          f"the API's peak RSS grew {growth / 2**20:.0f} MiB")  # fmt: skip
    assert response.status_code == 422, response.text
    assert "longer than 4 MiB (the preflight's limit for one row)" in problems(response)[("body", "spec", "train_data")]
    assert huge_seconds < 10
    assert growth < 200 * 2**20, growth


def test_a_preflight_past_its_time_limit_is_refused_and_others_are_served(service_env, silent_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the silent hub is asked, and never answers
    with api_server(HF_ENDPOINT=silent_hub, DISTILL_PREFLIGHT_SECONDS="1") as (url, _):
        body = {"name": "slow", "spec": tiny_spec(student="someorg/some-model")}
        health_times: list[float] = []
        done = threading.Event()

        def watch_health() -> None:
            with httpx.Client(timeout=60) as client:
                while not done.is_set():
                    started = time.monotonic()
                    assert client.get(f"{url}/api/health").status_code == 200
                    health_times.append(time.monotonic() - started)

        watcher = threading.Thread(target=watch_health)
        watcher.start()
        started = time.monotonic()
        try:
            responses = at_once(lambda i: httpx.post(f"{url}/api/experiments", json=body, timeout=REQUEST_SECONDS), 20)
        finally:
            done.set()
            watcher.join()
        seconds = time.monotonic() - started
    print(f"\n20 slow submits answered in {seconds:.1f} s; /api/health meanwhile: {len(health_times)} requests, "
          f"slowest {max(health_times) * 1000:.0f} ms")  # fmt: skip
    for response in responses:
        assert response.status_code == 422, response.text
        assert "took longer than 1 s" in problems(response)[("body", "spec", "student")], response.text
    assert seconds < 30
    assert health_times and max(health_times) < 1.0, health_times


def refusal(client: TestClient, token: str, field: str, value: str) -> tuple[int, str]:
    """(status, message for `field` with the value itself blanked out) of a submit naming `value`."""
    response = client.post("/api/experiments", json={"name": "x", "spec": tiny_spec(**{field: value})},
                           headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    if response.status_code != 422:
        return response.status_code, response.text
    message = {tuple(d["loc"]): d["msg"] for d in response.json()["detail"]}.get(("body", "spec", field), "")
    return response.status_code, message.replace(repr(value), "VALUE")


def test_team_mode_reads_only_allowed_roots_and_a_refusal_tells_nothing(service_env, toy_dir, tmp_path, monkeypatch):
    from ui import form
    from ui.app import validate

    monkeypatch.setenv("DISTILL_AUTH", "on")
    get_settings.cache_clear()
    with Session(get_engine()) as session:
        token = create_token(session=session, name="ada")
    rows = [json.loads(line) for line in (toy_dir / "data" / "train.jsonl").read_text().splitlines()[:8]]
    home_data = get_settings().home / "data"
    home_data.mkdir(parents=True)
    inside = write_jsonl(home_data / "rows.jsonl", rows)
    outside = tmp_path / "outside"
    (outside / "model").mkdir(parents=True)
    (outside / "model" / "config.json").write_text("{}")
    existing = write_jsonl(outside / "rows.jsonl", rows)
    with TestClient(create_app(ui=False)) as client:
        pairs = [  # (field, a path that exists, one that does not): both outside the allowed roots
            ("train_data", existing, str(outside / "missing.jsonl")),
            ("eval_data", existing, str(outside / "missing.jsonl")),
            ("student", str(outside / "model"), str(outside / "no-model")),
            ("teacher", "/root", "/no-such-root"),
        ]
        for field, there, missing in pairs:
            status_there, message_there = refusal(client, token, field, there)
            assert (status_there, message_there) == refusal(client, token, field, missing), (field, message_there)
            assert status_there == 422 and "outside the allowed roots" in message_there, (field, message_there)
        # the default root, the toy folder and hub ids stay readable
        assert refusal(client, token, "train_data", inside)[0] == 201
        status, message = refusal(client, token, "student", "someorg/some-model")
        assert status == 422 and "HF_HUB_OFFLINE" in message and "allowed roots" not in message, message
        dashboard = validate(*form.spec_to_values(DistillSpec.parse(tiny_spec(train_data=existing))))
        assert "train_data" in dashboard and "outside the allowed roots" in dashboard, dashboard

        monkeypatch.setenv("DISTILL_ALLOWED_PATHS", str(outside))  # a list replaces the default root
        get_settings.cache_clear()
        assert refusal(client, token, "train_data", existing)[0] == 201
        assert "outside the allowed roots" in refusal(client, token, "train_data", inside)[1]

    monkeypatch.delenv("DISTILL_AUTH")  # auth off (one user on their own machine): as before, any path
    monkeypatch.delenv("DISTILL_ALLOWED_PATHS")
    get_settings.cache_clear()
    with TestClient(create_app(ui=False)) as client:
        assert refusal(client, token, "train_data", existing)[0] == 201
