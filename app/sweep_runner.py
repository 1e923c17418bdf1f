"""`distill compare` against a running service: its training runs go on the service's queue as one sweep.

`ServiceRunner` is a `core_distill.compare.runner.Runner`: given the comparison's jobs, it submits those that
train as one sweep through the REST API (an explicit `settings` list: one setting per method and
setting, the fields where the jobs differ, so each group is "method + setting"; `seeds` as the jobs
say), waits with a progress line per finished run, and writes each run's record (the shape the local
pool writes: eval curve, training seconds, token counts, model_dir) into the job's run folder. What
is left (scoring the models on the test split, jobs that only evaluate a model) runs in the local pool,
which finds those records: so the models must be readable here (a service on this machine, or a shared
disk); when they are not, the runner cancels the sweep and says so.

Jobs whose seeds differ by setting go in one sweep per set of seeds (a sweep has one `seeds` list).
Ctrl-C cancels the sweep. Nothing here is imported by core_distill; `app/cli.py` wires it in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from core_distill.compare.runner import RUN_RECORD
from core_distill.compare.settings import CompareError
from core_distill.metric_keys import COUNT_GENERATED_TOKENS, COUNT_TEACHER_TOKENS, EVAL_EXACT_MATCH
from core_distill.paths import TOY_SCHEME, looks_like_local_path
from core_distill.spec import DistillSpec

PATH_FIELDS = ("student", "teacher", "train_data", "eval_data")  # what a worker opens by name
RECORD_KEYS = (EVAL_EXACT_MATCH, COUNT_GENERATED_TOKENS, COUNT_TEACHER_TOKENS)
FAILED = ("failed", "cancelled")


class ServiceRunError(CompareError):
    """The service refused the sweep, a run of it did not succeed, or its models cannot be read here."""


# --- the API -------------------------------------------------------------------------------------
@dataclass
class ServiceClient:
    """The service's REST API: `base` URL, an optional token, an httpx client (tests pass a TestClient)."""

    base: str
    token: str | None = None
    http: httpx.Client | None = None

    def __post_init__(self) -> None:
        self.base = self.base.rstrip("/")
        self._own = self.http is None  # close only the client made here
        if self.http is None:
            self.http = httpx.Client(base_url=self.base, timeout=120)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call of /api{path}: the decoded JSON, or ServiceRunError saying in one line why not."""
        from app.sweep_cli import problem_line

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = self.http.request(method, f"/api{path}", headers=headers, **kwargs)  # type: ignore[union-attr]
        except httpx.HTTPError as exc:
            raise ServiceRunError(f"cannot reach the distill service at {self.base} ({type(exc).__name__})") from None
        if response.status_code == 401:
            raise ServiceRunError(f"{self.base} needs a valid API token: pass --token or set DISTILL_TOKEN")
        if response.status_code >= 400:
            raise ServiceRunError(f"{method} /api{path} on {self.base}: {problem_line(response)}")
        return response.json()

    def answers(self) -> bool:
        """Whether a distill service answers GET /api/health (200 with its status) within a few seconds."""
        try:
            response = self.http.get("/api/health", timeout=5)  # type: ignore[union-attr]
            return response.status_code == 200 and "status" in response.json()
        except (httpx.HTTPError, ValueError):
            return False

    def close(self) -> None:
        if self._own and self.http is not None:
            self.http.close()


# --- jobs to a sweep -----------------------------------------------------------------------------
def resolve_paths(spec: DistillSpec, here: Path | None = None) -> DistillSpec:
    """Relative local paths of a spec made absolute against `here` (the working directory, where the local
    pool would open them): a worker runs in a folder of its own. toy: names and hub ids stay as they are."""
    here = here or Path.cwd()
    overrides = {}
    for name in PATH_FIELDS:
        value = getattr(spec, name)
        if value and not value.startswith(TOY_SCHEME) and looks_like_local_path(value):
            path = Path(value).expanduser()
            if not path.is_absolute():
                overrides[name] = str((here / path).resolve())
    return spec.with_overrides(overrides) if overrides else spec


def _without_seed(spec: DistillSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    data.pop("seed")
    return data


@dataclass
class PlannedSweep:
    """One POST /api/sweeps body and, for each of its (setting index, seed), the jobs it trains."""

    body: dict[str, Any]
    jobs: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (setting, seed) -> job indices


def plan_sweeps(specs: Sequence[DistillSpec], name: str) -> list[PlannedSweep]:
    """The sweep bodies that train `specs`: identical specs train once; settings are the fields in which the
    specs differ (in the spec's field order), over the first spec; one sweep per distinct list of seeds."""
    settings: dict[str, int] = {}  # spec without seed (JSON) -> setting index
    setting_specs: list[dict[str, Any]] = []
    seeds: dict[int, list[int]] = {}  # setting -> its seeds, in job order
    where: dict[tuple[int, int], list[int]] = {}
    for i, spec in enumerate(specs):
        data = _without_seed(spec)
        key = json.dumps(data, sort_keys=True)
        index = settings.setdefault(key, len(setting_specs))
        if index == len(setting_specs):
            setting_specs.append(data)
        if spec.seed not in seeds.setdefault(index, []):
            seeds[index].append(spec.seed)
        where.setdefault((index, spec.seed), []).append(i)
    by_seeds: dict[tuple[int, ...], list[int]] = {}
    for index in range(len(setting_specs)):
        by_seeds.setdefault(tuple(seeds[index]), []).append(index)
    planned = []
    for n, (seed_list, members) in enumerate(by_seeds.items()):
        base = setting_specs[members[0]]
        varying = [
            f for f in DistillSpec.model_fields if f in base and any(setting_specs[m][f] != base[f] for m in members)
        ]
        body = {
            "name": name if len(by_seeds) == 1 else f"{name} ({n + 1}/{len(by_seeds)})",
            "spec": {**base, "seed": seed_list[0]},
            "settings": [{f: setting_specs[m][f] for f in varying} for m in members],
            "seeds": list(seed_list),
        }
        sweep = PlannedSweep(body)
        for position, member in enumerate(members):
            for seed in seed_list:
                sweep.jobs[(position, seed)] = where[(member, seed)]
        planned.append(sweep)
    return planned


# --- a run's record --------------------------------------------------------------------------------
def _timestamp(text: str) -> float:
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def run_record(detail: dict[str, Any], points: list[dict[str, Any]], spec: DistillSpec) -> dict[str, Any]:
    """A finished run as the local pool records it (core_distill.compare.runner.run_job): the eval curve as (step,
    seconds since the run started, eval accuracy, teacher tokens so far, generated tokens so far), the
    training wall time, the summed token counters and the model folder. The start is the run's start or
    its first point, whichever is earlier (a run resumed after a loss started again; its gap counts)."""
    walls = [p["wall_time"] for p in points]
    start = min([_timestamp(detail["started_at"]), *walls]) if detail.get("started_at") else min(walls, default=0.0)
    end = _timestamp(detail["finished_at"]) if detail.get("finished_at") else max(walls, default=start)
    counts: dict[str, dict[int, float]] = {COUNT_GENERATED_TOKENS: {}, COUNT_TEACHER_TOKENS: {}}
    evals: dict[int, tuple[float, float]] = {}
    for p in points:
        if p["key"] in counts:
            counts[p["key"]][p["step"]] = counts[p["key"]].get(p["step"], 0.0) + p["value"]
        elif p["key"] == EVAL_EXACT_MATCH:
            evals[p["step"]] = (p["wall_time"], p["value"])

    def so_far(key: str, step: int) -> int:
        return int(sum(v for s, v in counts[key].items() if s <= step))

    curve = [(step, round(wall - start, 2), value, so_far(COUNT_TEACHER_TOKENS, step), so_far(COUNT_GENERATED_TOKENS, step))
             for step, (wall, value) in sorted(evals.items())]  # fmt: skip
    return {
        "spec": spec.model_dump(), "model": "", "curve": curve, "seconds": round(end - start, 2),
        "generated_tokens": int(sum(counts[COUNT_GENERATED_TOKENS].values())),
        "teacher_tokens": int(sum(counts[COUNT_TEACHER_TOKENS].values())),
        "model_dir": detail.get("model_dir") or "", "test": None, "evals": {},
        "service": {"run_id": detail["id"], "output_dir": detail.get("output_dir")},
    }  # fmt: skip


def readable_model(model_dir: str) -> bool:
    path = Path(model_dir) if model_dir else None
    return path is not None and path.is_dir() and os.access(path, os.R_OK | os.X_OK)


# --- the runner ----------------------------------------------------------------------------------
def _job_label(job: Any) -> str:
    label = getattr(job, "label", None)
    if label:
        return str(label)
    spec = job.spec
    return f"{getattr(job, 'method', 'run')} lr {spec.learning_rate:g} seed {spec.seed}"


def _method_of(job: Any) -> str:
    meta = getattr(job, "meta", None) or {}
    return str(getattr(job, "method", None) or meta.get("method") or _job_label(job).split(" ")[0])


def _trains(job: Any) -> bool:
    return job.spec is not None and getattr(job, "train", True)


def _needs_local(job: Any) -> bool:
    """Whether the local pool still has work on the job: scoring its model, or a job without training."""
    return job.spec is None or bool(getattr(job, "test", False)) or bool(getattr(job, "evals", ()))


def _same_record(job: Any) -> bool:
    path = Path(job.run_dir) / RUN_RECORD
    if not path.exists():
        return False
    with suppress(ValueError, OSError):
        return json.loads(path.read_text()).get("spec") == job.spec.model_dump()
    return False


class ServiceRunner:
    """Trains a comparison's jobs on a service as one sweep, then hands the scoring to `local` (a runner
    that reuses the records written here: `core_distill.compare.runner.LocalPool(..., reuse=True)`).

    `reuse`: like the local pool's, a job whose folder holds a finished record of the same spec is not
    submitted again. `interval`: seconds between polls of the sweep."""

    def __init__(self, client: ServiceClient, local: Any, *, echo: Callable[[str], None] = print,
                 reuse: bool = False, interval: float = 2.0, name: str = "distill compare") -> None:  # fmt: skip
        self.client, self.local, self.echo, self.reuse = client, local, echo, reuse
        self.interval, self.name = interval, name
        self.sweep_ids: list[int] = []  # every sweep this runner submitted

    def run_jobs(self, jobs: Sequence[Any]) -> list[dict[str, Any]]:
        train = [i for i, job in enumerate(jobs) if _trains(job) and not (self.reuse and _same_record(job))]
        trained = self.train_on_service([jobs[i] for i in train]) if train else []
        records: list[dict[str, Any] | None] = [None] * len(jobs)
        for i, record in zip(train, trained, strict=True):
            records[i] = record
        local = [i for i, job in enumerate(jobs) if records[i] is None or _needs_local(job)]
        for i in local:  # the local pool reuses records: only those written here, or asked for with --reuse
            if jobs[i].spec is None and not self.reuse:
                (Path(jobs[i].run_dir) / RUN_RECORD).unlink(missing_ok=True)
        if local:
            for i, record in zip(local, self.local.run_jobs([jobs[i] for i in local]), strict=True):
                records[i] = record
        return records  # type: ignore[return-value]

    def close(self) -> None:
        close = getattr(self.local, "close", None)
        if close is not None:
            close()
        self.client.close()

    # --- one sweep per call ---
    def train_on_service(self, jobs: Sequence[Any]) -> list[dict[str, Any]]:
        """Submit the jobs' training as a sweep, wait for every run, write and return each job's record."""
        specs = [resolve_paths(job.spec) for job in jobs]
        methods = list(dict.fromkeys(_method_of(job) for job in jobs))
        name = f"{self.name}: {', '.join(methods)}"[:200]
        planned = plan_sweeps(specs, name)
        runs: dict[int, tuple[int, list[int]]] = {}  # run id -> (sweep id, job indices)
        records: list[dict[str, Any] | None] = [None] * len(jobs)
        submitted: list[int] = []
        try:
            for sweep in planned:
                view = self.client.call("POST", "/sweeps", json=sweep.body)
                self.sweep_ids.append(view["id"])
                submitted.append(view["id"])
                if len(view["groups"]) != len(sweep.body["settings"]):
                    self._cancel()
                    raise ServiceRunError(f"sweep {view['id']}: the service grouped {len(sweep.body['settings'])} "
                                          f"settings into {len(view['groups'])} groups")  # fmt: skip
                for position, group in enumerate(view["groups"]):
                    for run in group["runs"]:
                        runs[run["run_id"]] = (view["id"], sweep.jobs[(position, run["seed"])])
            self.echo(f"  sweep {', '.join(map(str, submitted))} on {self.client.base}: {len(runs)} runs queued for "
                      f"{len(jobs)} jobs (follow it: distill sweep show {submitted[0]})")  # fmt: skip
            self._wait(runs, jobs, specs, records)
        except KeyboardInterrupt:
            self._cancel()
            self.echo(f"\ninterrupted: cancelled sweep {', '.join(map(str, submitted)) or '(none yet)'} on "
                      f"{self.client.base} (running runs stop at their next step)")  # fmt: skip
            raise
        return records  # type: ignore[return-value]

    def _wait(self, runs: dict[int, tuple[int, list[int]]], jobs: Sequence[Any], specs: list[DistillSpec],
              records: list[dict[str, Any] | None]) -> None:  # fmt: skip
        import time

        from tqdm import tqdm

        pending = dict(runs)
        sweeps = sorted({sweep_id for sweep_id, _ in runs.values()})
        with tqdm(total=len(runs), desc=f"sweep {','.join(map(str, sweeps))}", unit="run") as bar:
            while pending:
                statuses = {}
                for sweep_id in sweeps:
                    view = self.client.call("GET", f"/sweeps/{sweep_id}")
                    statuses |= {r["run_id"]: r["status"] for g in view["groups"] for r in g["runs"]}
                for run_id in [r for r in pending if statuses.get(r) in ("succeeded", *FAILED, "lost")]:
                    sweep_id, indices = pending[run_id]
                    detail = self.client.call("GET", f"/runs/{run_id}")
                    label = _job_label(jobs[indices[0]])
                    if detail["status"] == "lost" and detail.get("resume_after"):
                        continue  # it heals by itself: resumed from its checkpoint
                    if detail["status"] != "succeeded":
                        self._fail(f"run {run_id} ({label}) of sweep {sweep_id} {detail['status']}"
                                   + (f": {detail['error']}" if detail.get("error") else ""), sweep_id)  # fmt: skip
                    if not readable_model(detail.get("model_dir") or ""):
                        self._fail(f"run {run_id} ({label}) of sweep {sweep_id} saved its model to "
                                   f"{detail.get('model_dir')!r} on the service's disk, which this machine cannot read "
                                   "(a service on another machine?). distill compare scores every model here: run it "
                                   "on the service's machine (or one sharing its disk), or without --server and "
                                   "DISTILL_SERVER to train in the local pool", sweep_id)  # fmt: skip
                    points = self.client.call(
                        "GET", f"/runs/{run_id}/metrics.json", params={"keys": ",".join(RECORD_KEYS)}
                    )
                    for i in indices:
                        record = run_record(detail, points, jobs[i].spec)
                        record["service"] |= {"url": self.client.base, "sweep_id": sweep_id}
                        folder = Path(jobs[i].run_dir)
                        folder.mkdir(parents=True, exist_ok=True)
                        (folder / RUN_RECORD).write_text(json.dumps(record, indent=2))
                        records[i] = record
                    del pending[run_id]
                    curve = records[indices[0]]["curve"]  # type: ignore[index]
                    accuracy = f", eval accuracy {curve[-1][2]:.1%}" if curve else ""
                    with tqdm.external_write_mode():
                        self.echo(f"  [{len(runs) - len(pending)}/{len(runs)}] {label}: run {run_id}{accuracy}, "
                                  f"{records[indices[0]]['seconds']:.0f} s")  # type: ignore[index]  # fmt: skip
                    bar.update(1)
                if pending:
                    time.sleep(self.interval)

    def _fail(self, message: str, sweep_id: int) -> None:
        cancelled = self._cancel()
        raise ServiceRunError(message + (f"; the sweep's other unfinished runs were cancelled (distill sweep show "
                                          f"{sweep_id})" if cancelled else f" (distill sweep show {sweep_id})"))  # fmt: skip

    def _cancel(self) -> bool:
        """Cancel every sweep this runner submitted (best effort); whether any run was left to cancel."""
        cancelled = False
        for sweep_id in self.sweep_ids:
            with suppress(ServiceRunError):
                self.client.call("POST", f"/sweeps/{sweep_id}/cancel")
                cancelled = True
        return cancelled


# --- the CLI's hook --------------------------------------------------------------------------------
def service_runner(server: str | None, token: str | None, *, workers: int, echo: Callable[[str], None],
                   reuse: bool, interval: float = 2.0) -> ServiceRunner | None:  # fmt: skip
    """The runner of `distill compare`: a ServiceRunner when --server is given (it must answer) or when
    DISTILL_SERVER is set and answers /api/health; None (the local pool) otherwise."""
    from core_distill.compare.runner import LocalPool

    url = server or os.environ.get("DISTILL_SERVER")
    if not url:
        return None
    client = ServiceClient(url, token or os.environ.get("DISTILL_TOKEN"))
    if not client.answers():
        client.close()
        if server:
            raise ServiceRunError(f"--server {url}: no distill service answers {url.rstrip('/')}/api/health "
                                  "(start one with `distill up`, or leave out --server for the local pool)")  # fmt: skip
        echo(f"DISTILL_SERVER={url} does not answer /api/health: the comparison trains in the local pool")
        return None
    echo(f"training on the service at {client.base} (its queue, as sweeps); scoring the models here")
    return ServiceRunner(client, LocalPool(workers or os.cpu_count() or 1, echo, True), echo=echo, reuse=reuse,
                         interval=interval)  # fmt: skip
