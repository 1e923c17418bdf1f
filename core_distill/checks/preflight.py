"""Checks of what a spec points at, cheap enough to run before a run is queued.

`DistillSpec.preflight()` calls these, so `distill run`, the API's create and the dashboard's
Validate refuse the same things:

- a hub id (not a local directory) that is neither in the local cache nor reachable: answered in
  seconds (one request, `core_distill.models.HUB_TIMEOUT` s, no retries; `check_hub_model` there),
  not after the loaders' minutes of retries;
- data that cannot serve the spec: an unknown format, rows that are not JSON, rows without the
  columns the method needs, rows that do not tokenize. Only the first `PREVIEW_ROWS` rows are read,
  within the bounds of core_distill/checks/files.py;
- a teacher whose vocabulary differs from the student's (core_distill/data/vocab.py);
- a `teacher_server_url` where nothing answers as that kind of teacher server: one request
  (`TEACHER_SERVER_TIMEOUT` s, no retries; `check_teacher_server`), not the worker's retries a minute
  after the run was queued. The vocabulary handshake stays with the run, when it connects.
"""

from __future__ import annotations

from core_distill.checks.files import IMPORT_LOCK, preview_rows
from core_distill.data.sources import DataError, FieldDataError, request_for

_imported = False
TEACHER_SERVER_TIMEOUT = 3.0  # seconds for the one request that tells a teacher server from nothing
# what each kind of server answers without work: `distill teacher serve` its /info, vLLM its model list
TEACHER_SERVER_PROBES = {"distill": "/info", "vllm": "/v1/models"}
TEACHER_SERVER_NAMES = {"distill": "`distill teacher serve`", "vllm": "an OpenAI-compatible vLLM server"}


def import_checkers() -> None:
    """Import transformers (and torch) once, under a lock, before any check runs.

    transformers resolves `from transformers import AutoConfig` lazily; several threads doing that
    first import at once (5 submits to a fresh API) see a half-initialized module and fail with
    "cannot import name 'AutoConfig'". One import at a time, the first one complete, avoids it.
    """
    global _imported
    if _imported:
        return
    with IMPORT_LOCK:
        if _imported:
            return
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401

        import core_distill.data.batches  # noqa: F401  (torch)
        import core_distill.models  # noqa: F401  (the tokenizer loader)

        _imported = True


def check_data(spec, tokenizer, notes: dict[str, str] | None = None) -> dict[str, str]:
    """{field: problem} for train_data and eval_data, judged on their first rows (as the engine loads them).

    `notes` gets, per data field, how many of those rows the length limits shorten (truncation)."""
    from core_distill.data.batches import (  # torch: only when data is checked
        check_examples,
        encode_rows,
        truncation_counts,
    )

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
    """Why `teacher` cannot distil into `student` token by token (core_distill/data/vocab.py: the tokens at
    every id, bos and eos, heads that cannot be cut to the tokenizer), or None. A model that cannot be
    read here is left to the model checks and the run."""
    from core_distill.data.vocab import mismatch, token_list

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

    from core_distill.data.vocab import vocabulary_of
    from core_distill.models import model_source

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


def check_teacher_server(url: str, api: str) -> str | None:
    """None when the teacher server at `url` answers its probe (GET /info, or GET /v1/models for vLLM)
    with a success within TEACHER_SERVER_TIMEOUT s; else what is wrong, in one line."""
    import httpx

    path, kind = TEACHER_SERVER_PROBES[api], TEACHER_SERVER_NAMES[api]
    probe = url.rstrip("/") + path
    try:
        reply = httpx.get(probe, timeout=TEACHER_SERVER_TIMEOUT, follow_redirects=False)
    except httpx.TimeoutException:
        return (f"nothing answered GET {path} at {url} within {TEACHER_SERVER_TIMEOUT:g} s: is {kind} "
                "running there and reachable from this machine?")  # fmt: skip
    except httpx.HTTPError as exc:  # refused, unknown host, not HTTP at all
        reason = str(exc).strip() or type(exc).__name__
        return f"cannot reach a teacher server at {url} ({reason[:160]}): start {kind} there or fix the URL"
    if not reply.is_success:
        return (f"{url} answered GET {path} with HTTP {reply.status_code}, not as {kind} does: check the URL "
                "and teacher_server_api")  # fmt: skip
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
