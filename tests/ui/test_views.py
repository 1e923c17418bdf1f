"""Dashboard handlers as plain functions, against the real database (and Redis for launches)."""

from __future__ import annotations

import re

from sqlalchemy import func, insert, select
from sqlmodel import Session

from app.db import get_engine
from app.models import Experiment, MetricPoint, Run
from core_distill.spec import DistillSpec
from tests.ui.factories import add_run
from ui import app as dashboard
from ui import charts, compare, form, heatmap, live, runs


def _count(model) -> int:
    with Session(get_engine()) as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def test_runs_table_filters_and_shows_queue_and_metrics(service_env):
    with Session(get_engine()) as session:
        done = add_run(session, name="fkl", spec={"beta": 0.0}, tags=["baseline"], steps=30)
        first = add_run(session, name="jsd", spec={"beta": 0.5}, status="queued")
        second = add_run(session, name="rkl", spec={"beta": 1.0}, status="queued")

    table, caption = runs.runs_table()
    assert caption.startswith("3 run(s)") and list(table["run"]) == [second.id, first.id, done.id]
    by_run = table.set_index("run")
    assert by_run.loc[first.id, "status"] == "queued (1st in line)"
    assert by_run.loc[second.id, "status"] == "queued (2nd in line)" and by_run.loc[done.id, "status"] == "succeeded"
    assert by_run.loc[done.id, "loss"] is not None and by_run.loc[done.id, "step"] == "30/100"
    assert by_run.loc[done.id, "beta"] == 0.0 and by_run.loc[done.id, "tags"] == "baseline"

    assert list(runs.runs_table(status="queued")[0]["run"]) == [second.id, first.id]
    assert list(runs.runs_table(tag_text="baseline")[0]["run"]) == [done.id]
    assert list(runs.runs_table(field_text="beta=0.5")[0]["run"]) == [first.id]
    table, caption = runs.runs_table(field_text="betta=0.5")
    assert table.empty and "betta" in caption
    table, caption = runs.runs_table(field_text="beta")
    assert table.empty and "'beta' is not field=value" in caption


def test_runs_table_puts_the_fields_that_differ_first(service_env):
    with Session(get_engine()) as session:
        add_run(session, name="a", spec={"beta": 0.0, "seed": 1})
        add_run(session, name="b", spec={"beta": 0.5, "seed": 1, "loss_top_k": 8})
    table, caption = runs.runs_table()
    columns = list(table.columns)
    assert columns[: len(runs.LEAD_COLUMNS) + 2] == [*runs.LEAD_COLUMNS, "beta", "loss_top_k"]
    assert columns.count("beta") == 1 and "seed" not in columns  # the same in every run: not a column
    assert "They differ in beta, loss_top_k" in caption
    assert list(table["loss_top_k"]) == [8, 0]
    # filtered down to one run, nothing differs: the usual columns in their usual order
    alone, caption = runs.runs_table(field_text="beta=0.5")
    assert list(alone.columns) == list(runs.RUN_COLUMNS) and "differ" not in caption


def test_tags_notes_and_cancel_from_the_side_panel(service_env):
    with Session(get_engine()) as session:
        queued = add_run(session, name="waiting", status="queued")
    assert runs.save_tags_notes(queued.id, "a, b", "first try").startswith("Saved")
    assert runs.run_details(queued.id)[1:] == ("a, b", "first try")
    assert "Not saved" in runs.save_tags_notes(queued.id, "x" * 100, "")  # tag too long: nothing changes
    assert runs.run_details(queued.id)[1] == "a, b"

    assert "queued (1st in line)" in runs.run_summary(queued.id)
    message, _ = runs.act_on_run("cancel", queued.id)
    assert message == f"Run {queued.id} cancelled."
    assert ": cancelled," in runs.run_summary(queued.id)  # what the panel re-reads when the table changes
    message, _ = runs.act_on_run("cancel", queued.id)  # already finished: refused, named
    assert "cancel failed" in message and "cancelled" in message
    message, _ = runs.act_on_run("resume", queued.id)  # never started, no checkpoint
    assert "resume failed" in message and "no checkpoint" in message


def test_live_view_names_its_run_and_the_teacher_reference(service_env):
    """The charts' container: the run (and attempt) the browser follows, the catalogue's chart families,
    and the teacher's score as a reference where it is known (the toy teacher on the countdown metric)."""
    with Session(get_engine()) as session:
        toy = add_run(session, name="toy", status="running", steps=3, keys=("loss",), spec={
            "teacher": "toy:teacher", "student": "toy:student", "eval_metric": "countdown", "eval_temperature": 1.0})  # fmt: skip
        other = add_run(session, name="other", steps=3, keys=("loss",))
    outputs = dashboard.live_outputs(toy.id, 0.5, "wall_time")
    assert f"Run {toy.id}" in outputs[0]
    container = re.search(r'<div class="distill-live"[^>]*>', outputs[1]).group(0)
    assert f'data-run="{toy.id}"' in container and 'data-attempt="1"' in container
    assert 'data-smoothing="0.5"' in container and 'data-x="wall_time"' in container
    assert "Training loss" in container and "nats/token" in container  # the families, escaped JSON
    assert "teacher toy:teacher" in container and "eval/exact_match" in container
    references = re.search(r'data-references="[^"]*"', dashboard.live_outputs(other.id, 0, "step")[1])
    assert "teacher" not in references.group(0)
    assert "No run 999999" in dashboard.live_outputs(999999, 0, "step")[1]
    assert "Pick a run" in dashboard.live_outputs(None, 0, "step")[1]


def test_probe_changes_only_when_the_run_moves(service_env):
    with Session(get_engine()) as session:
        run = add_run(session, name="live", status="running", steps=5, keys=("loss",))
    before = live.probe(run.id)
    assert before == live.probe(run.id)
    with Session(get_engine()) as session:
        session.execute(
            insert(MetricPoint), [{"run_id": run.id, "step": 6, "key": "loss", "value": 1.0, "wall_time": 1.0}]
        )
        session.commit()
    assert live.probe(run.id) != before
    assert live.probe(None) == "" and live.probe(123456) == "missing"


def test_run_header_links_downloads(service_env):
    with Session(get_engine()) as session:
        run = session.merge(add_run(session, name="done", steps=3))
        run.model_dir = "/models/run-1/final"
        session.commit()
        session.refresh(run)
    header = live.run_header(run.id)
    for suffix in ("metrics.csv", "metrics.json", "metrics.jsonl", "metrics.parquet", "spec.yaml"):
        assert f"/api/runs/{run.id}/{suffix}" in header
    assert "/models/run-1/final" in header


def test_run_header_shows_the_place_in_line_and_the_error_as_preformatted_text(service_env):
    with Session(get_engine()) as session:
        first = add_run(session, name="first", status="queued")
        second = add_run(session, name="second", status="queued")
        failed = session.merge(add_run(session, name="broken", status="failed", steps=2))
        failed.error = "Traceback (most recent call last):\n  x = `y`\nValueError: *no* ```"
        session.commit()
        session.refresh(failed)
    assert "**queued (1st in line)**" in live.run_header(first.id)
    assert "**queued (2nd in line)**" in live.run_header(second.id)
    header = live.run_header(failed.id)
    assert "**failed**" in header
    # fenced with more backticks than the error holds, so the traceback stays one <pre> block, as written
    assert "\n````text\nTraceback (most recent call last):\n  x = `y`\nValueError: *no* ```\n````" in header
    assert "Error: `" not in header


def test_preset_names_are_readable_and_come_from_the_examples():
    choices = dict(form.preset_choices())
    assert choices["On-policy GKD (λ=1, β=0.5)"] == "gkd_on_policy"
    assert choices["Supervised KD (λ=0, β=0)"] == "supervised_kd"
    assert set(choices.values()) == set(form.presets())  # every example, each once
    assert all(not title.startswith(stem) for title, stem in choices.items())


def test_spec_diff_shows_only_differing_fields():
    diff = compare.spec_diff({
        "#1 a": DistillSpec(beta=0.0, max_steps=10).model_dump(),
        "#2 b": DistillSpec(beta=1.0, max_steps=10).model_dump(),
        "#3 c": DistillSpec(beta=1.0, max_steps=10, loss_top_k=8).model_dump(),
    })  # fmt: skip
    assert list(diff["field"]) == ["beta", "loss_top_k"]
    assert list(diff.columns) == ["field", "#1 a", "#2 b", "#3 c"]
    assert list(diff.iloc[0])[1:] == [0.0, 1.0, 1.0]
    assert compare.spec_diff({"#1": {}, "#2": {}}).empty


def test_compare_overlays_runs_with_a_reproducible_link(service_env):
    with Session(get_engine()) as session:
        a = add_run(session, name="fkl", spec={"beta": 0.0}, steps=2_000, keys=("loss", "div/fkl"))
        b = add_run(session, name="rkl", spec={"beta": 1.0}, steps=2_000, keys=("loss", "div/fkl"), seed=1)
    keys = ["loss", "div/fkl", "div/rkl", "eval/exact_match", "lr", "grad_norm"]  # any number: none dropped
    chart_html, diff, finals, link = compare.compare(f"{a.id}, {b.id}", keys)
    assert 'class="distill-compare"' in chart_html
    assert all(f"&quot;{key}&quot;" in chart_html for key in keys)
    styles = [charts.run_style(a.id), charts.run_style(b.id)]
    assert (f"[[{a.id}, &quot;#{a.id} fkl&quot;, &quot;{styles[0][0]}&quot;, &quot;{styles[0][1]}&quot;], "
            f"[{b.id}, &quot;#{b.id} rkl&quot;, &quot;{styles[1][0]}&quot;, &quot;{styles[1][1]}&quot;]]") in chart_html  # fmt: skip
    assert f'data-max-points="{compare.points_per_series(2)}"' in chart_html
    assert list(diff["field"]) == ["beta"]
    assert list(finals["run"])[:2] == [f"#{a.id} fkl", f"#{b.id} rkl"] and finals["min loss"][:2].notna().all()
    assert f"?compare={a.id},{b.id}" in link

    outputs = dashboard.compare_outputs(f"{a.id} 999999", ["loss"], 0.0, "step")
    assert "no run with id 999999" in outputs[-1]
    assert compare.parse_run_ids(["#3 x", "4", "3"]) == [3, 4]


def test_heat_map_escapes_tokens_and_shows_values():
    samples = [{"prompt": "<b>1+1=</b>", "completion": "<script>", "reference": "2 & 2", "correct": False,
                "tokens": ["<script>", "2"], "token_div": [0.5, 20.0]}]  # fmt: skip
    html = heatmap.samples_html(samples, step=4)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;1+1=&lt;/b&gt;" in html
    assert "2 &amp; 2" in html and 'data-div="20.00000"' in html and "✗ wrong" in html
    assert "step 4" in html and "per-token divergence to the teacher, in nats" in html
    # 10 nats and above get the strongest colour
    assert "rgba(220, 38, 38, 0.93)" in html
    assert "No evaluation samples" in heatmap.samples_html([], None)


def test_heatmap_scale_is_fixed_in_nats_not_stretched_to_the_view():
    """Issue 22: every token was saturated at 0.0049 nats because the scale ran to the view's largest value."""
    tiny = [{"prompt": "p", "completion": "ab", "tokens": ["a", "b"], "token_div": [0.0049, 0.0049]}]
    colours = re.findall(r"background:([^\"]+)\"", heatmap.token_spans(tiny[0]["tokens"], tiny[0]["token_div"]))
    assert colours == [heatmap._colour(0.0049)] * 2 and heatmap.share(0.0049) < 0.2  # pale, not saturated
    # the same value has the same colour whatever else the view holds
    mixed = heatmap.token_spans(["a", "b"], [0.0049, 5.0])
    assert heatmap._colour(0.0049) in mixed and heatmap._colour(5.0) in mixed
    assert [heatmap.share(v) for v in (0.0, 0.001, 0.01, 10.0, 100.0)] == [0.0, 0.0, 0.25, 1.0, 1.0]
    cells = re.findall(r">([^<>]+)</span>", heatmap.legend())
    assert cells == ["&lt; 0.001", "0.001", "0.01", "0.1", "1", "≥ 10"] and heatmap.legend().endswith("nats</div>")


def test_launch_refuses_bad_specs_and_queues_good_ones(service_env):
    values = form.spec_to_values(DistillSpec(max_steps=2, batch_size=2))
    values[form.FIELD_NAMES.index("train_data")] = "/nonexistent/data.jsonl"
    message, run_id = dashboard.launch("bad", "", "", *values)
    assert run_id is None and "**train_data**" in message
    assert _count(Experiment) == 0 and _count(Run) == 0

    message, run_id = dashboard.launch("toy", "smoke, ui", "", *form.spec_to_values(DistillSpec(max_steps=2)))
    assert run_id is not None and f"Queued run {run_id}" in message
    with Session(get_engine()) as session:
        run = session.get(Run, run_id)
        experiment = session.get(Experiment, run.experiment_id)
        assert run.status == "queued" and run.celery_task_id and experiment.tags == ["smoke", "ui"]
    assert dashboard.table_fingerprint() != ""


def test_launch_and_validate_use_the_yaml_pane_when_it_was_edited_last(service_env):
    fields = form.spec_to_values(DistillSpec(max_steps=2, beta=0.5))  # what the fields still show
    for text in ("max_steps: 2\nlmdba: 0.7\n", "max_steps: 2\nbeta: 2\n", "beta: 0.1\nbeta: 0.2\n"):
        message, run_id = dashboard.launch("bad", "", "", *fields, spec_yaml=text)
        assert run_id is None and "Cannot launch" in message, message
        assert "Not valid" in dashboard.validate(*fields, spec_yaml=text)
    assert "did you mean 'lmbda'" in dashboard.launch("bad", "", "", *fields, spec_yaml="lmdba: 0.7\n")[0]
    assert _count(Experiment) == 0 and _count(Run) == 0

    message, run_id = dashboard.launch("yaml", "", "", *fields, spec_yaml="max_steps: 2\nbeta: 0.25\n")
    assert run_id is not None, message
    with Session(get_engine()) as session:
        stored = session.get(Experiment, session.get(Run, run_id).experiment_id).spec
    assert stored == DistillSpec(max_steps=2, beta=0.25).model_dump(mode="json")


def test_compared_runs_share_a_points_budget_per_chart():
    assert [compare.points_per_series(n) for n in (1, 2, 4, 10)] == [500, 500, 250, 100]
    assert all(n * compare.points_per_series(n) <= compare.POINTS_PER_PLOT for n in range(2, compare.MAX_RUNS + 1))


def test_every_status_has_true_words_and_only_a_failure_is_an_error(service_env):
    """Issue 22: a cancelled run was shown under an "Error:" heading."""
    from datetime import timedelta

    from app.models import RunStatus, utcnow

    texts = {RunStatus.failed: "Traceback (most recent call last):\n  ...\nValueError: boom",
             RunStatus.cancelled: "cancelled at step 7 (checkpoint kept; resume to continue)",
             RunStatus.lost: "lost: worker w1 sent no heartbeat for over 60 s"}  # fmt: skip
    with Session(get_engine()) as session:
        made = {status: add_run(session, name=status, status=status) for status in RunStatus}
        for status, text in texts.items():
            run = session.get(Run, made[status].id)
            run.error = text
            session.add(run)
        cancelling = add_run(session, name="cancelling", status="running")
        healing = add_run(session, name="healing", status="lost")
        for run_id, values in ((cancelling.id, {"cancel_requested": True}),
                               (healing.id, {"resume_after": utcnow() + timedelta(seconds=30)})):  # fmt: skip
            run = session.get(Run, run_id)
            for name, value in values.items():
                setattr(run, name, value)
            session.add(run)
        session.commit()
    expected = {made[s].id: s.value for s in RunStatus if s != RunStatus.queued}
    expected |= {cancelling.id: "running (cancelling)", healing.id: "lost (resuming automatically)"}
    table = runs.runs_table()[0].set_index("run")
    for run_id, words in expected.items():
        assert table.loc[run_id, "status"] == words, (run_id, table.loc[run_id, "status"])
    assert table.loc[made[RunStatus.queued].id, "status"] == "queued (1st in line)"
    headings = {RunStatus.failed: "**Error:**", RunStatus.cancelled: "**Stopped:**", RunStatus.lost: "**Lost:**"}
    for status, heading in headings.items():
        for shown in (runs.run_summary(made[status].id), live.run_header(made[status].id)):
            assert heading in shown and texts[status].splitlines()[-1] in shown, (status, shown)
            assert status == RunStatus.failed or "Error" not in shown, (status, shown)
    assert "cancel requested" in live.run_header(cancelling.id)


def test_a_runs_colour_follows_its_id_not_its_place_in_the_list(service_env):
    with Session(get_engine()) as session:
        a, b, c = (add_run(session, name=n, steps=3, keys=("loss",)).id for n in "abc")
    styles = [dict((r[0], tuple(r[2:])) for r in _compare_runs(ids)) for ids in ([a, b, c], [c, a], [b])]
    assert styles[0][a] == styles[1][a] == charts.run_style(a) and styles[0][c] == styles[1][c]
    assert styles[2][b] == styles[0][b]
    assert len({charts.run_style(i) for i in range(40)}) == 40  # ids closer than 40 never look alike


def _compare_runs(ids: list[int]) -> list[list]:
    import html
    import json

    chart_html = compare.compare(", ".join(map(str, ids)), ["loss"])[0]
    return json.loads(html.unescape(re.search(r'data-runs="([^"]*)"', chart_html).group(1)))


def test_tables_show_shares_in_percent_as_the_charts_do(service_env):
    """Issue 22: eval/exact_match was 0.6 in tables and 60 % in charts."""
    from core_distill import metric_keys as mk

    with Session(get_engine()) as session:
        run = add_run(session, name="acc", steps=2, keys=("loss",))
        session.execute(insert(MetricPoint), [{"run_id": run.id, "step": 2, "key": mk.EVAL_EXACT_MATCH,
                                               "value": 0.6123, "wall_time": 2.0}])  # fmt: skip
        session.commit()
    table = runs.runs_table()[0].set_index("run")
    assert table.loc[run.id, "eval/exact_match (%)"] == 61.23 and "eval/exact_match" not in table.columns
    finals = compare.compare(str(run.id), ["loss"])[2].set_index("run")
    assert finals.iloc[0]["eval/exact_match (%)"] == 61.23
    assert finals.iloc[0]["loss"] == table.loc[run.id, "loss"]  # not a share: as logged
    assert all(f.percent for f in mk.FAMILIES if mk.EVAL_EXACT_MATCH in f.keys or mk.TOPK_COVERAGE in f.keys)
