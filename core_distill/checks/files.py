"""Bounded reads of the files a spec names: the first rows of a data file, `datasets` folder or hub
dataset, and the entries of a model or `datasets` folder.

Reads are bounded, so a spec cannot make the checker hang or fill memory: only regular files are
opened (a FIFO, device, socket or stray directory is refused by name, and files are opened with
O_NONBLOCK so a FIFO swapped in after the check cannot block either), at most `MAX_PREVIEW_BYTES`
of one file, `MAX_ROW_BYTES` of one row, in chunks, within `PREVIEW_SECONDS` per file.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core_distill.data.sources import DataError, DataRequest, open_hub_dataset, open_saved_folder, refuse_split
from core_distill.paths import is_hub_dataset, resolve_data_path

PREVIEW_ROWS = 32  # rows judged per data file
MAX_PREVIEW_BYTES = 64 * 2**20  # the most the preflight reads of one data file
MAX_ROW_BYTES = 4 * 2**20  # the longest row (a JSONL line, an element of a JSON array) it reads
PREVIEW_SECONDS = 20.0  # time for reading one data file
MAX_FOLDER_ENTRIES = 10_000  # entries a model or `datasets` folder may list
READ_CHUNK = 2**20

# the checks run in threads; a library's first import, done by several at once, can fail half-initialized
IMPORT_LOCK = threading.Lock()


def file_kind(mode: int) -> str:
    """What an `os.stat` mode is, in words ("FIFO", "directory", ...)."""
    kinds = ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
             (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "special file")


def require_regular_file(path: Path) -> None:
    """DataError unless `path` (links followed) is a regular file: reading a FIFO or a device never ends."""
    kind = file_kind(os.stat(path).st_mode)
    if kind != "regular file":
        raise DataError(f"{path} is a {kind}, not a regular file")


class BoundedFile(io.RawIOBase):
    """A regular file, read at most `MAX_PREVIEW_BYTES` in and before a deadline (DataError past either).

    Opened with O_NONBLOCK and checked again on the open descriptor, so a FIFO put in its place
    between the check and the open is refused rather than waited on.
    """

    def __init__(self, path: Path, deadline: float):
        super().__init__()
        require_regular_file(path)
        self.path, self.deadline, self.consumed = path, deadline, 0
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        kind = file_kind(os.fstat(self._fd).st_mode)
        if kind != "regular file":
            os.close(self._fd)
            raise DataError(f"{path} is a {kind}, not a regular file")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self._fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def readinto(self, buffer: Any) -> int:
        if time.monotonic() > self.deadline:
            raise DataError(f"{self.path}: reading it took longer than {PREVIEW_SECONDS:g} s (the preflight's limit)")
        if self.consumed + len(buffer) > MAX_PREVIEW_BYTES:
            raise PreviewLimitError(
                f"{self.path}: the preflight reads at most {MAX_PREVIEW_BYTES // 2**20} MiB of a data file, "
                f"and its first {PREVIEW_ROWS} rows lie further in"
            )
        count = os.readv(self._fd, [buffer])
        self.consumed += count
        return count

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class PreviewLimitError(DataError):
    """The preflight's byte limit for one file was reached (rows read before it still count)."""


def preview_rows(source: str | DataRequest, limit: int = PREVIEW_ROWS) -> list[dict[str, Any]] | None:
    """The first `limit` rows of a data file, `datasets` folder (its split) or hub dataset, reading no more of
    it than needed; None for a hub dataset that is not cached on a machine that can download it (the hub
    said it exists; its rows are checked when the run loads it)."""
    request = DataRequest(source) if isinstance(source, str) else source
    if is_hub_dataset(request.name):
        with IMPORT_LOCK:
            import datasets  # noqa: F401  (its first import, one thread at a time)
        dataset = open_hub_dataset(request, download=False)
        return None if dataset is None else list(dataset.select(range(min(limit, len(dataset)))))
    path = resolve_data_path(request.name)
    kind = file_kind(os.stat(path).st_mode)
    if kind == "directory":
        return _datasets_head(path, limit, request)
    refuse_split(request, str(path))
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise DataError(
            f"{path}: unknown data format {path.suffix!r} (use .jsonl, .json, .parquet or a datasets folder)"
        )
    with BoundedFile(path, time.monotonic() + PREVIEW_SECONDS) as file:
        if path.suffix == ".parquet":
            return _parquet_head(file, limit)
        first = file.read(READ_CHUNK)
        if path.suffix == ".json" and first.lstrip()[:1] == b"[":
            return _json_array_head(file, first, limit)
        file.seek(0)
        return _jsonl_head(file, limit)


def check_folder(path: Path, depth: int = 1) -> None:
    """DataError naming the first entry of `path` (and its subfolders, `depth` deep) that is not a
    regular file or folder: the loaders open every file they expect, and a FIFO would hold them forever."""
    entries = 0
    folders = [(path, depth)]
    while folders:
        folder, below = folders.pop()
        with os.scandir(folder) as scan:
            for entry in scan:
                entries += 1
                if entries > MAX_FOLDER_ENTRIES:
                    raise DataError(f"{path} holds more than {MAX_FOLDER_ENTRIES} entries (the preflight's limit)")
                try:
                    kind = file_kind(os.stat(entry.path).st_mode)
                except OSError:
                    continue  # a dangling link: the loader names what it misses
                if kind == "directory" and below > 0:
                    folders.append((Path(entry.path), below - 1))
                elif kind not in ("regular file", "directory"):
                    raise DataError(f"{entry.path} is a {kind}, not a regular file")


def _datasets_head(path: Path, limit: int, request: DataRequest) -> list[dict[str, Any]]:
    if not any((path / marker).is_file() for marker in ("state.json", "dataset_dict.json")):
        raise DataError(
            f"{path} is a directory, but not a saved `datasets` folder (no state.json or dataset_dict.json)"
        )
    check_folder(path, depth=1)  # a DatasetDict keeps one folder per split
    with IMPORT_LOCK:
        import datasets  # noqa: F401  (its first import, one thread at a time)

    dataset = open_saved_folder(path, request)  # a DatasetDict: the requested split, as read_rows
    return list(dataset.select(range(min(limit, len(dataset)))))


def _parquet_head(file: BoundedFile, limit: int) -> list[dict[str, Any]]:
    with IMPORT_LOCK:
        import pyarrow.parquet as pq

    try:
        batch = next(pq.ParquetFile(file).iter_batches(batch_size=limit), None)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001  (pyarrow raises its own error types)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, DataError):  # the byte or time limit, raised inside pyarrow's read
            raise cause from None
        raise DataError(f"{file.path}: not a readable Parquet file ({str(exc)[:200]})") from None
    return batch.to_pylist() if batch is not None else []


def _lines(file: BoundedFile) -> Iterator[tuple[int, bytes]]:
    """(line number, line without its newline), each line at most `MAX_ROW_BYTES`, read in chunks."""
    buffer, start, number = b"", 0, 0
    while True:
        end = buffer.find(b"\n", start)
        if end >= 0:
            number += 1
            yield number, buffer[start:end]
            start = end + 1
            continue
        if len(buffer) - start > MAX_ROW_BYTES:
            raise DataError(
                f"{file.path}:{number + 1}: a line longer than {MAX_ROW_BYTES // 2**20} MiB "
                "(the preflight's limit for one row)"
            )
        chunk = file.read(READ_CHUNK)
        if not chunk:
            if start < len(buffer):
                yield number + 1, buffer[start:]
            return
        buffer, start = buffer[start:] + chunk, 0


def _jsonl_head(file: BoundedFile, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        for number, line in _lines(file):
            if not line.strip():
                continue
            rows.append(_parsed_row(line.decode("utf-8", errors="replace"), f"{file.path}:{number}"))
            if len(rows) >= limit:
                break
    except PreviewLimitError:
        if not rows:
            raise
    return rows


def _parsed_row(text: str, where: str) -> dict[str, Any]:
    try:
        return _as_row(json.loads(text), where)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None


def _as_row(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(value).__name__}")
    return value


_SPACE = re.compile(r"\s*")


class _JsonText:
    """A JSON file's text, decoded chunk by chunk, with a position: enough to read an array's first elements."""

    def __init__(self, file: BoundedFile, first: bytes):
        self.file, self.decoder = file, codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text, self.pos = self.decoder.decode(first), 0

    def more(self) -> bool:
        """Append the next chunk (dropping what was read); False at the end of the file."""
        chunk = self.file.read(READ_CHUNK)
        self.text, self.pos = self.text[self.pos :] + self.decoder.decode(chunk, final=not chunk), 0
        return bool(chunk)

    def next_char(self) -> str:
        """The next non-space character ('' at the end), not consumed."""
        while True:
            self.pos = _SPACE.match(self.text, self.pos).end()
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos : self.pos + 1]

    def value(self, where: str) -> dict[str, Any]:
        """The JSON value at the position (read further until it is complete), which must be an object."""
        decoder = json.JSONDecoder()
        while True:
            try:
                row, self.pos = decoder.raw_decode(self.text, self.pos)
                return _as_row(row, where)
            except json.JSONDecodeError as exc:
                if len(self.text) - self.pos > MAX_ROW_BYTES:
                    raise DataError(
                        f"{where}: an element longer than {MAX_ROW_BYTES // 2**20} MiB "
                        "(the preflight's limit for one row)"
                    ) from None
                if not self.more():
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from None


def _json_array_head(file: BoundedFile, first: bytes, limit: int) -> list[dict[str, Any]]:
    """The first `limit` elements of a JSON array, parsed one at a time (the rest of the file is not read)."""
    text = _JsonText(file, first)
    text.next_char()
    text.pos += 1  # the '['
    rows: list[dict[str, Any]] = []
    try:
        while len(rows) < limit:
            char = text.next_char()
            if char == "]":
                break
            if rows:
                if char != ",":
                    raise DataError(f"{file.path}: element {len(rows) + 1}: not valid JSON (expecting ',' or ']')")
                text.pos += 1
                text.next_char()
            rows.append(text.value(f"{file.path}: element {len(rows) + 1}"))
    except PreviewLimitError:
        if not rows:
            raise
    return rows
