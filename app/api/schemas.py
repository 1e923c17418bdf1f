"""Response bodies of the API beyond the table schemas of app.models (which they reuse)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlmodel import Field, SQLModel
from typing_extensions import TypedDict

from app.models import ExperimentPublic, HostPublic, RunEventPublic, RunPublic, SweepSummary
from core_distill.spec import DistillSpec

# the header of every 503 (app.services.errors.RETRY_AFTER_SECONDS), as responses= declares it
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


class ErrorMessage(SQLModel):
    """The body of a 401, 403, 404, 409 or 503."""

    detail: str


class Problem(SQLModel):
    loc: list[str | int]  # where: ["body", "spec", "lmbda"], ["query", "skip"], ["path", "run_id"]
    msg: str
    type: str


class Problems(SQLModel):
    """The body of a 422: one entry per bad value, each naming where it is."""

    detail: list[Problem]


class ExperimentCreated(SQLModel):
    id: int
    run_id: int | None
    experiment: ExperimentPublic
    run: RunPublic | None


class ExperimentsPublic(SQLModel):
    data: list[ExperimentPublic]
    count: int


class SweepsPublic(SQLModel):
    data: list[SweepSummary]
    count: int


class ExperimentDetail(ExperimentPublic):
    runs: list[RunPublic]


class RunSummary(RunPublic):
    """A run in listings: its experiment's name, tags and owner, and its place in the queue."""

    experiment_name: str
    tags: list[str]
    owner: str | None
    queue_position: int | None
    results: dict[str, float] = Field(
        default_factory=dict,
        description="The last logged value of each of the run's summary metrics (core_distill.metric_keys.SUMMARY: "
        "eval/exact_match, div/fkl, div/rkl, loss, perf/tokens_per_sec); keys without a point are left out.",
    )


class RunsPublic(SQLModel):
    data: list[RunSummary]
    count: int


class RunDetail(RunSummary):
    spec: DistillSpec
    history: list[RunEventPublic] = Field(
        default_factory=list, description="Lost, resumed, healing given up, and the engine's header of an attempt."
    )
    auto_resumes: int = 0  # resumed automatically after being lost (app.run_state.resume_lost_runs)
    manual_resumes: int = 0  # resumed by a person
    healing: str | None = Field(default=None, description="One line on losing and healing, as the run page says it.")


class SeriesPoint(TypedDict):
    """One point of a chart series (a TypedDict: series are long, and the services build them as dicts)."""

    step: int
    wall_time: float  # Unix time the worker logged it
    value: float


class MetricSeries(SQLModel):
    run_id: int
    x: Literal["step", "wall_time"]
    max_points: int
    keys: list[str]  # every key the run has logged
    series: dict[str, list[SeriesPoint]]


class SpecField(SQLModel):
    name: str
    group: str | None
    values: list[Any]  # one per run, in the order of `runs`
    differs: bool


class Comparison(SQLModel):
    runs: list[RunDetail]
    fields: list[SpecField]
    series: dict[int, dict[str, list[SeriesPoint]]]
    # the dashboard's final-metrics table: one row per run, then the student before training (step 0)
    # and the teacher where its score is known (app.services.comparison.final_rows)
    finals: list[dict[str, Any]] = []


class QueuedRun(SQLModel):
    run_id: int
    experiment_id: int
    experiment_name: str
    owner: str | None
    position: int
    attempt: int
    queued_at: datetime
    gpus: int = 1
    host: str | None = None  # booked on this host's GPUs, about to start
    waiting_for: str | None = None  # why it has no GPUs yet (app.services.booking)


class RunningRun(SQLModel):
    run_id: int
    experiment_id: int
    experiment_name: str
    owner: str | None
    worker: str | None
    gpu: str | None
    gpus: int = 1
    attempt: int
    started_at: datetime | None
    heartbeat_at: datetime | None
    last_step: int
    max_steps: int
    cancel_requested: bool


class QueueState(SQLModel):
    queued: list[QueuedRun]
    running: list[RunningRun]
    hosts: list[HostPublic] = []  # worker hosts, their GPUs and the run holding each


class Health(SQLModel):
    status: Literal["ok", "degraded", "starting"]  # starting: only while `distill api` is still building the app
    database: str
    redis: str
    starting: list[str] = Field(
        default_factory=list,
        description="Parts of the service still starting ('api', 'dashboard', 'worker (cpu)'); empty once all are up.",
    )


class SamplesAtStep(SQLModel):
    step: int
    wall_time: float
    samples: list[dict[str, Any]]


class Preset(SQLModel):
    name: str
    description: str
    spec: DistillSpec
    yaml: str
