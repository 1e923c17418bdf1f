"""Launch a sweep from the dashboard: a YAML document in the format of the REST body (`POST /api/sweeps`)
and of a `distill sweep submit` file (`name`, `spec`, `grid` or `settings`, `seeds`, `search`,
`samples`, `search_seed`), validated and stored by the same service, `app.services.sweeps`.

The base spec is inline (`spec:`): a `spec_file:` path would be read on the server, so the dashboard
takes it only in the examples it ships (examples/sweeps/), where it is put inline on loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from app.api.errors import validation_detail
from app.models import SweepCreate
from app.services import sweeps as sweep_service
from app.services.errors import ServiceError
from app.services.session import open_session
from core_distill.presets import SWEEPS_DIR, sweep_examples
from core_distill.spec import DuplicateKeyError, SpecError, load_yaml, yaml_error_summary
from ui.form import format_errors

SWEEP_EXAMPLES = SWEEPS_DIR
TEMPLATE = """\
name: lr-beta
spec:  # the base spec: any DistillSpec field
  max_steps: 20
grid:  # every combination is a setting; or `settings:` a list of field: value mappings
  learning_rate: [0.0003, 0.001]
  beta: [0.0, 0.5]
seeds: [0, 1, 2]
"""


class SweepYamlError(ValueError):
    """A sweep document that does not parse or validate; `errors` maps each place ("grid.beta") to what is wrong."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def _located(problem: dict[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in problem["loc"]][1:]  # without the "sweep" prefix
    field, sep, rest = problem["msg"].partition(": ")
    if not loc and sep and field in SweepCreate.model_fields:  # SweepCreate's cross-field rules: "field: message"
        return field, rest
    return ".".join(loc) or "sweep", problem["msg"]


def parse(text: str) -> SweepCreate:
    """The sweep the YAML describes; SweepYamlError names every bad place (a key set twice, an unknown
    field with its closest spec field, a value out of range)."""
    try:
        document = load_yaml(text or "")
    except DuplicateKeyError as exc:
        raise SweepYamlError({str(exc.key): exc.detail}) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise SweepYamlError({"yaml": f"not valid YAML: {yaml_error_summary(exc)}"}) from None
    if not isinstance(document, dict):
        raise SweepYamlError({"sweep": "must be a YAML mapping: name, spec, grid or settings, seeds"})
    if "spec_file" in document:
        raise SweepYamlError({"spec_file": "the dashboard takes the base spec inline, as `spec:` (a path would be "
                                           "read on the server); `distill sweep submit` reads spec files"})  # fmt: skip
    body = {"name": "sweep", "spec": {}, **document}
    try:
        return SweepCreate.model_validate(body)
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for problem in validation_detail(exc, prefix=("sweep",)):
            where, msg = _located(problem)
            errors.setdefault(where, msg)
        raise SweepYamlError(errors) from None


def _problems(errors: dict[str, str], verb: str) -> str:
    return f"**{verb}:**\n" + format_errors(errors)


def validate(text: str) -> str:
    """Every check Launch runs (each run's spec, the path policy, the preflight, the GPUs), storing nothing."""
    try:
        sweep_in = parse(text)
        planned = sweep_service.plan_runs(sweep_in)
        with open_session() as session:
            sweep_service.check_resources(session=session, planned=planned)
    except (SweepYamlError, SpecError) as exc:
        return _problems(exc.errors, "Not valid")
    settings = len({p.setting.label for p in planned})
    return f"The sweep is valid: {len(planned)} runs ({settings} settings × {len(sweep_in.seeds)} seeds)."


def launch(text: str, *, owner: str | None) -> tuple[str, int | None]:
    """Store and queue the sweep as `owner`; (message, sweep id or None). Nothing is stored on an error."""
    try:
        sweep_in = parse(text)
        with open_session() as session:
            view = sweep_service.create_sweep(session=session, sweep_in=sweep_in, user=owner)
    except (SweepYamlError, SpecError) as exc:
        return _problems(exc.errors, "Cannot launch"), None
    except ServiceError as exc:
        return f"**Cannot launch:** {exc}", None
    return f"Queued sweep {view.id} *{view.name}*: {view.runs} runs in {len(view.groups)} settings.", view.id


# --- the shipped examples ----------------------------------------------------------------------------
def examples() -> dict[str, Path]:
    return sweep_examples(SWEEP_EXAMPLES)


def example_yaml(name: str) -> str:
    """An example's text, with a `spec_file:` (relative to the example) replaced by its spec inline."""
    files = examples()
    if name not in files:
        raise ValueError(f"unknown sweep example {name!r}; known: {', '.join(files)}")
    text = files[name].read_text()
    document = load_yaml(text)
    if not isinstance(document, dict) or "spec_file" not in document:
        return text
    spec = load_yaml((files[name].parent / str(document.pop("spec_file"))).read_text()) or {}
    return yaml.safe_dump({**document, "spec": spec}, sort_keys=False)
