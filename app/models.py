"""SQL tables and API schemas, one family per entity (Base -> Create / table / Public).

The experiment's spec is the engine's `DistillSpec`, stored whole as JSON and validated by that
class on the way in; its fields are never re-declared here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, StrictBool, field_validator, model_validator
from sqlalchemy import JSON, Column, DateTime, Index, TypeDecorator, UniqueConstraint
from sqlmodel import Field, SQLModel

from core_distill.spec import DistillSpec


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp that always comes back with its offset: SQLite stores none and returned naive times."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    lost = "lost"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled, RunStatus.lost})

MAX_TAGS = 32
MAX_TAG_LENGTH = 64
BLANKS = " \t\n\r\f\v"  # what a tag is stripped of; the same set in TAG_PATTERN, so document and check agree
NO_NUL_PATTERN = r"^[^\x00]*$"
TAG_PATTERN = r"^[^\x00]*[^\x00 \t\n\r\f\v][^\x00]*$"  # not blank, no NUL
# The rules as the OpenAPI document states them (check_tags and check_text enforce them with clearer words)
TAGS_SCHEMA = {
    "type": "array",
    "maxItems": MAX_TAGS,
    "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG_LENGTH, "pattern": TAG_PATTERN},
}


def check_tags(tags: list[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags, got {len(tags)}")
    for tag in tags:
        if not re.search(f"[^{BLANKS}]", tag) or len(tag) > MAX_TAG_LENGTH:
            raise ValueError(f"each tag must be 1 to {MAX_TAG_LENGTH} characters, not blank, got {tag[:80]!r}")
        check_text(tag)
    return [t.strip(BLANKS) for t in tags]


def check_text(text: str | None) -> str | None:
    """Names, notes and tags are stored as given, except NUL: PostgreSQL text cannot hold it."""
    if text is not None and "\x00" in text:
        raise ValueError("NUL characters (\\x00) are refused")
    return text


MAX_GROUP_LABEL = 1000


# --- experiments --------------------------------------------------------------------------------
class ExperimentBase(SQLModel):
    name: str = Field(
        min_length=1, max_length=200, description="A short name to find the experiment by.",
        schema_extra={"json_schema_extra": {"pattern": NO_NUL_PATTERN}},
    )  # fmt: skip
    tags: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False), description="Labels.",
        schema_extra={"json_schema_extra": TAGS_SCHEMA},
    )  # fmt: skip
    notes: str = Field(
        default="", max_length=10_000, description="Free text.",
        schema_extra={"json_schema_extra": {"pattern": NO_NUL_PATTERN}},
    )  # fmt: skip

    _tags = field_validator("tags")(lambda tags: check_tags(tags))
    _text = field_validator("name", "notes")(lambda text: check_text(text))


class ExperimentCreate(ExperimentBase):
    model_config = ConfigDict(extra="forbid")  # `owner`, `id`, a typo: a 422 naming it, not silently dropped

    spec: DistillSpec = Field(description="The experiment: models, method knobs, data, training.")
    launch: StrictBool = Field(default=True, description="Queue a run right away.")  # not 0, not "yes"


class ExperimentUpdate(SQLModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422 naming it, not silently ignored

    name: str | None = Field(
        default=None, min_length=1, max_length=200, schema_extra={"json_schema_extra": {"pattern": NO_NUL_PATTERN}}
    )
    tags: list[str] | None = Field(
        default=None, schema_extra={"json_schema_extra": {"anyOf": [TAGS_SCHEMA, {"type": "null"}]}}
    )
    notes: str | None = Field(
        default=None, max_length=10_000, schema_extra={"json_schema_extra": {"pattern": NO_NUL_PATTERN}}
    )

    _tags = field_validator("tags")(lambda tags: None if tags is None else check_tags(tags))
    _text = field_validator("name", "notes")(lambda text: check_text(text))


class Experiment(ExperimentBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    owner: str | None = Field(default=None, max_length=200, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    sweep_id: int | None = Field(
        default=None, foreign_key="sweep.id", index=True, description="The sweep it is a run of."
    )
    sweep_group: str | None = Field(
        default=None, max_length=MAX_GROUP_LABEL, description="Its setting: 'beta=0.5, lmbda=1.0'."
    )

    def distill_spec(self) -> DistillSpec:
        return DistillSpec.parse(self.spec)


def experiment_yaml_schema(ref_prefix: str) -> dict[str, Any]:
    """The body of POST /api/experiments/yaml, from the two schemas: a bare spec (a field at least: an empty
    document is refused), or an ExperimentCreate whose `name` may come from the query instead."""
    whole = ExperimentCreate.model_json_schema(ref_template=f"{ref_prefix}{{model}}")
    whole.pop("$defs", None)
    whole["required"] = [name for name in whole.get("required", []) if name != "name"]
    whole["title"] = "ExperimentYaml"
    bare = {"allOf": [{"$ref": f"{ref_prefix}DistillSpec"}], "minProperties": 1, "title": "BareSpec"}
    return {"anyOf": [bare, whole]}


class ExperimentPublic(ExperimentBase):
    id: int
    spec: DistillSpec
    owner: str | None
    created_at: datetime
    sweep_id: int | None = None
    sweep_group: str | None = None


# --- sweeps -------------------------------------------------------------------------------------
SweepSearch = Literal["grid", "random"]
SweepStatus = Literal["queued", "running", "finished", "cancelled"]


class SweepBase(SQLModel):
    name: str = Field(
        min_length=1, max_length=200, description="A short name; its runs are named after it.",
        schema_extra={"json_schema_extra": {"pattern": NO_NUL_PATTERN}},
    )  # fmt: skip

    _text = field_validator("name")(lambda text: check_text(text))


SWEPT_FIELDS = [name for name in DistillSpec.model_fields if name != "seed"]  # `seeds` sets the seed
_GRID_SCHEMA = {"type": "object", "propertyNames": {"enum": SWEPT_FIELDS},
                "additionalProperties": {"type": "array", "items": {}, "minItems": 1, "uniqueItems": True}}  # fmt: skip
_SETTINGS_SCHEMA = {"type": "array", "minItems": 1, "uniqueItems": True,
                    "items": {"type": "object", "propertyNames": {"enum": SWEPT_FIELDS}}}  # fmt: skip
_RANDOM = {"properties": {"search": {"const": "random"}}, "required": ["search"]}
# SweepCreate's rules between fields, as the document states them (the validators below enforce them)
SWEEP_RULES: dict[str, Any] = {
    "not": {"properties": {"grid": {"type": "object"}, "settings": {"type": "array"}}, "required": ["grid", "settings"]},
    "if": _RANDOM,
    "then": {"properties": {"grid": {"type": "object"}, "samples": {"type": "integer"}}, "required": ["grid", "samples"]},
    "else": {"properties": {"samples": {"type": "null"}}},
}  # fmt: skip


class SweepCreate(SweepBase):
    """A base spec, a grid (every combination) or an explicit list of settings, times seeds (app.services.sweeps)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=SWEEP_RULES)

    spec: DistillSpec = Field(description="The base spec every run starts from.")
    grid: dict[str, list[Any]] | None = Field(
        default=None, description="Spec field -> values; every combination is a setting (or `samples` of them).",
        schema_extra={"json_schema_extra": {"anyOf": [_GRID_SCHEMA, {"type": "null"}]}},
    )  # fmt: skip
    settings: list[dict[str, Any]] | None = Field(
        default=None, description="Explicit settings, each a mapping of spec field -> value (instead of a grid).",
        schema_extra={"json_schema_extra": {"anyOf": [_SETTINGS_SCHEMA, {"type": "null"}]}},
    )  # fmt: skip
    seeds: list[int] = Field(
        default=[0], min_length=1, max_length=1000, description="Each setting runs once per seed.",
        schema_extra={"json_schema_extra": {"uniqueItems": True, "items": {"type": "integer", "minimum": 0,
                                                                           "maximum": 2**31 - 1}}},
    )  # fmt: skip
    search: SweepSearch = Field(default="grid", description="grid: every combination; random: `samples` of them.")
    samples: int | None = Field(default=None, ge=1, le=100_000, description="How many settings random search draws.")
    search_seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of random search's draw.")

    @field_validator("seeds", "samples", "search_seed", mode="before")
    @classmethod
    def _no_bools(cls, value: Any) -> Any:
        # pydantic would read `search_seed: false` as 0: a boolean for a number is a mistake, not a value
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise ValueError(f"must be a number, not a boolean, got {value!r}"[:200])
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"each seed once, got {seeds}")
        if any(not 0 <= s <= 2**31 - 1 for s in seeds):
            raise ValueError(f"seeds are 0 to {2**31 - 1}, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _search(self) -> SweepCreate:
        if self.grid is not None and self.settings is not None:
            raise ValueError("settings: give a grid or a list of settings, not both")
        if self.search == "random" and (self.grid is None or self.samples is None):
            raise ValueError("samples: random search draws `samples` settings from a `grid`; give both")
        if self.search == "grid" and self.samples is not None:
            raise ValueError("samples: only random search draws samples (search: random)")
        return self


class Sweep(SweepBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    owner: str | None = Field(default=None, max_length=200, index=True)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    grid: dict[str, list[Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    settings: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    seeds: list[int] = Field(sa_column=Column(JSON, nullable=False))
    search: str = Field(default="grid", max_length=16)
    samples: int | None = None
    search_seed: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class SweepPublic(SweepBase):
    id: int
    owner: str | None
    spec: dict[str, Any]
    grid: dict[str, list[Any]] | None
    settings: list[dict[str, Any]] | None
    seeds: list[int]
    search: str
    samples: int | None
    search_seed: int
    created_at: datetime


class SweepRunView(SQLModel):
    """One run of a sweep: its setting's seed, where it is, and the last value of each `eval/...` key."""

    run_id: int
    experiment_id: int
    seed: int
    status: RunStatus
    attempt: int
    last_step: int
    max_steps: int
    finals: dict[str, float] = {}


class MetricSummary(SQLModel):
    """A metric over a group's succeeded runs: mean, sample standard deviation (None for one run) and n."""

    mean: float
    sd: float | None
    n: int


class SweepGroupView(SQLModel):
    label: str  # "beta=0.5, lmbda=1.0" (the experiments' sweep_group)
    setting: dict[str, Any]  # the spec fields this group sets over the base spec
    runs: list[SweepRunView]  # one per seed, in the order of the sweep's seeds
    metrics: dict[str, MetricSummary] = {}  # eval key -> over the group's succeeded runs


class SweepSummary(SweepPublic):
    status: SweepStatus  # app.services.sweeps.sweep_status
    counts: dict[str, int]  # runs per status (every status, zeros included)
    runs: int


class SweepView(SweepSummary):
    groups: list[SweepGroupView]
    metric_keys: list[str]  # every eval key some run of the sweep logged, sorted


# --- runs ---------------------------------------------------------------------------------------
class Run(SQLModel, table=True):
    """One execution of an experiment; the row is the state machine (the queue only delivers ids)."""

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    status: str = Field(default=RunStatus.queued, max_length=16, index=True)
    attempt: int = Field(default=1, description="1 for the first execution, +1 for each resume.")
    cancel_requested: bool = False
    celery_task_id: str | None = Field(default=None, max_length=64)
    worker: str | None = Field(default=None, max_length=200)
    gpu: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    queued_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    error: str | None = None
    output_dir: str | None = Field(default=None, max_length=4096)
    model_dir: str | None = Field(default=None, max_length=4096, description="The final model, once succeeded.")
    last_step: int = Field(default=0, description="Last optimizer step whose metrics are stored.")
    max_steps: int = 0
    gpus: int = Field(default=1, description="GPUs the run asks for (its spec's `gpus`), all on one host.")
    host: str | None = Field(default=None, max_length=200, description="The worker host its GPUs are booked on.")
    auto_resume_streak: int = Field(default=0, description="Automatic resumes in a row without progress.")
    resume_after: datetime | None = Field(
        default=None, sa_type=UTCDateTime, description="A lost run resumes itself at this time (app.run_state)."
    )


class RunPublic(SQLModel):
    id: int
    experiment_id: int
    status: RunStatus
    attempt: int
    cancel_requested: bool
    worker: str | None
    gpu: str | None
    created_at: datetime
    queued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    error: str | None
    output_dir: str | None
    model_dir: str | None
    last_step: int
    max_steps: int
    gpus: int
    host: str | None
    auto_resume_streak: int = 0
    resume_after: datetime | None = None


class RunEventKind(StrEnum):
    lost = "lost"  # note: why
    auto_resumed = "auto_resumed"  # note: "attempt k of n, after S s"
    resumed = "resumed"  # by a person; note: who
    gave_up = "gave_up"  # no more automatic resumes; note: why
    header = "header"  # an attempt's engine header, one line each (e.g. "vocabulary cut from ..."); note: the lines
    warning = "warning"  # the engine's warning about the run's course (e.g. eval fell below step 0); note: its text


class RunEvent(SQLModel, table=True):
    """A transition of a run worth remembering (its history): lost and why, resumed by whom, healing given up,
    and what the engine said when an attempt started (its header) or warned of while it ran."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    kind: str = Field(max_length=16)
    attempt: int = Field(description="The run's attempt once the transition was made.")
    step: int = Field(description="The run's last stored step at the time.")
    note: str = Field(default="", max_length=500)


class RunEventPublic(SQLModel):
    at: datetime
    kind: RunEventKind
    attempt: int
    step: int
    note: str


# --- worker hosts and their GPUs ------------------------------------------------------------------
class WorkerHost(SQLModel, table=True):
    """A machine's worker (`distill worker --gpus 0,1`): announced at start, kept alive by a heartbeat."""

    name: str = Field(primary_key=True, max_length=200, description="The worker's node name, NAME@machine.")
    queue: str = Field(max_length=256, description="The Celery queue only this host consumes.")
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    stopped_at: datetime | None = Field(default=None, sa_type=UTCDateTime, description="Set on a clean shutdown.")
    assigned_at: datetime | None = Field(default=None, sa_type=UTCDateTime, description="Last GPU booking here.")
    reserved_for: int | None = Field(default=None, description="The oldest waiting run this host drains for.")


class GpuSlot(SQLModel, table=True):
    """One GPU of a host (`label` is its CUDA index, or `cpu` for a CPU-only host), and the run holding it."""

    __table_args__ = (UniqueConstraint("host", "label"),)

    id: int | None = Field(default=None, primary_key=True)
    host: str = Field(foreign_key="workerhost.name", max_length=200, index=True)
    label: str = Field(max_length=16)
    position: int = Field(default=0, description="Order of the GPU on its host.")
    run_id: int | None = Field(default=None, foreign_key="run.id", index=True)
    assigned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class GpuPublic(SQLModel):
    label: str  # CUDA index, or `cpu`
    run_id: int | None  # the run holding it (booked or running), None when free


class HostPublic(SQLModel):
    name: str
    live: bool  # announced, heartbeat fresh, not stopped
    heartbeat_at: datetime | None
    stopped_at: datetime | None
    reserved_for: int | None
    gpus: list[GpuPublic]


# --- metrics and samples ------------------------------------------------------------------------
class MetricPoint(SQLModel, table=True):
    """One scalar at one step: a long table, never joined into run listings."""

    # value and wall_time ride along in the index so chart queries never touch the table (app/metrics_query.py)
    __table_args__ = (Index("ix_metricpoint_run_key_step", "run_id", "key", "step", "value", "wall_time"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id")
    step: int
    key: str = Field(max_length=128)
    value: float
    wall_time: float = Field(description="Unix time the worker logged it.")


class EvalSamples(SQLModel, table=True):
    """The sampled eval completions of one evaluation, with per-token divergences (heat map)."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    step: int
    wall_time: float
    samples: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))


# --- auth ---------------------------------------------------------------------------------------
class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True, description="Who holds it; experiments are owned by this name.")
    token_hash: str = Field(max_length=128, unique=True, description="sha256 of the token; the token is never stored.")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
