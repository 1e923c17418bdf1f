"""`distill compare` against a service: app.sweep_runner.ServiceRunner submits a comparison's jobs as one sweep
to the in-process API, a real worker trains them, and the records come back in the local pool's shape; a
failed run and Ctrl-C cancel the sweep and say so. On the session's real database and Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.sweep_runner import ServiceClient, ServiceRunError, ServiceRunner, plan_sweeps, resolve_paths
from core_distill.compare.runner import RUN_RECORD, EvalRequest, Job, LocalPool
from core_distill.spec import DistillSpec
from tests.helpers.specs import tiny_spec

pytestmark = pytest.mark.slow

STEPS = 3


def spec_of(**fields) -> DistillSpec:
    return DistillSpec.parse(tiny_spec(max_steps=STEPS, eval_every=STEPS, save_every=0, learning_rate=1e-3) | fields)


def job(method: str, spec: DistillSpec, root: Path, test: bool = False) -> Job:
    scored = EvalRequest("test", "toy:test", 1.0, 1, (0,), 4, "toy:teacher", "countdown", spec.max_new_tokens)
    return Job(method, root / method / f"seed{spec.seed}", spec, evals=(scored,) if test else ())


def runner(client, echo=print) -> ServiceRunner:
    return ServiceRunner(ServiceClient("http://testserver", http=client), LocalPool(1, echo, True), echo=echo,
                         interval=0.5)  # fmt: skip


def test_plan_groups_by_method_and_setting_with_the_jobs_seeds():
    sft = DistillSpec.parse(tiny_spec(objective="sft", lmbda=0.0))
    on_policy = DistillSpec.parse(tiny_spec(lmbda=1.0, beta=1.0))
    specs = [sft.with_overrides({"seed": 1}), on_policy.with_overrides({"seed": 1}), sft.with_overrides({"seed": 1}),
             on_policy.with_overrides({"seed": 2, "learning_rate": 1e-4})]  # fmt: skip
    first, second = plan_sweeps(specs, "cmp")
    assert first.body["settings"] == [{"objective": "sft", "lmbda": 0.0, "beta": 0.5},
                                      {"objective": "gkd", "lmbda": 1.0, "beta": 1.0}]  # fmt: skip
    assert first.body["seeds"] == [1] and first.jobs == {(0, 1): [0, 2], (1, 1): [1]}  # the same spec trains once
    assert second.body["seeds"] == [2] and second.body["settings"] == [{}] and second.body["name"] == "cmp (2/2)"
    assert DistillSpec.parse(first.body["spec"]).seed == 1


def test_relative_paths_are_made_absolute_where_the_local_pool_would_open_them(tmp_path):
    (tmp_path / "data").mkdir()
    spec = DistillSpec.parse(tiny_spec(train_data="./data/train.jsonl"))
    resolved = resolve_paths(spec, tmp_path)
    assert resolved.train_data == str(tmp_path / "data" / "train.jsonl")
    assert resolved.student == "toy:student" and resolved.eval_data == "toy:eval"


def test_jobs_train_on_the_service_as_one_sweep_and_come_back_as_records(client, worker, tmp_path, capsys):
    worker.ensure_running()
    jobs = [job("supervised_kd", spec_of(lmbda=0.0, beta=0.0), tmp_path, test=True),
            job("on_policy", spec_of(lmbda=1.0, beta=1.0), tmp_path)]  # fmt: skip
    service = runner(client)
    try:
        records = service.run_jobs(jobs)
    finally:
        service.close()
    assert len(service.sweep_ids) == 1
    view = client.get(f"/api/sweeps/{service.sweep_ids[0]}").json()
    assert view["status"] == "finished" and view["counts"]["succeeded"] == 2
    assert [g["setting"] for g in view["groups"]] == [{"lmbda": 0.0, "beta": 0.0}, {"lmbda": 1.0, "beta": 1.0}]
    assert [g["label"] for g in view["groups"]] == ["lmbda=0.0, beta=0.0", "lmbda=1.0, beta=1.0"]
    for j, record in zip(jobs, records, strict=True):
        assert record["spec"] == j.spec.model_dump()
        assert [p[0] for p in record["curve"]] == [0, STEPS]  # the student before training, the last step
        assert all(0 <= p[2] <= 1 and p[1] >= 0 for p in record["curve"]) and record["seconds"] > 0
        assert record["teacher_tokens"] > 0 and record["curve"][-1][3] == record["teacher_tokens"]
        assert Path(record["model_dir"], "config.json").exists()
        assert json.loads((j.run_dir / RUN_RECORD).read_text())["model_dir"] == record["model_dir"]
    assert records[0]["generated_tokens"] == 0 < records[1]["generated_tokens"]  # only on-policy samples
    assert 0 <= records[0]["evals"]["test"]["report"]["accuracy"] <= 1  # scored here
    assert records[1]["evals"] == {}
    out = capsys.readouterr().out
    assert "[1/2]" in out and "[2/2]" in out and f"sweep {service.sweep_ids[0]}" in out


def test_a_failed_run_raises_naming_it_and_cancels_the_rest(client, worker, tmp_path, toy_dir):
    worker.ensure_running()
    rows = (toy_dir / "data" / "train.jsonl").read_text().splitlines()
    data = tmp_path / "train.jsonl"  # good first rows (the preflight passes), a broken row past them
    data.write_text("\n".join((rows * (64 // len(rows) + 1))[:64]) + "\n{not json\n")
    jobs = [job("broken", spec_of(train_data=str(data)), tmp_path),
            job("waits", spec_of(max_steps=2000, eval_data="", eval_every=0), tmp_path)]  # fmt: skip
    service = runner(client)
    with pytest.raises(ServiceRunError) as failure:
        service.run_jobs(jobs)
    service.close()
    message, sweep_id = str(failure.value), service.sweep_ids[0]
    assert f"of sweep {sweep_id} failed" in message and "broken" in message and "were cancelled" in message
    counts = client.get(f"/api/sweeps/{sweep_id}").json()["counts"]
    assert counts["failed"] == 1 and counts["queued"] + counts["succeeded"] == 0


def test_ctrl_c_cancels_the_sweep(client, worker, tmp_path):
    worker.ensure_running()
    said: list[str] = []

    def echo(line: str) -> None:
        said.append(line)
        if "[1/2]" in line:  # the first run finished: the user presses Ctrl-C
            raise KeyboardInterrupt

    jobs = [job("first", spec_of(eval_data="", eval_every=0), tmp_path),
            job("second", spec_of(max_steps=2000, eval_data="", eval_every=0), tmp_path)]  # fmt: skip
    service = runner(client, echo)
    with pytest.raises(KeyboardInterrupt):
        service.run_jobs(jobs)
    service.close()
    sweep_id = service.sweep_ids[0]
    assert any(f"cancelled sweep {sweep_id}" in line for line in said)
    view = client.get(f"/api/sweeps/{sweep_id}").json()
    second = view["groups"][1]["runs"][0]
    assert second["status"] == "cancelled" or client.get(f"/api/runs/{second['run_id']}").json()["cancel_requested"]


def test_compare_with_a_server_that_does_not_answer_says_so(tmp_path):
    from typer.testing import CliRunner

    from app.cli import cli
    from tests.services import free_port

    url = f"http://127.0.0.1:{free_port()}"
    spec = tmp_path / "sft.yaml"
    spec.write_text("objective: sft\nlmbda: 0.0\n")
    result = CliRunner().invoke(cli, ["compare", str(spec), "--server", url, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"--server {url}: no distill service answers" in result.output
    assert not (tmp_path / "out").exists()
