"""Checks of what a spec points at, cheap enough to run before a run is queued.

`DistillSpec.preflight()` calls these, so `distill run`, the API's create and the dashboard's
Validate refuse the same things:

- a hub id (not a local directory) that is neither in the local cache nor reachable: answered in
  seconds (one request, `HUB_TIMEOUT` s, no retries), not after the loaders' minutes of retries;
- data that cannot serve the spec: an unknown format, rows that are not JSON, rows without the
  columns the method needs, rows that do not tokenize. Only the first `PREVIEW_ROWS` rows are read.

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

from core_distill.data_sources import (
    DataError,
    DataRequest,
    FieldDataError,
    open_hub_dataset,
    open_saved_folder,
    refuse_split,
    request_for,
)
from core_distill.paths import is_hub_dataset, resolve_data_path

HUB_TIMEOUT = 4.0  # seconds for the one hub request that tells "exists" from "unreachable"
PREVIEW_ROWS = 32  # rows judged per data file
MAX_PREVIEW_BYTES = 64 * 2**20  # the most the preflight reads of one data file
MAX_ROW_BYTES = 4 * 2**20  # the longest row (a JSONL line, an element of a JSON array) it reads
PREVIEW_SECONDS = 20.0  # time for reading one data file
MAX_FOLDER_ENTRIES = 10_000  # entries a model or `datasets` folder may list
READ_CHUNK = 2**20

_IMPORT_LOCK = threading.Lock()
_imported = False


def import_checkers() -> None:
    """Import transformers (and torch) once, under a lock, before any check runs.

    transformers resolves `from transformers import AutoConfig` lazily; several threads doing that
    first import at once (5 submits to a fresh API) see a half-initialized module and fail with
    "cannot import name 'AutoConfig'". One import at a time, the first one complete, avoids it.
    """
    global _imported
    if _imported:
        return
    with _IMPORT_LOCK:
        if _imported:
            return
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401

        import core_distill.data  # noqa: F401  (torch)
        import core_distill.models  # noqa: F401  (the tokenizer loader)

        _imported = True


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as the environment says now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def check_hub_model(name: str, trust_remote_code: bool, hub_state: dict[str, str] | None = None) -> str | None:
    """None if the hub id `name` is cached here or exists on a reachable hub; else what is wrong.

    `hub_state` (one dict per preflight) remembers an unreachable hub, so a second model does not wait again.
    """
    from transformers import AutoConfig

    hub_state = {} if hub_state is None else hub_state
    try:
        AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=trust_remote_code)
        return None  # in the local cache: the run needs no network
    except (OSError, ValueError):
        pass
    if hub_offline():
        return (
            f"{name!r} is not a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE is set: "
            "download it first or name a local directory"
        )
    down = hub_state.get("down")
    if down is None:  # the hub has not failed yet in this preflight: ask it
        answer = _ask_hub(name)
        if answer is None or answer.startswith("no model"):
            return answer
        down = hub_state["down"] = answer
    return (
        f"{name!r} is not a local directory and the Hugging Face hub is unreachable ({down}); "
        "download it first or name a local directory"
    )


def _ask_hub(name: str) -> str | None:
    """One request to the hub: None if `name` exists, "no model ..." if not, else why the hub did not answer."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(name, timeout=HUB_TIMEOUT)
    except GatedRepoError:
        return None  # it exists; the worker's token decides
    except RepositoryNotFoundError:
        return f"no model {name!r} on the Hugging Face hub (and it is not a local directory)"
    except Exception as exc:  # noqa: BLE001  (httpx, OSError, HTTP errors: all mean "cannot reach it")
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


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
        with _IMPORT_LOCK:
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
    with _IMPORT_LOCK:
        import datasets  # noqa: F401  (its first import, one thread at a time)

    dataset = open_saved_folder(path, request)  # a DatasetDict: the requested split, as read_rows
    return list(dataset.select(range(min(limit, len(dataset)))))


def _parquet_head(file: BoundedFile, limit: int) -> list[dict[str, Any]]:
    with _IMPORT_LOCK:
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


def check_data(spec, tokenizer, notes: dict[str, str] | None = None) -> dict[str, str]:
    """{field: problem} for train_data and eval_data, judged on their first rows (as the engine loads them).

    `notes` gets, per data field, how many of those rows the length limits shorten (truncation)."""
    from core_distill.data import check_examples, encode_rows, truncation_counts  # torch: only when data is checked

    errors: dict[str, str] = {}
    lengths = dict(max_prompt_length=spec.max_prompt_length, max_completion_length=spec.max_completion_length,
                   system_message=spec.system_message, truncation=spec.truncation)  # fmt: skip
    for field in ("train_data", "eval_data"):
        name = getattr(spec, field)
        if not name:
            continue
        try:
            rows = preview_rows(request_for(spec, field))
            if rows is None:
                continue  # a hub dataset the run downloads: its rows are checked then
            if not rows:
                raise DataError(f"{name}: no rows")
            if tokenizer is None:
                continue  # the student's own error is reported; nothing to tokenize with
            turns = spec.assistant_turns if field == "train_data" else "last"  # eval rows score their last turn
            examples = encode_rows(rows, tokenizer, source=name, assistant_turns=turns, **lengths)
            if field == "train_data":
                check_examples(
                    examples, field=field, needs_completions=spec.lmbda < 1.0 and not spec.seq_kd,
                    needs_teacher_prompt=spec.opsd != "off",
                )  # fmt: skip
            cut = truncation_counts(examples, len(rows)).describe(spec.max_prompt_length, spec.max_completion_length)
            if cut and notes is not None:
                notes[field] = cut
        except FieldDataError as exc:
            errors.setdefault(exc.field, str(exc).removeprefix(f"{exc.field}: "))
        except DataError as exc:
            errors[field] = str(exc).removeprefix(f"{field}: ")
        except (OSError, UnicodeError, ValueError) as exc:
            errors[field] = f"cannot read {name!r}: {str(exc)[:200]}"
    return errors


def check_teacher_vocabulary(student: str, teacher: str, trust_remote_code: bool) -> str | None:
    """Why `teacher` cannot distil into `student` token by token (core_distill/vocab.py: the tokens at
    every id, bos and eos, heads that cannot be cut to the tokenizer), or None. A model that cannot be
    read here is left to the model checks and the run."""
    from core_distill.vocab import mismatch, token_list

    try:
        tokenizers = [_plain_tokenizer(name, trust_remote_code) for name in (student, teacher)]
        heads = [_head_rows(name, trust_remote_code) for name in (student, teacher)]
    except Exception:  # noqa: BLE001  (a broken folder or an unreachable hub id: reported elsewhere)
        return None
    if tokenizers[1] is None:  # a teacher folder without tokenizer files: its head's size is all there is
        if heads[0] == heads[1]:
            return None
        return (
            f"{teacher!r} has no tokenizer files, so its vocabulary cannot be compared with the student's, and "
            f"its lm_head has {heads[1]:,} rows, the student's {heads[0]:,}: add the teacher's tokenizer files"
        )
    if tokenizers[0] is None:
        return None  # the data checks report a student without a tokenizer
    student_vocab = _vocabulary(student, tokenizers[0], heads[0], trust_remote_code)
    teacher_vocab = _vocabulary(teacher, tokenizers[1], heads[1], trust_remote_code)
    return mismatch(student_vocab, teacher_vocab, teacher_tokens=lambda: token_list(tokenizers[1]),
                    student_tokens=lambda: token_list(tokenizers[0]))  # fmt: skip


def _plain_tokenizer(name: str, trust_remote_code: bool):
    """The tokenizer saved with a model as it is (no pad added), or None if the folder has none."""
    from transformers import AutoTokenizer

    from core_distill.models import model_source

    source, local_only = model_source(name, trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):
        return None


def _head_rows(name: str, trust_remote_code: bool) -> int | None:
    """Rows of the model's lm_head, from its config (no weights are read)."""
    from transformers import AutoConfig

    from core_distill.models import model_source

    source, local_only = model_source(name, trust_remote_code)
    config = AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=trust_remote_code)
    return getattr(config.get_text_config(), "vocab_size", None)


def _vocabulary(name: str, tokenizer, head: int | None, trust_remote_code: bool):
    """The model's `Vocabulary`, with the eos ids of its generation config when it has one."""
    from transformers import GenerationConfig

    from core_distill.models import model_source
    from core_distill.vocab import vocabulary_of

    source, local_only = model_source(name, trust_remote_code)
    try:
        eos = GenerationConfig.from_pretrained(source, local_files_only=local_only).eos_token_id
    except (OSError, ValueError):
        eos = None
    return vocabulary_of(tokenizer, head=head, generation_eos=eos)


def load_preflight_tokenizer(student: str, trust_remote_code: bool):
    """The student's tokenizer, or None when it cannot be loaded here (the model check says why)."""
    from core_distill.models import load_tokenizer

    try:
        return load_tokenizer(student, trust_remote_code)
    except Exception:  # noqa: BLE001  (a broken model folder is reported by the model checks and the run)
        return None


def teacher_url_allowed(url: str, prefixes: list[str] | None) -> bool:
    """Whether `url` starts with one of `prefixes` (None = any URL) at a boundary of the URL.

    'http://t.lan:8001' allows 'http://t.lan:8001/v1' but not 'http://t.lan:80015' nor
    'http://t.lan:8001@127.0.0.1:6379/': after the prefix comes its end, '/', '?' or '#'.
    """
    if prefixes is None:
        return True
    for prefix in prefixes:
        if url.startswith(prefix) and (
            prefix.endswith("/") or url[len(prefix) : len(prefix) + 1] in ("", "/", "?", "#")
        ):
            return True
    return False
