"""The Sweeps tab's handlers as plain functions, against the real database and Redis: sweeps created through
the service (`app.services.sweeps`), their runs finished by writing what a worker would have stored."""

from __future__ import annotations

import math
import statistics

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from app.db import get_engine
from app.models import Experiment, Run, Sweep, SweepCreate
from app.services import sweeps as sweep_service
from app.settings import get_settings
from core_distill import metric_keys as mk
from tests.helpers.specs import tiny_spec
from tests.ui.factories import finish_sweep_run
from ui import sweep_launch, sweep_stats
from ui import sweeps as sweep_view

ACC, FKL = mk.EVAL_EXACT_MATCH, mk.EVAL_DIV_FKL
GRID = {"learning_rate": [0.001, 0.01], "beta": [0.0, 0.5]}
# final scores per group (one per seed); the last group's third seed is still running
SCORES = {
    "learning_rate=0.001, beta=0.0": ([0.50, 0.54, 0.58], [0.30, 0.32, 0.34]),
    "learning_rate=0.001, beta=0.5": ([0.60, 0.64, 0.68], [0.20, 0.22, 0.24]),
    "learning_rate=0.01, beta=0.0": ([0.40, 0.44, 0.42], [0.10, 0.12, 0.11]),
    "learning_rate=0.01, beta=0.5": ([0.90, 0.92], [0.50, 0.52]),
}


def _count(model) -> int:
    with Session(get_engine()) as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def make_sweep(owner: str | None = None, name: str = "lr-beta", **body) -> int:
    body = {"name": name, "spec": tiny_spec(), "grid": GRID, "seeds": [0, 1, 2], **body}
    with Session(get_engine()) as session:
        return sweep_service.create_sweep(session=session, sweep_in=SweepCreate.model_validate(body), user=owner).id


def scored_sweep() -> int:
    """The grid above with SCORES written: three groups finished, the best-scoring one still running."""
    sweep_id = make_sweep()
    with Session(get_engine()) as session:
        view = sweep_service.get_sweep(session=session, sweep_id=sweep_id)
        for group in view.groups:
            accs, fkls = SCORES[group.label]
            for i, run in enumerate(group.runs):
                if i < len(accs):
                    finish_sweep_run(session, run.run_id, {ACC: accs[i], FKL: fkls[i]})
                else:
                    finish_sweep_run(session, run.run_id, {ACC: 0.95}, status="running", steps=10)
    return sweep_id


def ci(values: list[float]) -> float:
    return sweep_stats.t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


# --- statistics --------------------------------------------------------------------------------------
def test_t_quantiles_and_intervals_match_an_independent_computation():
    # the table against the Cornish-Fisher expansion the function uses beyond it (agree to 3 decimals from 10 df)
    z = 1.959964
    for df in range(10, 31):
        expansion = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        assert abs(sweep_stats.t975(df) - expansion) < 3e-3, df
    assert sweep_stats.t975(1) == 12.706 and abs(sweep_stats.t975(200) - 1.9719) < 1e-4
    with pytest.raises(ValueError):
        sweep_stats.t975(0)
    # 0.60, 0.64, 0.68: sd 0.04, t(2) = 4.303, half-width 4.303 * 0.04 / sqrt(3) = 0.09937
    assert sweep_stats.half_width(0.04, 3) == pytest.approx(0.099373, abs=1e-6)
    assert sweep_stats.half_width(0.04, 3, "sd") == 0.04
    assert sweep_stats.half_width(None, 1) is None and sweep_stats.half_width(0.1, 1) is None


def test_which_way_is_better():
    for key in (mk.EVAL_EXACT_MATCH, mk.EVAL_GREEDY_EXACT_MATCH, mk.EVAL_DISTINCT_VALID, mk.EVAL_TRUE_LOG_LIKELIHOOD):
        assert sweep_stats.higher_is_better(key), key
    for key in (mk.EVAL_DIV_FKL, mk.eval_key(mk.LOSS), mk.LOSS):
        assert not sweep_stats.higher_is_better(key), key


def test_mean_curve_aligns_seeds_on_the_step_axis():
    done = [{"step": 0, "value": 0.2}, {"step": 10, "value": 0.4}, {"step": 20, "value": 0.6}]
    sparse = [{"step": 0, "value": 0.4}, {"step": 20, "value": 0.8}]  # interpolated at step 10: 0.6
    running = [{"step": 0, "value": 0.3}, {"step": 10, "value": 0.5}]  # counts up to its last step only
    curve = sweep_stats.mean_curve([done, sparse, running])
    assert curve.steps == [0, 10, 20] and curve.n == [3, 3, 2]
    assert curve.mean == pytest.approx([0.3, 0.5, 0.7])
    assert curve.high[0] - curve.mean[0] == pytest.approx(ci([0.2, 0.4, 0.3]))
    assert curve.high[2] - curve.mean[2] == pytest.approx(ci([0.6, 0.8]))
    alone = sweep_stats.mean_curve([done])
    assert alone.n == [1, 1, 1] and alone.low == [None, None, None]
    assert sweep_stats.mean_curve([[], []]).steps == []


# --- the view ----------------------------------------------------------------------------------------
def test_the_view_marks_the_best_finished_setting_and_shows_intervals(service_env, toy_dir):
    sweep_id = scored_sweep()
    head, table, curves, setting, keys, fields, x_field = sweep_view.sweep_outputs(sweep_id, ACC)
    best = "learning_rate=0.001, beta=0.5"  # the running group scores higher but has not finished
    assert f"Sweep {sweep_id} · lr-beta · **running**" in head
    assert f"**{best}**: the highest mean final `{ACC}` among 3 finished setting(s), 64.00 %" in head
    assert f"95% CI ± {ci([0.60, 0.64, 0.68]) * 100:.2f} over 3 seed(s)" in head
    assert f"/api/sweeps/{sweep_id}/export?format=csv" in head and "export?format=json" in head
    assert "?compare=" in head

    rows = table.set_index("setting")
    assert list(rows.index) == list(SCORES) and list(rows["chosen"]) == ["", "★", "", ""]
    assert list(rows["learning_rate"]) == [0.001, 0.001, 0.01, 0.01] and list(rows["beta"]) == [0.0, 0.5, 0.0, 0.5]
    assert rows.loc[best, f"{ACC} mean (%)"] == "64.00" and rows.loc[best, "sd (%)"] == "4.00"
    low, high = 64 - ci([0.6, 0.64, 0.68]) * 100, 64 + ci([0.6, 0.64, 0.68]) * 100
    assert rows.loc[best, "95% CI (%)"] == f"{low:.2f} to {high:.2f}" and rows.loc[best, "n seeds"] == 3
    running = rows.loc["learning_rate=0.01, beta=0.5"]
    assert running["runs"] == "2 succeeded, 1 running" and running["n seeds"] == 2
    assert rows.loc[best, FKL] == "0.22 ± 0.02 (n=3)"
    assert rows.loc[best, "run ids"].count("#") == 3
    assert keys[:2] == [FKL, ACC] and fields == ["learning_rate", "beta"] and x_field == "learning_rate"

    # the curves: one mean line per group (the chosen one starred), a band for each group of 2+ runs
    lines = [t for t in curves.data if t.fill != "toself"]
    bands = [t for t in curves.data if t.fill == "toself"]
    assert [t.name for t in lines] == [("★ " if label == best else "") + label for label in SCORES]
    assert len(bands) == 4 and list(lines[1].x) == [0, 10, 20]
    assert lines[1].y[-1] == pytest.approx(64.0)  # percent
    # the setting plot: learning rate on a log axis, one line per beta, error bars = the 95 % interval
    by_name = {t.name: t for t in setting.data}
    assert setting.layout.xaxis.type == "log" and setting.layout.xaxis.title.text == "learning_rate"
    assert list(by_name["beta=0.5"].x) == [0.001, 0.01] and by_name["beta=0.5"].y[0] == pytest.approx(64.0)
    assert by_name["beta=0.5"].error_y.array[0] == pytest.approx(ci([0.6, 0.64, 0.68]) * 100)
    assert by_name[f"chosen: {best}"].marker.symbol == "star"

    # a divergence is minimised: the lowest finished mean is chosen; ± 1 sd when asked
    head, table, *_, setting, _, _, _ = sweep_view.sweep_outputs(sweep_id, FKL, "sd", "beta")
    assert "**learning_rate=0.01, beta=0.0**: the lowest mean" in head
    assert table.set_index("setting").loc["learning_rate=0.01, beta=0.0", "chosen"] == "★"
    assert setting.layout.xaxis.title.text == "beta"
    assert {t.name for t in setting.data} >= {"learning_rate=0.001", "learning_rate=0.01"}
    by_name = {t.name: t for t in setting.data}
    assert by_name["learning_rate=0.01"].error_y.array[0] == pytest.approx(0.01)

    assert "no sweep with id 999999" in sweep_view.sweep_outputs(999999, ACC)[0]
    assert "Pick a sweep" in sweep_view.sweep_outputs(None, ACC)[0]


def test_a_sweep_without_scores_yet_says_so(service_env, toy_dir):
    sweep_id = make_sweep(settings=[{"lmbda": 0.0}], seeds=[0], grid=None)
    head, table, curves, setting, *_ = sweep_view.sweep_outputs(sweep_id, ACC)
    assert "**queued**" in head and "Chosen setting: none yet" in head
    assert list(table["runs"]) == ["1 queued"] and list(table["n seeds"]) == [0]
    assert "No eval/exact_match points yet" in curves.layout.annotations[0].text
    assert "No scores yet" in setting.layout.annotations[0].text


def test_the_list_filters_by_owner_and_the_fingerprints_move(service_env, toy_dir):
    alices = make_sweep(owner="alice", name="alice's", seeds=[0])
    bobs = make_sweep(owner="bob", name="bob's", seeds=[0])
    table, caption = sweep_view.sweeps_table()
    assert list(table["sweep"]) == [bobs, alices] and caption.startswith("2 sweep(s)")
    table, caption = sweep_view.sweeps_table("alice")
    assert list(table["sweep"]) == [alices] and list(table["queued"]) == [4] and "of alice" in caption
    assert list(table.columns) == list(sweep_view.SWEEP_COLUMNS)

    listed, viewed, other = (
        sweep_view.list_fingerprint(),
        sweep_view.view_fingerprint(alices),
        sweep_view.view_fingerprint(bobs),
    )
    assert listed == sweep_view.list_fingerprint() and viewed == sweep_view.view_fingerprint(alices)
    with Session(get_engine()) as session:
        run_id = sweep_service.get_sweep(session=session, sweep_id=alices).groups[0].runs[0].run_id
        finish_sweep_run(session, run_id, {ACC: 0.5}, status="running", steps=5)
    assert sweep_view.list_fingerprint() != listed and sweep_view.view_fingerprint(alices) != viewed
    assert sweep_view.view_fingerprint(bobs) == other  # another sweep's view is not redrawn
    moved = sweep_view.view_fingerprint(alices)
    with Session(get_engine()) as session:
        session.get(Run, run_id).last_step = 6
        session.commit()
    assert sweep_view.view_fingerprint(alices) != moved  # progress alone redraws the open sweep
    assert sweep_view.view_fingerprint(None) == ""


def test_cancel_from_the_dashboard_is_for_the_owner(service_env, toy_dir, monkeypatch):
    monkeypatch.setenv("DISTILL_AUTH", "on")
    get_settings.cache_clear()
    sweep_id = make_sweep(owner="alice", seeds=[0])
    message = sweep_view.cancel(sweep_id, user="bob")
    assert "Cancel failed" in message and "belongs to alice" in message
    assert sweep_view.load(sweep_id).counts["queued"] == 4
    assert sweep_view.cancel(sweep_id, user="alice") == f"Sweep {sweep_id} cancelled: 4 cancelled."
    assert "Cancel failed" in sweep_view.cancel(sweep_id, user="alice")  # nothing left: refused, said why
    assert sweep_view.cancel(None) == "Open a sweep first."


# --- launching ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "where", "words"),
    [
        ("name: x\ngrid:\n  lmbd: [0.0, 1.0]\n", "grid.lmbd", "did you mean 'lmbda'"),
        ("name: x\nspec:\n  lmbda: 2\n", "spec.lmbda", "less than or equal"),
        ("name: x\ngrid:\n  learning_rate: [0.001, 5.0]\n", "grid.learning_rate", "learning_rate=5.0"),
        ("name: x\nsettings: [{beta: 0.5}]\ngrid: {beta: [0.5]}\n", "settings", "not both"),
        ("name: x\nseeds: [1, 1]\n", "seeds", "each seed once"),
        ("name: x\nseeds: [1]\nseeds: [2]\n", "seeds", "is set twice"),
        ("name: x\ngrdi: {beta: [0.5]}\n", "grdi", "Extra inputs"),
        ("name: x\nspec_file: ../gkd.yaml\n", "spec_file", "inline"),
        ("- a list\n", "sweep", "mapping"),
        ("name: [unclosed\n", "yaml", "not valid YAML"),
        ("name: x\ngrid: {student: [toy:student, /nowhere/model]}\n", "grid.student", "student=/nowhere"),
    ],
)
def test_a_bad_sweep_is_refused_naming_the_field_and_nothing_is_stored(service_env, toy_dir, text, where, words):
    for message in (sweep_launch.validate(text), sweep_launch.launch(text, owner=None)[0]):
        assert f"**{where}**" in message and words in message, message
    assert sweep_launch.launch(text, owner=None)[1] is None
    assert _count(Sweep) == 0 and _count(Experiment) == 0 and _count(Run) == 0


def test_validate_then_launch_a_sweep_from_yaml(service_env, toy_dir):
    spec_yaml = "".join(f"  {k}: {v}\n" for k, v in tiny_spec().items())
    text = f"name: from the dashboard\nspec:\n{spec_yaml}grid:\n  beta: [0.0, 0.5]\nseeds: [0, 1]\n"
    assert sweep_launch.validate(text) == "The sweep is valid: 4 runs (2 settings × 2 seeds)."
    assert _count(Sweep) == 0
    message, sweep_id = sweep_launch.launch(text, owner="alice")
    assert message == f"Queued sweep {sweep_id} *from the dashboard*: 4 runs in 2 settings."
    view = sweep_view.load(sweep_id)
    assert view.owner == "alice" and view.counts["queued"] == 4 and view.grid == {"beta": [0.0, 0.5]}


def test_examples_load_with_their_spec_inline(tmp_path, monkeypatch):
    (tmp_path / "base.yaml").write_text("max_steps: 7\nbeta: 0.5\n")
    (tmp_path / "inline.yaml").write_text("# inline\nname: a\nspec: {max_steps: 3}\nseeds: [0]\n")
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "by_file.yaml").write_text("name: b\nspec_file: ../base.yaml\ngrid: {lmbda: [0.0, 1.0]}\n")
    (tmp_path / "sweeps" / "inline.yaml").write_text((tmp_path / "inline.yaml").read_text())
    monkeypatch.setattr(sweep_launch, "SWEEP_EXAMPLES", tmp_path / "sweeps")
    assert list(sweep_launch.examples()) == ["by_file", "inline"]
    assert sweep_launch.example_yaml("inline").startswith("# inline")  # kept as written, comments and all
    loaded = sweep_launch.parse(sweep_launch.example_yaml("by_file"))
    assert loaded.spec.max_steps == 7 and loaded.spec.beta == 0.5 and loaded.grid == {"lmbda": [0.0, 1.0]}
    with pytest.raises(ValueError, match="unknown sweep example"):
        sweep_launch.example_yaml("nope")


def test_the_shipped_sweep_examples_validate(service_env, toy_dir):
    assert sweep_launch.examples(), "examples/sweeps/ has no example"
    for name in sweep_launch.examples():
        message = sweep_launch.validate(sweep_launch.example_yaml(name))
        assert message.startswith("The sweep is valid"), (name, message)
