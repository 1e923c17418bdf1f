"""The experiment spec's JSON schema (forms, clients) and the example specs as presets."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter

from app.api.schemas import Preset
from core_distill.presets import spec_presets
from core_distill.spec import DistillSpec, SpecError

router = APIRouter(tags=["spec"])


@router.get("/spec/schema")
def spec_schema() -> dict[str, Any]:
    """DistillSpec's JSON schema: every field's type, default, range, description and UI group."""
    return DistillSpec.model_json_schema()


@router.get("/presets", response_model=list[Preset])
def presets() -> list[Preset]:
    """The example specs of examples/*.yaml (one per distillation method), ready to post."""
    return list(_load_presets())


@lru_cache(maxsize=1)
def _load_presets() -> tuple[Preset, ...]:
    found = []
    for path in spec_presets().values():
        text = path.read_text()
        try:
            spec = DistillSpec.from_yaml(text)
        except SpecError:
            continue  # an example that no longer parses is the engine's test failure, not the API's
        comments = [line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")]
        found.append(Preset(name=path.stem, description=comments[0] if comments else "", spec=spec, yaml=text))
    return tuple(found)
