"""Checks of what a spec points at, cheap enough to run before a run is queued.

`DistillSpec.preflight()` calls these, so `distill run`, the API's create and the dashboard's
Validate refuse the same things:

- a hub id (not a local directory) that is neither in the local cache nor reachable: answered in
  seconds (one request, `HUB_TIMEOUT` s, no retries), not after the loaders' minutes of retries;
- data that cannot serve the spec: an unknown format, rows that are not JSON, rows without the
  columns the method needs, rows that do not tokenize. Only the first `PREVIEW_ROWS` rows are read.
"""

from __future__ import annotations

import json
import os
from typing import Any

from core_distill.data import DataError
from core_distill.paths import resolve_data_path

HUB_TIMEOUT = 4.0  # seconds for the one hub request that tells "exists" from "unreachable"
PREVIEW_ROWS = 32


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


def preview_rows(name: str, limit: int = PREVIEW_ROWS) -> list[dict[str, Any]]:
    """The first `limit` rows of a data file or `datasets` folder, reading no more of it than needed."""
    path = resolve_data_path(name)
    if path.is_dir():
        from datasets import load_from_disk

        dataset = load_from_disk(str(path))
        if hasattr(dataset, "keys"):  # a DatasetDict: its train split, else the first (as read_rows)
            dataset = dataset["train"] if "train" in dataset else dataset[next(iter(dataset.keys()))]
        return list(dataset.select(range(min(limit, len(dataset)))))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            batch = next(pq.ParquetFile(path).iter_batches(batch_size=limit), None)
        except Exception as exc:  # noqa: BLE001  (pyarrow raises its own error types)
            raise DataError(f"{path}: not a readable Parquet file ({str(exc)[:200]})") from None
        return batch.to_pylist() if batch is not None else []
    if path.suffix == ".json" and _first_char(path) == "[":
        rows = json.loads(path.read_text())
        return rows[:limit] if isinstance(rows, list) else []
    if path.suffix in (".jsonl", ".json"):
        return _jsonl_head(path, limit)
    raise DataError(f"{path}: unknown data format {path.suffix!r} (use .jsonl, .json, .parquet or a datasets folder)")


def _first_char(path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(4096).lstrip()[:1]


def _jsonl_head(path, limit: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: a row must be a JSON object, got {type(row).__name__}")
            rows.append(row)
            if len(rows) >= limit:
                break
    return rows


def check_data(spec, tokenizer) -> dict[str, str]:
    """{field: problem} for train_data and eval_data, judged on their first rows (as the engine loads them)."""
    from core_distill.data import check_examples, encode_rows  # torch: imported only when data is checked

    errors: dict[str, str] = {}
    lengths = dict(max_prompt_length=spec.max_prompt_length, max_completion_length=spec.max_completion_length)
    for field in ("train_data", "eval_data"):
        name = getattr(spec, field)
        if not name:
            continue
        try:
            rows = preview_rows(name)
            if not rows:
                raise DataError(f"{name}: no rows")
            if tokenizer is None:
                continue  # the student's own error is reported; nothing to tokenize with
            examples = encode_rows(rows, tokenizer, source=name, **lengths)
            if field == "train_data":
                check_examples(
                    examples, field=field, needs_completions=spec.lmbda < 1.0 and not spec.seq_kd,
                    needs_teacher_prompt=spec.opsd != "off",
                )  # fmt: skip
        except DataError as exc:
            errors[field] = str(exc).removeprefix(f"{field}: ")
        except (OSError, UnicodeError, ValueError) as exc:
            errors[field] = f"cannot read {name!r}: {str(exc)[:200]}"
    return errors


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
