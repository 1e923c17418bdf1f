"""One catalogue of metric keys: everything a real run logs is named in core_distill/metric_keys.py,
and the views read their keys from it."""

from __future__ import annotations

import json

from core_distill import metric_keys as mk
from core_distill.reporting import NullReporter
from core_distill.train import run


class KeysSeen(NullReporter):
    def __init__(self) -> None:
        self.keys: set[str] = set()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.keys |= set(metrics)


def test_every_logged_key_is_in_the_catalogue(tiny_workspace, tmp_path):
    seen = KeysSeen()
    run(tiny_workspace.spec(max_steps=2, eval_every=2), output_dir=tmp_path, reporter=seen)
    assert {mk.LOSS, mk.LOSS_KD, mk.DIV_FKL, mk.EVAL_EXACT_MATCH, mk.EVAL_DIV_FKL} <= seen.keys
    assert sorted(k for k in seen.keys if not mk.is_known(k)) == []


def test_the_views_read_their_keys_from_the_catalogue():
    from ui import charts, compare, runs

    assert runs.METRIC_KEYS == mk.SUMMARY and compare.FINAL_KEYS == mk.FINAL
    assert list(mk.COMPARED) == compare.DEFAULT_KEYS
    assert [f["keys"] for f in json.loads(charts.families_json())] == [list(f.keys) for f in mk.FAMILIES]
    shown = {key for f in mk.FAMILIES for key in f.keys} | set(mk.SUMMARY + mk.FINAL + mk.COMPARED + mk.PRINTED)
    assert all(mk.is_known(key) for key in shown)


def test_every_key_has_one_chart_family():
    """A chart has one y unit: each catalogued key sits in exactly one family (accuracy never with KL)."""
    for key in mk.ALL:
        assert sum(key in f.keys for f in mk.FAMILIES) == 1, key
    assert mk.family_of(mk.EVAL_EXACT_MATCH) != mk.family_of(mk.DIV_FKL)
    assert mk.family_of("custom/thing").keys == ("custom/thing",)  # an unknown key gets its own chart
