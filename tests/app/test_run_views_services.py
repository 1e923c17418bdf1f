"""The services behind the runs table, the run page and the compare table: the queue's order (one
function for the dashboard and the API), the spec fields that tell runs apart, and the reference
rows of the final metrics (the student before training, the teacher where its score is known)."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
from sqlalchemy import insert, select
from sqlmodel import Session

from app.db import get_engine
from app.models import Experiment, MetricPoint, Run, utcnow
from app.services import comparison
from app.services import runs as run_service
from core_distill import metric_keys as mk
from core_distill.paths import toy_dir
from core_distill.spec import DistillSpec
from tests.ui.factories import add_run


def _set_queued_at(run_id: int, minutes_ago: float) -> None:
    with Session(get_engine()) as session:
        run = session.get(Run, run_id)
        run.queued_at = utcnow() - timedelta(minutes=minutes_ago)
        session.commit()


def test_queue_order_is_oldest_queued_first_and_the_api_says_the_same(client):
    with Session(get_engine()) as session:
        late = add_run(session, name="late", status="queued")
        early = add_run(session, name="early", status="queued")
        tie_a = add_run(session, name="tie a", status="queued")
        tie_b = add_run(session, name="tie b", status="queued")
        running = add_run(session, name="running", status="running")
        done = add_run(session, name="done")
    _set_queued_at(late.id, 1)
    _set_queued_at(early.id, 30)
    for run in (tie_a, tie_b):
        with Session(get_engine()) as session:  # the same instant: the lower id was queued first
            session.get(Run, run.id).queued_at = session.get(Run, early.id).queued_at + timedelta(minutes=10)
            session.commit()

    with Session(get_engine()) as session:
        assert run_service.queue_order(session=session) == [early.id, tie_a.id, tie_b.id, late.id]
        positions = run_service.queue_positions(session=session)
        assert positions == {early.id: 1, tie_a.id: 2, tie_b.id: 3, late.id: 4}
        assert run_service.queue_position(session=session, run_id=late.id) == 4
        for not_queued in (running, done):
            assert run_service.queue_position(session=session, run_id=not_queued.id) is None

    for run_id, place in [*positions.items(), (running.id, None), (done.id, None)]:
        assert client.get(f"/api/runs/{run_id}").json()["queue_position"] == place
    assert [q["run_id"] for q in client.get("/api/queue").json()["queued"]] == [early.id, tie_a.id, tie_b.id, late.id]
    assert [run_service.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th",
    ]  # fmt: skip


def test_differing_fields_are_the_fields_whose_values_differ_in_spec_order():
    base = DistillSpec(max_steps=10).model_dump(mode="json")
    specs = [{**base, "beta": 0.0}, {**base, "beta": 1.0, "loss_top_k": 8}, {**base, "beta": 1.0}]
    assert comparison.differing_fields(specs) == ["beta", "loss_top_k"]
    fields = list(DistillSpec.model_fields)
    assert fields.index("beta") < fields.index("loss_top_k")  # the order the spec declares them in
    # a stored spec without a field takes its default: it does not differ from one that states it
    assert comparison.differing_fields([{"beta": 0.5}, {"beta": 0.5, "lmbda": DistillSpec().lmbda}]) == []
    assert comparison.differing_fields([{"beta": 0.0}]) == []  # one run: nothing tells it apart
    assert comparison.differing_fields([]) == []


TOY_EVAL = {"teacher": "toy:teacher", "eval_metric": "countdown", "eval_temperature": 1.0, "max_steps": 10}


def _log(run_id: int, step: int, values: dict[str, float]) -> None:
    with Session(get_engine()) as session:
        rows = [
            {"run_id": run_id, "step": step, "key": k, "value": v, "wall_time": float(step)} for k, v in values.items()
        ]
        session.execute(insert(MetricPoint), rows)
        session.commit()


def _loaded(run_ids: list[int]) -> tuple[Session, list[tuple[Run, Experiment]]]:
    session = Session(get_engine())
    return session, comparison.load_runs(session=session, run_ids=run_ids)


def test_final_rows_add_the_student_before_training_and_the_teacher(client):
    with Session(get_engine()) as session:
        a = add_run(session, name="a", spec={**TOY_EVAL, "beta": 0.0}, steps=10, keys=("loss",))
        b = add_run(session, name="b", spec={**TOY_EVAL, "beta": 1.0}, steps=10, keys=("loss",))
        other_eval = add_run(session, name="c", spec={**TOY_EVAL, "eval_examples": 8}, steps=10, keys=("loss",))
    for run, before, after in ((a, 0.25, 0.5), (b, 0.25, 0.75), (other_eval, 0.125, 0.375)):
        _log(run.id, 0, {mk.EVAL_EXACT_MATCH: before, mk.EVAL_DIV_FKL: 3.0})
        _log(run.id, 10, {mk.EVAL_EXACT_MATCH: after})

    session, runs = _loaded([a.id, b.id, other_eval.id])
    with session:
        rows = comparison.final_rows(session=session, runs=runs)
    labels = [row["run"] for row in rows]
    assert labels[:3] == [f"#{a.id} a", f"#{b.id} b", f"#{other_eval.id} c"]  # the runs first, in the order asked
    assert [row[mk.EVAL_EXACT_MATCH] for row in rows[:3]] == [0.5, 0.75, 0.375]
    # a and b evaluated the same untrained student the same way: one row; c used other eval settings
    before = [row for row in rows if row["run"].startswith("student before")]
    assert [row["run"] for row in before] == [
        f"student before: toy:student (#{a.id} at step 0)", f"student before: toy:student (#{other_eval.id} at step 0)"
    ]  # fmt: skip
    assert [row[mk.EVAL_EXACT_MATCH] for row in before] == [0.25, 0.125]
    assert all(row["step"] == 0 and row["status"] == "" and row[mk.LOSS] is None for row in before)
    # the teacher: the toy build's recorded score (valid walks sampled at T=1), once for the shared teacher
    manifest = json.loads((toy_dir() / "manifest.json").read_text())
    teacher = [row for row in rows if row["run"].startswith("teacher")]
    assert len(teacher) == 1 and "toy:teacher" in teacher[0]["run"] and "test split" in teacher[0]["run"]
    assert teacher[0][mk.EVAL_EXACT_MATCH] == round(manifest["models"]["teacher"]["test_validity"], 4)
    # the API's comparison has the same table (one door)
    body = client.get("/api/compare", params={"run_ids": f"{a.id},{b.id},{other_eval.id}"}).json()
    assert body["finals"] == rows


def test_no_reference_row_where_the_score_is_unknown(service_env):
    with Session(get_engine()) as session:
        greedy = add_run(session, name="greedy", spec={**TOY_EVAL, "eval_temperature": 0.0}, steps=3, keys=("loss",))
        other_metric = add_run(session, name="em", spec={**TOY_EVAL, "eval_metric": "exact_match"}, steps=3)
        hub_teacher = add_run(session, name="hub", spec={**TOY_EVAL, "teacher": "org/teacher"}, steps=3)
    # no step-0 evaluation logged, and no run whose teacher score is known for its metric and decoding
    session, runs = _loaded([greedy.id, other_metric.id, hub_teacher.id])
    with session:
        rows = comparison.final_rows(session=session, runs=runs)
    assert [row["run"] for row in rows] == [f"#{greedy.id} greedy", f"#{other_metric.id} em", f"#{hub_teacher.id} hub"]
    for spec in ({**TOY_EVAL, "teacher": "toy:nope"}, {**TOY_EVAL, "teacher": ""}):
        assert comparison.teacher_score(spec) is None


def test_runs_list_carries_each_runs_latest_results_as_the_dashboard_table_shows_them(client):
    """GET /api/runs and the runs table read one service (run_views.runs_page): the last value of each
    summary key, keys a run never logged left out, the dashboard's columns in metric_keys' names."""
    from app.services import run_views
    from ui import runs as runs_view

    keys = (mk.LOSS, mk.DIV_FKL, mk.DIV_RKL, mk.PERF_TOKENS_PER_SEC)  # no eval/exact_match yet
    with Session(get_engine()) as session:
        trained = add_run(session, name="trained", steps=30, keys=keys)
        session.execute(insert(MetricPoint), [{"run_id": trained.id, "step": s, "key": mk.EVAL_EXACT_MATCH,
                                               "value": v, "wall_time": s} for s, v in ((0, 0.25), (30, 0.75))])  # fmt: skip
        session.commit()
        fresh = add_run(session, name="fresh", status="queued")
        page = run_views.runs_page(session=session)
        last = {k: session.execute(
            select(MetricPoint.value).where(MetricPoint.run_id == trained.id, MetricPoint.key == k,
                                            MetricPoint.step == 30)).scalar_one() for k in keys}  # fmt: skip

    assert run_views.RESULT_KEYS == mk.SUMMARY
    assert set(mk.SUMMARY) >= {mk.EVAL_EXACT_MATCH, mk.DIV_FKL, mk.DIV_RKL, mk.LOSS, mk.PERF_TOKENS_PER_SEC}
    assert page.results[trained.id] == {**last, mk.EVAL_EXACT_MATCH: 0.75}
    assert page.results[fresh.id] == {}

    listed = {r["id"]: r for r in client.get("/api/runs").json()["data"]}
    assert listed[trained.id]["results"] == pytest.approx(page.results[trained.id])
    assert listed[fresh.id]["results"] == {}
    assert client.get(f"/api/runs/{trained.id}").json()["results"] == pytest.approx(page.results[trained.id])

    table, _ = runs_view.runs_table()
    row = table[table["run"] == trained.id].iloc[0]
    for key in mk.SUMMARY:  # shown in the charts' unit (shares in %), under a label that says so
        column = mk.display_label(key)
        assert column in table.columns
        shown = page.results[trained.id][key] * mk.display_scale(key)
        assert row[column] == pytest.approx(shown, abs=1e-4 * mk.display_scale(key))
    assert table[table["run"] == fresh.id].iloc[0][mk.LOSS] is None or math.isnan(
        table[table["run"] == fresh.id].iloc[0][mk.LOSS]
    )


def test_live_fingerprint_moves_with_a_new_loss_point_and_new_samples(client):
    """The fingerprint the live view's tick compares (run_views.run_fingerprint) and the samples it then
    reads (run_views.eval_samples, behind GET /api/runs/{id}/samples)."""
    from app.models import EvalSamples
    from app.services import run_views
    from ui import live

    with Session(get_engine()) as session:
        run = add_run(session, name="live", status="running", steps=3, keys=(mk.LOSS,))
        before = run_views.run_fingerprint(session=session, run_id=run.id)
        assert run_views.run_fingerprint(session=session, run_id=run.id + 999) == "missing"
        session.execute(insert(MetricPoint), [{"run_id": run.id, "step": 4, "key": mk.LOSS, "value": 1.0,
                                               "wall_time": 4.0}])  # fmt: skip
        session.commit()
        after_point = run_views.run_fingerprint(session=session, run_id=run.id)
        for step in (2, 4):
            session.add(EvalSamples(run_id=run.id, step=step, wall_time=step, samples=[{"prompt": f"at {step}"}]))
        session.commit()
        after_samples = run_views.run_fingerprint(session=session, run_id=run.id)
    assert len({before, after_point, after_samples}) == 3
    assert live.probe(run.id) == after_samples
    assert live.latest_samples(run.id) == ([{"prompt": "at 4"}], 4)
    assert [s["step"] for s in client.get(f"/api/runs/{run.id}/samples").json()] == [2, 4]


def test_runs_sort_by_a_result_across_pages_with_runs_without_one_last(client):
    from app.services import run_views
    from core_distill.spec import SpecError
    from ui import runs as runs_view

    ids = {}
    with Session(get_engine()) as session:
        for name, accuracy in (("b", 0.5), ("none", None), ("a", 0.9), ("c", 0.1)):
            run = add_run(session, name=name, keys=())
            ids[name] = run.id
            if accuracy is not None:  # an older, lower point first: the latest one counts
                session.execute(insert(MetricPoint), [
                    {"run_id": run.id, "step": s, "key": mk.EVAL_EXACT_MATCH, "value": v, "wall_time": s}
                    for s, v in ((0, 0.05), (10, accuracy))])  # fmt: skip
                session.commit()
        best = run_views.runs_page(session=session, sort=mk.EVAL_EXACT_MATCH, limit=2)
        worst = run_views.runs_page(session=session, sort=mk.EVAL_EXACT_MATCH, descending=False, limit=2, skip=2)
        with pytest.raises(SpecError, match="div/xyz"):
            run_views.runs_page(session=session, sort="div/xyz")

    assert [run.id for run, _ in best.rows] == [ids["a"], ids["b"]]
    assert [run.id for run, _ in worst.rows] == [ids["a"], ids["none"]]  # lowest first: c, b | a, then none
    api = client.get("/api/runs", params={"sort": mk.EVAL_EXACT_MATCH, "order": "asc"}).json()["data"]
    assert [r["id"] for r in api] == [ids["c"], ids["b"], ids["a"], ids["none"]]
    refused = client.get("/api/runs", params={"sort": "spec.beta"})
    assert refused.status_code == 422 and "sort" in refused.text
    table, _ = runs_view.runs_table(sort=f"-{mk.EVAL_EXACT_MATCH}")
    assert list(table["name"]) == ["a", "b", "c", "none"]


def test_one_run_read_serves_the_api_and_the_dashboard_panels(client):
    """run_views.run_with_experiment is GET /api/runs/{id}'s read and the dashboard's (header, side panel,
    live charts); an unknown run is the same NotFoundError to both (a 404 there, "No run N." here)."""
    from app.services import run_views
    from app.services.errors import NotFoundError
    from ui import charts, live, runs

    with Session(get_engine()) as session:
        run = add_run(session, name="panel", status="queued", tags=["t1"])
        run_id, experiment_id = run.id, run.experiment_id
        read, experiment = run_views.run_with_experiment(session=session, run_id=run_id)
        assert (read.id, experiment.id, experiment.name) == (run_id, experiment_id, "panel")
        view = run_views.run_status_view(session=session, run_id=run_id)
        assert view.queue_position == run_service.queue_position(session=session, run_id=run_id) == 1
        with pytest.raises(NotFoundError, match=f"no run with id {run_id + 999}"):
            run_views.run_with_experiment(session=session, run_id=run_id + 999)
    body = client.get(f"/api/runs/{run_id}").json()
    assert (body["experiment_name"], body["queue_position"]) == ("panel", 1)
    assert client.get(f"/api/runs/{run_id + 999}").status_code == 404
    assert f"Run {run_id} · panel · **queued" in live.run_header(run_id)
    assert runs.run_details(run_id)[1] == "t1"
    assert f'id="live-charts-{run_id}"' in charts.live_html(run_id)
    missing = run_id + 999
    assert live.run_header(missing) == runs.run_summary(missing) == f"No run {missing}."
    assert runs.run_details(missing) == (f"No run {missing}.", "", "")
    assert charts.live_html(missing) == f'<div class="distill-empty">No run {missing}.</div>'


def test_known_keys_are_every_key_the_runs_logged(client):
    from app.services import run_views
    from ui.tabs.compare_tab import known_metric_keys

    with Session(get_engine()) as session:
        a = add_run(session, name="a", steps=2, keys=(mk.LOSS,))
        b = add_run(session, name="b", steps=2, keys=(mk.LOSS, mk.PERF_TOKENS_PER_SEC))
        assert run_views.known_keys(session=session, run_ids=[a.id, b.id]) == sorted({mk.LOSS, mk.PERF_TOKENS_PER_SEC})
        assert run_views.known_keys(session=session, run_ids=[b.id + 999]) == []
    assert {mk.LOSS, mk.PERF_TOKENS_PER_SEC} <= set(known_metric_keys(f"{a.id},{b.id}"))
