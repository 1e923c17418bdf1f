"""The teacher log-prob cache: identical targets on a hit without calling the teacher, keys that
change with everything that changes the answer, safe sharing between runs."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import torch

from core_distill.data.batches import make_batch
from core_distill.losses import fused_distill_loss
from core_distill.models import completion_hidden, head_of, load_model
from core_distill.reporting import JsonlReporter
from core_distill.teachers.cache import CachedTeacher, RowTargets, TeacherCache, model_identity
from core_distill.teachers.factory import build_teacher
from core_distill.teachers.local import LocalTeacher
from core_distill.train import run
from tests.core_distill.test_remote_teacher import ServerProcess


class CountingTeacher(LocalTeacher):
    """A local teacher that counts the rows it really scores."""

    def __init__(self, model):
        super().__init__(model, identity="counting")
        self.rows_scored = 0

    def score_sparse(self, batch, *, top_k, temperature):
        self.rows_scored += batch.input_ids.shape[0]
        return super().score_sparse(batch, top_k=top_k, temperature=temperature)


@pytest.fixture(scope="module")
def teacher_model(tiny_workspace):
    return load_model(str(tiny_workspace.teacher), dtype=torch.float32).eval()


def rows(seed: int, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, 81, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    completions = [torch.randint(0, 81, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    return prompts, completions


def test_a_hit_returns_identical_targets_without_calling_the_teacher(teacher_model, tmp_path):
    inner = CountingTeacher(teacher_model)
    cached = CachedTeacher(inner, TeacherCache(tmp_path), identity="t", top_k=6, temperature=0.8)
    prompts, completions = rows(0)
    batch = make_batch(prompts, completions, pad_id=0)
    first = cached.score(batch, cacheable=True)
    assert inner.rows_scored == 3 and (cached.hits, cached.misses) == (0, 3)
    again = cached.score(batch, cacheable=True)
    assert inner.rows_scored == 3 and cached.hits == 3
    for name in ("ids", "logp", "tail", "target_logp"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    # the same rows in another order, with one new row: only the new row is scored
    new_prompts, new_completions = rows(1, n=1)
    mixed = make_batch([prompts[2], new_prompts[0], prompts[0]], [completions[2], new_completions[0], completions[0]], 0)
    got = cached.score(mixed, cacheable=True)
    assert inner.rows_scored == 4
    direct = inner.score_sparse(mixed, top_k=6, temperature=0.8)  # other padding: equal up to float rounding
    assert torch.equal(got.ids, direct.ids)
    for name in ("logp", "tail", "target_logp"):
        torch.testing.assert_close(getattr(got, name), getattr(direct, name), atol=1e-5, rtol=1e-5)


def test_uncacheable_batches_go_to_the_teacher(teacher_model, tmp_path):
    inner = CountingTeacher(teacher_model)
    cached = CachedTeacher(inner, TeacherCache(tmp_path), identity="t", top_k=6, temperature=1.0)
    batch = make_batch(*rows(2), pad_id=0)
    dense = cached.score(batch, cacheable=False)  # on-policy samples are never stored
    assert inner.rows_scored == 0 and not list(tmp_path.rglob("*.dtp"))
    assert dense.hidden.shape[0] == batch.n_tokens


def test_cached_targets_give_the_loss_of_the_uncached_teacher(teacher_model, tiny_workspace, tmp_path):
    student = load_model(str(tiny_workspace.student), dtype=torch.float32)
    batch = make_batch(*rows(3, n=4), pad_id=0)
    teacher = LocalTeacher(teacher_model, identity="t")
    cached = CachedTeacher(teacher, TeacherCache(tmp_path), identity="t", top_k=8, temperature=1.0)
    hidden, head = completion_hidden(student, batch).detach(), head_of(student)
    targets = batch.completion_ids[batch.completion_mask]
    plain = fused_distill_loss(hidden, head, teacher.score(batch), targets, beta=0.3, top_k=8)
    for _ in range(2):  # a miss, then a hit
        from_cache = fused_distill_loss(hidden, head, cached.score(batch, cacheable=True), targets, beta=0.3, top_k=8)
        torch.testing.assert_close(from_cache.loss, plain.loss, atol=1e-6, rtol=1e-6)


def test_keys_change_with_everything_that_changes_the_answer():
    base = dict(identity="t", top_k=8, temperature=1.0, prompt=[1, 2, 3], completion=[4, 5])
    key = TeacherCache.row_key(**base)
    assert TeacherCache.row_key(**base) == key
    for change in (dict(identity="u"), dict(top_k=9), dict(temperature=1.0000001), dict(completion=[4, 6]),
                   dict(prompt=[1, 2], completion=[3, 4, 5])):  # fmt: skip  (same tokens, other prompt/completion split)
        assert TeacherCache.row_key(**(base | change)) != key, change


def test_the_identity_follows_the_weights_and_the_dtype(tiny_workspace, tmp_path):
    import shutil

    copy = tmp_path / "teacher"
    shutil.copytree(tiny_workspace.teacher, copy)
    identity = model_identity(str(copy), "float32")
    assert model_identity(str(copy), "float32") == identity
    assert model_identity(str(copy), "bfloat16") != identity
    weights = next(copy.glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # rewritten weights
    assert model_identity(str(copy), "float32") != identity


def test_a_damaged_entry_is_a_miss_and_gets_rewritten(teacher_model, tmp_path):
    inner = CountingTeacher(teacher_model)
    cache = TeacherCache(tmp_path)
    cached = CachedTeacher(inner, cache, identity="t", top_k=4, temperature=1.0)
    batch = make_batch(*rows(4, n=1), pad_id=0)
    first = cached.score(batch, cacheable=True)
    (entry,) = tmp_path.rglob("*.dtp")
    entry.write_bytes(entry.read_bytes()[:30])
    again = cached.score(batch, cacheable=True)
    assert inner.rows_scored == 2 and torch.equal(first.logp, again.logp)
    assert cache.get("t", entry.stem) is not None


def test_concurrent_writers_never_expose_half_an_entry(tmp_path):
    cache = TeacherCache(tmp_path)
    row = RowTargets(np.arange(4000, dtype=np.int32).reshape(1000, 4), np.zeros((1000, 4), np.float32),
                     np.zeros(1000, np.float32), np.zeros(1000, np.float32))  # fmt: skip
    bad: list[str] = []

    def writer():
        for _ in range(30):
            cache.put("t", "ab" * 32, row)

    def reader():
        for _ in range(200):
            got = cache.get("t", "ab" * 32)
            if got is not None and not np.array_equal(got.ids, row.ids):
                bad.append("torn read")

    threads = [threading.Thread(target=writer) for _ in range(3)] + [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    assert [p.name for p in (tmp_path / "t" / "ab").iterdir()] == ["ab" * 32 + ".dtp"]  # no temporary files left


def test_build_teacher_wraps_the_teacher_when_the_spec_asks(tiny_workspace, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_TEACHER_CACHE", str(tmp_path))
    spec = tiny_workspace.spec(teacher_cache=True, loss_top_k=8)
    student = load_model(str(tiny_workspace.student), dtype=torch.float32)
    teacher = build_teacher(spec, student, dtype=torch.float32, device=torch.device("cpu"))
    assert isinstance(teacher, CachedTeacher) and teacher.cache.root == tmp_path
    assert teacher.identity == model_identity(str(tiny_workspace.teacher), "float32")


def test_a_sweep_over_a_teacher_server_reuses_the_first_runs_targets(tiny_workspace, tmp_path, monkeypatch):
    """Two runs differing only in beta: the second one never asks the server for dataset rows."""
    monkeypatch.setenv("DISTILL_TEACHER_CACHE", str(tmp_path / "cache"))
    server = ServerProcess(tiny_workspace.teacher, log_dir=tmp_path)
    try:
        common = dict(teacher="", teacher_server_url=server.url, teacher_cache=True, loss_top_k=8, lmbda=0.0,
                      eval_data="", max_steps=2)  # fmt: skip
        run(tiny_workspace.spec(**common, beta=0.5), output_dir=tmp_path / "a", reporter=JsonlReporter(tmp_path / "a"))
        requests_after_first = server.stats()["requests"]
        assert requests_after_first > 0
        run(tiny_workspace.spec(**common, beta=0.5), output_dir=tmp_path / "b", reporter=JsonlReporter(tmp_path / "b"))
        run(tiny_workspace.spec(**common, beta=0.0), output_dir=tmp_path / "c", reporter=JsonlReporter(tmp_path / "c"))
        assert server.stats()["requests"] == requests_after_first
    finally:
        server.stop()
    losses = {name: [json.loads(line)["metrics"]["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in "abc"}  # fmt: skip
    assert losses["a"] == losses["b"]  # a hit gives exactly the first run's targets
    assert losses["c"] != losses["a"]


def test_a_fixed_self_teacher_is_cached_under_the_students_identity(tiny_workspace, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILL_TEACHER_CACHE", str(tmp_path))
    spec = tiny_workspace.spec(teacher="", opsd="fixed", teacher_cache=True, loss_top_k=8)
    student = load_model(str(tiny_workspace.student), dtype=torch.float32)
    teacher = build_teacher(spec, student, dtype=torch.float32, device=torch.device("cpu"))
    assert teacher.identity == model_identity(str(tiny_workspace.student), "float32")
    batch = make_batch(*rows(5), pad_id=0)
    first = teacher.score(batch, cacheable=True)
    assert teacher.misses == 3 and len(list(tmp_path.rglob("*.dtp"))) == 3
    assert torch.equal(teacher.score(batch, cacheable=True).logp, first.logp) and teacher.hits == 3


def test_a_cache_of_a_teacher_that_changes_every_step_is_refused(tiny_workspace):
    from core_distill.spec import SpecError

    with pytest.raises(SpecError, match="teacher_cache: opsd='dynamic'"):
        tiny_workspace.spec().parse(tiny_workspace.spec().model_dump() | dict(teacher="", opsd="dynamic", teacher_cache=True, loss_top_k=8))
