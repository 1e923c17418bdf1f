"""The hub on the service: a worker run with `push_to_hub` uploads final/ (model card, spec.yaml) with the worker's
token, private by default; a push the hub refuses is a warning on the run and the run still succeeds with its
model kept; every service run leaves metrics.jsonl and metrics.parquet beside final/, the database's points.

The hub is tests/helpers/hub.LocalHub, a local stand-in (this machine cannot reach huggingface.co), named by the
worker's HF_ENDPOINT.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from sqlmodel import Session, select

from app.db import get_engine
from app.models import RunEvent, RunEventKind, RunStatus
from core_distill.model_card import final_metrics, number, read_metrics_jsonl
from tests.helpers import trackers as th
from tests.helpers.factories import launch, read_run, wait_for
from tests.helpers.hub import LocalHub
from tests.helpers.specs import training_spec
from tests.worker.conftest import HEARTBEAT_SECONDS, WorkerProcess
from tests.worker.test_trackers import stored_metrics

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 300
TOKEN = "hf_worker_token"


@pytest.fixture(scope="module")
def local_hub():
    with LocalHub(TOKEN, refused=frozenset({"not-mine"})) as hub:
        yield hub


@pytest.fixture(scope="module")
def hub_worker(_service_backends, _toy_build, local_hub, tmp_path_factory):
    """A worker whose environment names the local hub and a token for it, as a team's worker would name theirs."""
    database, redis_server = _service_backends
    home = tmp_path_factory.mktemp("hub-worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        DISTILL_DATABASE_URL=database.url, DISTILL_REDIS_URL=redis_server.url, DISTILL_TOY_DIR=str(_toy_build),
        DISTILL_HOME=str(home), DISTILL_HEARTBEAT_SECONDS=HEARTBEAT_SECONDS, PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HOME=str(home / "hf"), HF_ENDPOINT=local_hub.url,
        HF_TOKEN=TOKEN,
    )  # fmt: skip
    for name in ("DISTILL_AUTH", "DISTILL_ALLOWED_PATHS", "DISTILL_RUNS_DIR", "CUDA_VISIBLE_DEVICES"):
        env.pop(name, None)
    process = WorkerProcess(env, home, prefix="hub")
    process.start()
    yield process
    process.stop()


def finished(run_id: int, worker):
    return wait_for(lambda: (r := read_run(run_id)) and RunStatus(r.status).finished and r, RUN_TIMEOUT,
                    f"run {run_id} to finish", worker)  # fmt: skip


def test_a_service_run_pushes_final_and_leaves_its_metrics_beside_it(client, hub_worker, local_hub):
    spec = training_spec(max_steps=3, eval_data="toy:eval", eval_every=2, save_every=0, push_to_hub="team/service-run")
    run_id = launch(client, spec, name="pushed")
    run = finished(run_id, hub_worker)
    assert run.status == RunStatus.succeeded, run.error
    final, folder = Path(run.model_dir), Path(run.output_dir)
    repo = local_hub.repos["team/service-run"]
    assert repo.private and local_hub.unexpected == []
    local = {p.relative_to(final).as_posix(): p.read_bytes() for p in final.rglob("*") if p.is_file()}
    assert repo.files == local and {"README.md", "spec.yaml", "model.safetensors"} <= set(local)

    # metrics.jsonl and metrics.parquet in the run folder: what the database holds
    stored = stored_metrics(run_id)
    assert th.jsonl_metrics(folder) == stored
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "metrics.parquet").to_pylist()
    assert {(r["key"], r["step"]): r["value"] for r in table} == {
        (k, s): v for k, by in stored.items() for s, v in by.items()
    }

    # the card's numbers are the run's (its last values, and the step-0 evaluation)
    last, baseline, step = final_metrics(read_metrics_jsonl(folder / "metrics.jsonl"))
    card = ModelCard.load(final / "README.md")
    assert step == 3 and card.data.model_name == "service-run"
    for key in ("loss", "eval/exact_match"):
        before = number(baseline[key]) if key in baseline else "-"
        assert f"| `{key}` | {before} | {number(last[key])} |" in card.text, key


def test_a_refused_push_is_a_warning_and_the_run_keeps_its_model(client, hub_worker, local_hub):
    spec = training_spec(max_steps=2, save_every=0, push_to_hub="not-mine/model")
    run_id = launch(client, spec, name="refused")
    run = finished(run_id, hub_worker)
    assert run.status == RunStatus.succeeded, run.error
    assert (Path(run.model_dir) / "model.safetensors").is_file() and "not-mine/model" not in local_hub.repos
    with Session(get_engine()) as session:
        notes = session.exec(select(RunEvent.note).where(RunEvent.run_id == run_id,
                                                         RunEvent.kind == RunEventKind.warning)).all()  # fmt: skip
    assert len(notes) == 1 and notes[0].startswith("push_to_hub: the hub at") and "(403)" in notes[0], notes
    assert f"distill push {run.output_dir} --repo not-mine/model" in notes[0]
    assert (Path(run.output_dir) / "metrics.jsonl").is_file()
