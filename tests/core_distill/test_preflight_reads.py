"""The preflight's reads are bounded (issue 20, item 3): only regular files, at most MAX_PREVIEW_BYTES of a
file and MAX_ROW_BYTES of a row, so no spec makes the checker block or fill memory."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core_distill.checks import files
from core_distill.data.sources import DataError
from core_distill.spec import SpecError

HANG_SECONDS = 60  # a check that has not answered by then is taken to block forever


def answer_within(call: Callable[[], Any], unblock: Callable[[], None] = lambda: None) -> Any:
    """call()'s result or exception, failing (not hanging) when it does not answer in HANG_SECONDS."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except Exception as exc:  # noqa: BLE001  (handed to the test)
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_SECONDS)
    if thread.is_alive():
        unblock()
        pytest.fail(f"the check did not answer in {HANG_SECONDS} s: it blocks")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def release_fifo(path: Path) -> Callable[[], None]:
    """Open the FIFO for writing and close it: a reader blocked in open() gets EOF and the thread ends."""

    def release() -> None:
        with contextlib.suppress(OSError):  # no reader waiting
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    return release


@pytest.fixture
def special_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """{case: (path named like data, the kind the refusal names)}."""
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    device = tmp_path / "device.jsonl"
    device.symlink_to("/dev/null")  # links are followed: what counts is what the path opens
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    sock_path = tmp_path / "socket.jsonl"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    return {
        "fifo": (fifo, "a FIFO, not a regular file"),
        "device": (device, "a character device, not a regular file"),
        "socket": (sock_path, "a socket, not a regular file"),
        "folder": (folder, "is a directory, but not a saved `datasets` folder"),
    }


def test_fifos_devices_sockets_and_plain_folders_are_refused_at_once(special_files):
    for case, (path, words) in special_files.items():
        started = time.monotonic()
        with pytest.raises(DataError) as caught:
            answer_within(lambda path=path: files.preview_rows(str(path)), release_fifo(path))
        assert words in str(caught.value) and str(path) in str(caught.value), (case, caught.value)
        assert time.monotonic() - started < 5, case


def test_a_fifo_model_file_is_refused_naming_the_field(tmp_path, tiny_workspace):
    student = tmp_path / "student"
    student.mkdir()
    for item in Path(tiny_workspace.student).iterdir():
        if item.name != "config.json":
            (student / item.name).symlink_to(item)
    os.mkfifo(student / "config.json")  # the loaders would wait on it forever
    spec = tiny_workspace.spec(student=str(student))
    with pytest.raises(SpecError) as caught:
        answer_within(spec.preflight, release_fifo(student / "config.json"))
    assert "is a FIFO, not a regular file" in caught.value.errors["student"], caught.value.errors


def test_a_huge_single_line_is_refused_quickly_naming_the_limit_with_bounded_memory(tmp_path):
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:
        f.truncate(512 * 2**20)  # sparse: 512 MiB of NUL bytes, no newline, nothing on disk
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(DataError) as caught:
            answer_within(lambda: files.preview_rows(str(huge)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.monotonic() - started
    print(f"\n512 MiB line refused in {seconds:.2f} s, peak {peak / 2**20:.1f} MiB allocated")
    assert f"longer than {files.MAX_ROW_BYTES // 2**20} MiB" in str(caught.value), caught.value
    assert seconds < 10
    assert peak < 4 * files.MAX_ROW_BYTES, peak


def test_a_json_array_is_read_element_by_element(tmp_path):
    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(100)]
    big = tmp_path / "rows.json"
    big.write_text(json.dumps(rows)[:-1])  # the array goes on far past the rows the preflight reads
    with open(big, "r+b") as f:
        f.truncate(2**30)  # then a sparse GiB (the engine would choke on it; the preview never gets there)
    tracemalloc.start()
    try:
        head = answer_within(lambda: files.preview_rows(str(big)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert head == rows[: files.PREVIEW_ROWS]
    assert peak < 4 * files.READ_CHUNK, peak

    broken = tmp_path / "broken.json"
    broken.write_text('[{"prompt": "1+1="} {"prompt": "2+2="}]')
    with pytest.raises(DataError, match="element 2: not valid JSON"):
        files.preview_rows(str(broken))
    not_rows = tmp_path / "numbers.json"
    not_rows.write_text('[{"prompt": "1+1="}, 5]')
    with pytest.raises(DataError, match="element 2: a row must be a JSON object, got int"):
        files.preview_rows(str(not_rows))


def test_a_parquet_file_is_read_at_most_the_byte_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_PREVIEW_BYTES", 2**20)  # the limit made small, the file kept small
    table = pa.Table.from_pylist([{"prompt": os.urandom(500).hex()} for _ in range(3000)])
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path, row_group_size=len(table), compression="none")  # one 3 MB row group
    with pytest.raises(DataError, match="reads at most 1 MiB of a data file"):
        files.preview_rows(str(path))
    small = tmp_path / "small.parquet"
    pq.write_table(table.slice(0, 40), small, compression="none")
    assert len(files.preview_rows(str(small))) == files.PREVIEW_ROWS
