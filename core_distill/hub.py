"""Sending a finished model to the Hugging Face hub: `distill push RUN --repo ORG/NAME` and the spec's `push_to_hub`.

Through huggingface_hub: `create_repo` (private unless asked otherwise) and `upload_folder` of `final/`
(weights, tokenizer, the model card and spec.yaml, core_distill/model_card.py). The token is the usual one:
HF_TOKEN, else the one `hf auth login` stored. HF_ENDPOINT names another hub (a mirror, or the tests' local
stand-in). Offline (HF_HUB_OFFLINE=1) or with the hub out of reach, a push fails within seconds with one
line (`HubError`): huggingface_hub's own requests have no timeout, so one short request (whoami, which also
checks the token) goes first.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from core_distill.paths import repo_id_problem

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_SECONDS = 5.0  # the first request's limit: a hub that does not answer in this is out of reach
TRUE = {"1", "on", "yes", "true"}


class HubError(Exception):
    """A push that cannot be done; the message is one line saying why."""


def endpoint() -> str:
    """The hub's base URL, read when asked (HF_ENDPOINT may be set after huggingface_hub was imported)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_token() -> str | None:
    """HF_TOKEN, else the token `hf auth login` stored (huggingface_hub's own lookup)."""
    from huggingface_hub import get_token

    return get_token()


def push_problem() -> str | None:
    """Why a push from this machine would fail, found without sending anything; None when it may work."""
    if offline():
        return "HF_HUB_OFFLINE is set here, so nothing can be sent to the hub"
    if not hub_token():
        return "no Hugging Face token here (set HF_TOKEN, or run `hf auth login`)"
    return None


def _one_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


def _httpx():
    """The HTTP client module huggingface_hub uses: httpx2 (huggingface_hub 2), else httpx (1.x)."""
    try:
        import httpx2 as module
    except ImportError:
        import httpx as module
    return module


def _probe(base: str, token: str) -> None:
    """One request with a short timeout: the hub answers, and takes the token."""
    from huggingface_hub.utils import get_session

    httpx = _httpx()

    try:
        response = get_session().get(f"{base}/api/whoami-v2", headers={"authorization": f"Bearer {token}"},
                                     timeout=PROBE_SECONDS)  # fmt: skip
    except httpx.TimeoutException:
        raise HubError(f"the hub at {base} did not answer in {PROBE_SECONDS:g} s") from None
    except (httpx.HTTPError, OSError) as exc:  # no route, no DNS, refused, offline mode
        raise HubError(f"cannot reach the hub at {base} ({type(exc).__name__}: {_one_line(exc, 200)})") from None
    if response.status_code == 401:
        raise HubError(f"the hub at {base} refused the token (401): set a valid HF_TOKEN or run `hf auth login`")
    if response.status_code >= 400:
        raise HubError(f"the hub at {base} answered {response.status_code}: {_one_line(response.text, 200)}")


def push_folder(folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
                commit_message: str = "Upload a distilled model (distill)") -> str:  # fmt: skip
    """Create `repo_id` (private unless `private=False`; an existing repo is kept as it is) and upload `folder`.

    Returns:
        the repository's URL.
    Raises:
        HubError: one line: a bad repo id, offline, no token, the hub out of reach or refusing.
    """
    folder = Path(folder)
    if problem := repo_id_problem(repo_id):
        raise HubError(f"--repo {problem}")
    if not folder.is_dir():
        raise HubError(f"no model folder at {folder}")
    if offline():
        raise HubError("HF_HUB_OFFLINE is set: nothing can be sent to the hub (unset it to push)")
    token = token or hub_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN, or run `hf auth login`")
    base = endpoint()
    _probe(base, token)

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    httpx = _httpx()
    api = HfApi(endpoint=base, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=url.repo_id, folder_path=folder, repo_type="model", commit_message=commit_message)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise HubError(f"the hub at {base} refused the upload to {repo_id} ({status}): {_one_line(exc, 200)}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise HubError(f"the upload to {base} broke off ({type(exc).__name__}: {_one_line(exc, 200)})") from None
    except ValueError as exc:  # the hub's verdict on README.md's metadata, or an answer huggingface_hub cannot read
        raise HubError(f"the hub at {base} did not take the upload to {repo_id}: {_one_line(exc, 200)}") from None
    return f"{base}/{url.repo_id}"


def push_run_model(spec, model_dir: Path | None, reporter=None, *, printed: bool = False) -> str | None:
    """The spec's `push_to_hub` after a run: upload `model_dir` (final/); the URL, or None.

    A failed push never loses the run: it warns (the log, the reporter's `warning`, stderr when `printed`)
    saying how to push the kept folder later, and returns None.
    """
    if not spec.push_to_hub or model_dir is None:
        return None
    try:
        url = push_folder(model_dir, spec.push_to_hub, private=spec.hub_private)
    except Exception as exc:  # noqa: BLE001  (HubError, or anything unforeseen: the trained model is kept either way)
        why = str(exc) if isinstance(exc, HubError) else f"{type(exc).__name__}: {_one_line(exc, 200)}"
        run_dir = Path(model_dir).parent
        text = (f"push_to_hub: {why}; the model stays in {model_dir} (send it later with "
                f"`distill push {run_dir} --repo {spec.push_to_hub}`)")  # fmt: skip
        if printed:  # the terminal (not the log as well: without handlers Python's last resort prints it again)
            print(f"warning: {text}", file=sys.stderr, flush=True)
        else:
            log.warning(text)
        if (note := getattr(reporter, "warning", None)) is not None:  # optional in the Reporter protocol
            note(text)
        return None
    log.info("pushed %s to %s", model_dir, url)
    if printed:
        print(f"pushed to {url}", flush=True)
    return url
