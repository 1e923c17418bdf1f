"""Where models and data named in a spec live.

A spec names models and data the way a user would: a hub id ("Qwen/Qwen2.5-0.5B"), a local path,
or "toy:NAME" for a built-in task, whose models and data ship inside the package, so every machine
starts from the same weights: "toy:teacher", "toy:student", "toy:train|eval|test" are the countdown
task's; "toy:chain/teacher", "toy:chain/train" and so on the chain task's (a task's own folder).
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

TOY_SCHEME = "toy:"
TOY_DATA_FILES = {"train": "train.jsonl", "eval": "eval.jsonl", "test": "test.jsonl"}


SHIPPED_TOY_DIR = Path(__file__).parent / "toy" / "assets"


def toy_dir() -> Path:
    """The built-in task's folder: $DISTILL_TOY_DIR (a rebuild, say), else the one shipped in the package."""
    folder = os.environ.get("DISTILL_TOY_DIR")
    return Path(folder).expanduser() if folder else SHIPPED_TOY_DIR


def distill_home() -> Path:
    """$DISTILL_HOME: everything the service and the engine keep (database, runs, Redis, caches, rebuilds).
    Default: $XDG_DATA_HOME/distill, else ~/.local/share/distill."""
    home = os.environ.get("DISTILL_HOME")
    if home:
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share").expanduser() / "distill"


def default_toy_build_dir() -> Path:
    """Where `distill toy build` writes by default: $DISTILL_HOME/toy-build."""
    return distill_home() / "toy-build"


HUB_TIMEOUT = 4.0  # seconds for the one TCP connect that tells whether the hub can be reached
_REACHABLE: dict[str, bool] = {}


def hub_reachable() -> bool:
    """One TCP connect to the hub's host per process (cached models and datasets would otherwise retry it)."""
    if "hub" not in _REACHABLE:
        endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        try:
            socket.create_connection((endpoint.hostname or "", port), timeout=HUB_TIMEOUT).close()
            _REACHABLE["hub"] = True
        except OSError:
            _REACHABLE["hub"] = False
    return _REACHABLE["hub"]


def resolve_model_path(name: str) -> Path | str:
    """'toy:student' -> the toy folder's student; a path stays a path; a hub id stays a string."""
    if name.startswith(TOY_SCHEME):
        return toy_dir() / name[len(TOY_SCHEME) :]
    if looks_like_local_path(name):
        return Path(name).expanduser()
    return name


def resolve_data_path(name: str) -> Path:
    """'toy:test' -> the countdown task's test file; 'toy:chain/test' -> the chain task's; other names are paths."""
    if name.startswith(TOY_SCHEME):
        task, _, split = name[len(TOY_SCHEME) :].rpartition("/")  # task is '' for countdown
        return toy_dir() / task / "data" / TOY_DATA_FILES.get(split, split)
    return Path(name).expanduser()


DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
MAX_REPO_NAME = 96  # the hub's limit on each part of a repo id
# the same rules as one JSON Schema pattern (ECMA regex), so the API document declares what repo_id_problem refuses
HUB_REPO_ID_PATTERN = (r"^$|^(?!.*(?:--|\.\.))(?!.*\.git$)[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
                       r"(?:/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?$")  # fmt: skip


def repo_id_problem(repo_id: str) -> str | None:
    """None for a repo id the hub accepts to create ('ORG/NAME', or 'NAME' in the token's own namespace),
    else what is wrong with it (the hub's rules: letters, digits, '-', '_', '.'; no '--' or '..')."""
    parts = repo_id.split("/")
    bad = (len(parts) > 2 or not all(_REPO_NAME.fullmatch(p) and len(p) <= MAX_REPO_NAME for p in parts)
           or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"))  # fmt: skip
    if bad:
        return (f"must be a hub repo id 'ORG/NAME' or 'NAME' (letters, digits, '-', '_', '.'; at most {MAX_REPO_NAME} "
                f"each; no '--' or '..'), got {repo_id!r}")  # fmt: skip
    return None


def is_hub_dataset(name: str) -> bool:
    """'org/name' that is not here (no such file or folder, not a data file's name): a hub dataset id.

    A missing 'runs/train.jsonl' stays a path (its error says no data there), as does anything
    `looks_like_local_path` calls local."""
    return bool(_HUB_REPO_ID.match(name)) and not name.endswith(DATA_SUFFIXES) and not looks_like_local_path(name)


def looks_like_local_path(name: str) -> bool:
    """True for toy names, existing paths and anything that cannot be a hub id ('org/name').

    'runs/exp1' is a path when a folder 'runs' exists here (a hub id's org is never a local folder by chance
    that often, and a missing run folder must not turn into five retries against the hub)."""
    if name.startswith(TOY_SCHEME) or Path(name).expanduser().exists():
        return True
    if name.startswith(("/", "./", "../", "~", ".")) or "\\" in name:
        return True
    if name.count("/") == 1 and Path(name.split("/", 1)[0]).is_dir():
        return True
    return name.count("/") > 1


def missing_model_message(name: str) -> str:
    """One line for a local-looking model name without a model folder, naming the way out."""
    where = resolve_model_path(name)
    message = f"no model directory at {name!r} (resolved to {where})"
    if not name.startswith(TOY_SCHEME):
        return message
    wanted, folder = name[len(TOY_SCHEME) :], toy_dir()
    known = sorted(
        c.parent.relative_to(folder).as_posix() for g in ("*/config.json", "*/*/config.json") for c in folder.glob(g)
    )
    close = difflib.get_close_matches(wanted, known, n=1)
    if close:
        return f"{message}: did you mean 'toy:{close[0]}'?"
    if known:
        return f"{message}: the built-in tasks' models are {', '.join(f'toy:{k}' for k in known)}"
    if os.environ.get("DISTILL_TOY_DIR"):
        return (f"{message}: DISTILL_TOY_DIR={folder} holds no built task; build it there with "
                f"`distill toy build {folder}`, or unset DISTILL_TOY_DIR to use the one shipped with the package")  # fmt: skip
    return f"{message}: the package's built-in task is incomplete; reinstall it, or `distill toy build` and set DISTILL_TOY_DIR"
