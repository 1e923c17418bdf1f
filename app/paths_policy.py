"""What a spec may point at on this server: model and data paths under allowed roots, no remote code.

A shared service runs specs from many people; without this, a spec could read any file the
worker can (`train_data: /etc/shadow`) or run a model repository's own Python code.

- `toy:NAME` resolves inside the toy folder (and must stay there: `toy:../../x` is refused).
- A hub id (`org/name`, not a local path) is allowed; downloading is the model loader's business.
- A local path is resolved (symlinks and `..` followed) and must lie under one of
  `Settings.allowed_roots` or the toy folder: `DISTILL_ALLOWED_PATHS` (os.pathsep-separated); empty =
  `DISTILL_HOME/data` with auth on, no restriction with auth off. A refused path gets one message,
  the same whether or not it exists, so the answer tells nothing about the server's files.
- `trust_remote_code: true` needs `DISTILL_ALLOW_REMOTE_CODE=true` on the server.
- `teacher_server_url` (either API, distill or vllm) must start with one of
  `DISTILL_ALLOWED_TEACHER_URLS`; with auth on an empty list allows none, with auth off any URL.
  Without this a spec could make the worker send requests anywhere it can reach (its Redis).
"""

from __future__ import annotations

from pathlib import Path

from app.settings import get_settings
from core_distill.checks.preflight import teacher_url_allowed
from core_distill.paths import TOY_SCHEME, looks_like_local_path, resolve_data_path, resolve_model_path, toy_dir
from core_distill.spec import DistillSpec, SpecError

MODEL_FIELDS = ("student", "teacher")
DATA_FIELDS = ("train_data", "eval_data")


def check_spec_policy(spec: DistillSpec) -> None:
    """Raise SpecError naming every field that points outside what this server allows."""
    settings = get_settings()
    roots = settings.allowed_roots
    toy_root = toy_dir().expanduser().resolve()
    errors: dict[str, str] = {}
    for name in MODEL_FIELDS + DATA_FIELDS:
        value = getattr(spec, name)
        if not value:
            continue
        is_model = name in MODEL_FIELDS
        if is_model and not looks_like_local_path(value):
            continue  # a hub id
        path = resolve_model_path(value) if is_model else resolve_data_path(value)
        resolved = Path(path).expanduser().resolve()
        if value.startswith(TOY_SCHEME):
            if not _is_under(resolved, toy_root):
                errors[name] = f"{value!r} leaves the toy folder {toy_root}"
        elif roots and not any(_is_under(resolved, root) for root in [*roots, toy_root]):
            allowed = ", ".join(str(r) for r in roots)
            # not the resolved path: where a link leads (or that it exists) is no business of the sender
            errors[name] = f"{value[:300]!r} is outside the allowed roots ({allowed}; and toy:NAME)"
    if spec.teacher_server_url and not teacher_url_allowed(spec.teacher_server_url, settings.teacher_url_prefixes):
        allowed = ", ".join(settings.teacher_url_prefixes or []) or "none (DISTILL_ALLOWED_TEACHER_URLS is empty)"
        errors["teacher_server_url"] = (
            f"{spec.teacher_server_url[:200]!r} is not an allowed teacher server; allowed URL prefixes: {allowed}"
        )
    if spec.trust_remote_code and not settings.allow_remote_code:
        errors["trust_remote_code"] = (
            "this server does not run models' own code; an admin can allow it with DISTILL_ALLOW_REMOTE_CODE=true"
        )
    if errors:
        raise SpecError(errors)


def _is_under(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
