"""The remote teacher against a real `distill teacher serve` process on the tiny teacher.

The server's targets must equal the same teacher loaded locally; a run with the remote teacher must
train exactly as one with the local teacher; another vocabulary and a dead server must stop a run
with a clear error, keeping what it committed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from core_distill.checkpoint import latest_checkpoint
from core_distill.data.batches import make_batch
from core_distill.data.vocab import vocab_fingerprint
from core_distill.losses import fused_distill_loss, log_softmax_fp32
from core_distill.models import completion_hidden, head_of, load_model, load_tokenizer
from core_distill.reporting import JsonlReporter
from core_distill.teachers.local import LocalTeacher
from core_distill.teachers.protocol import ProtocolError, ScoreRequest, decode, encode
from core_distill.teachers.remote import (
    RemoteTeacher,
    TeacherClient,
    TeacherMismatchError,
    TeacherServerError,
    _split,
    connect_teacher,
)
from core_distill.train import run
from tests.services import free_port
from tests.tiny_models import build_model, build_tokenizer

REPO = Path(__file__).resolve().parents[2]


# --- a real server process ---------------------------------------------------------------------------
class ServerProcess:
    """`distill teacher serve MODEL` in a subprocess on a free port."""

    def __init__(self, model: Path | str, *args: str, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"teacher-server-{self.port}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "teacher", "serve", str(model), "--port", str(self.port), *args],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"teacher server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"teacher server not ready after {timeout} s:\n{self.log.read_text()}")

    def stats(self) -> dict:
        return httpx.get(self.url + "/stats", timeout=10).json()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def server(tiny_workspace, tmp_path_factory):
    process = ServerProcess(tiny_workspace.teacher, log_dir=tmp_path_factory.mktemp("server"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def local_teacher(tiny_workspace):
    return LocalTeacher(load_model(str(tiny_workspace.teacher), dtype=torch.float32).eval())


@pytest.fixture(scope="module")
def fingerprint(tiny_workspace):
    return vocab_fingerprint(load_tokenizer(str(tiny_workspace.student)))


def random_batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = [(3, 6), (7, 2), (1, 9), (5, 0)]  # (prompt, completion): a one-token prompt, an empty completion
    prompts = [torch.randint(5, vocab, (p,), generator=g).tolist() for p, _ in lengths]
    completions = [torch.randint(0, vocab, (c,), generator=g).tolist() for _, c in lengths]
    return make_batch(prompts, completions, pad_id=0)


# --- the wire format -----------------------------------------------------------------------------------
def test_messages_round_trip_arrays_and_meta():
    arrays = {"a": np.arange(7, dtype=np.int32), "b": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3),
              "empty": np.zeros((0, 4), np.float32), "ids": np.array([[1, 65535]], np.uint16)}  # fmt: skip
    decoded, meta = decode(encode(arrays, {"x": 1.5, "name": "t"}))
    assert meta == {"x": 1.5, "name": "t"}
    for name, array in arrays.items():
        assert decoded[name].dtype == array.dtype and np.array_equal(decoded[name], array)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{\"tokens\": [1, 2]}", "magic"),
        (b"DTP1" + (10**6).to_bytes(4, "little") + b"{}", "header length"),
        (b"DTP1" + (5).to_bytes(4, "little") + b"{oops", "unreadable header"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(body, message):
    with pytest.raises(ProtocolError, match=message):
        decode(body)


def test_an_array_running_past_the_body_is_refused():
    body = encode({"a": np.arange(100, dtype=np.int32)})
    with pytest.raises(ProtocolError, match="runs past"):
        decode(body[:-40])
    with pytest.raises(ProtocolError, match="dtype"):
        encode({"objects": np.array(["a", "b"], dtype=object)})


def test_requests_are_validated_before_scoring():
    ok = ScoreRequest.from_sequences([[1, 2, 3], [4, 5]], [1, 2], top_k=4, temperature=1.0, fingerprint="f")
    ok.validate(vocab_size=10, max_top_k=8, max_tokens=100)
    cases = {
        "between 1 and": dict(sequences=[[1, 2, 3]], prompts=[0]),
        r"lie in \[0, 10\)": dict(sequences=[[1, 2, 12]], prompts=[1]),
        "top_k must be": dict(sequences=[[1, 2]], prompts=[1], top_k=9),
        "temperature": dict(sequences=[[1, 2]], prompts=[1], temperature=float("nan")),
        "at most 100": dict(sequences=[list(range(5)) * 30], prompts=[1]),
    }
    for message, case in cases.items():
        request = ScoreRequest.from_sequences(case["sequences"], case["prompts"], top_k=case.get("top_k", 4),
                                              temperature=case.get("temperature", 1.0), fingerprint="f")  # fmt: skip
        with pytest.raises(ProtocolError, match=message):
            request.validate(vocab_size=10, max_top_k=8, max_tokens=100)


def test_long_requests_split_on_sequence_boundaries():
    sequences = [list(range(n)) for n in (5, 3, 8, 2, 2, 9)]
    prompts = [2, 1, 4, 1, 2, 3]
    n_scored = sum(len(s) - p for s, p in zip(sequences, prompts, strict=True))
    extra = np.arange(n_scored * 2, dtype=np.int32).reshape(n_scored, 2)
    request = ScoreRequest.from_sequences(sequences, prompts, top_k=2, temperature=1.0, fingerprint="f", extra_ids=extra)
    parts = _split(request, max_tokens=10)
    assert [p.lengths.tolist() for p in parts] == [[5, 3], [8, 2], [2], [9]]
    assert np.array_equal(np.concatenate([p.tokens for p in parts]), request.tokens)
    assert np.array_equal(np.concatenate([p.extra_ids for p in parts]), extra)
    assert all(p.extra_ids.shape[0] == p.n_scored for p in parts)


# --- the server's numbers equal the local teacher's -----------------------------------------------------
@pytest.mark.parametrize(("top_k", "temperature"), [(8, 1.0), (5, 0.7), (81, 2.0)])
def test_remote_log_probs_equal_the_local_teachers(server, local_teacher, fingerprint, top_k, temperature):
    client = TeacherClient(server.url)
    remote = RemoteTeacher(client, fingerprint=fingerprint, top_k=top_k, temperature=temperature)
    batch = random_batch(81)
    got = remote.score(batch)
    dense = local_teacher.score(batch)
    full = log_softmax_fp32(dense.head.logits(dense.hidden), temperature)  # (N, V) local reference
    top, ids = full.topk(top_k, dim=-1)
    targets = batch.completion_ids[batch.completion_mask]
    assert got.ids.shape == (batch.n_tokens, top_k)
    torch.testing.assert_close(got.logp, top, atol=1e-4, rtol=0)
    assert (got.ids == ids).float().mean() > 0.99  # (ties aside) the same ids, in the same order
    torch.testing.assert_close(got.logp, full.gather(-1, got.ids), atol=1e-4, rtol=0)
    outside = torch.ones_like(full, dtype=torch.bool).scatter_(-1, got.ids, False)
    expected_tail = torch.logsumexp(full.masked_fill(~outside, float("-inf")), -1).clamp(min=np.log(1e-12))
    torch.testing.assert_close(got.tail, expected_tail, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.target_logp, full.gather(-1, targets[:, None]).squeeze(-1), atol=1e-4, rtol=0)
    client.close()


def test_caller_chosen_ids_are_scored_and_join_the_support(server, local_teacher, fingerprint):
    client = TeacherClient(server.url)
    batch = random_batch(81, seed=1)
    n = batch.n_tokens
    dense = local_teacher.score(batch)
    full = log_softmax_fp32(dense.head.logits(dense.hidden), 1.0)
    student_top = torch.randint(0, 81, (n, 4), generator=torch.Generator().manual_seed(3))
    student_top[:, 0] = full.argmax(-1)  # overlaps the teacher's top: the support must stay distinct
    rows = [(p, c) for p, c in zip(*_split_rows(batch), strict=True)]
    request = ScoreRequest.from_sequences([p + c for p, c in rows], [len(p) for p, _ in rows], top_k=3,
                                          temperature=1.0, fingerprint=fingerprint, extra_ids=student_top.numpy())  # fmt: skip
    response = client.score(request)
    assert response.ids.shape == (n, 7)
    torch.testing.assert_close(torch.from_numpy(response.extra_logp.copy()), full.gather(-1, student_top), atol=1e-4, rtol=0)
    ids = torch.from_numpy(response.ids.astype(np.int64))
    for row in range(n):
        assert len(set(ids[row].tolist())) == 7  # distinct
        assert set(student_top[row].tolist()) <= set(ids[row].tolist())
        assert ids[row, :3].tolist() == full[row].topk(3).indices.tolist()  # first K columns: the teacher's top K
    client.close()


def _split_rows(batch):
    from core_distill.teachers.base import batch_rows

    rows = batch_rows(batch)
    return [p for p, _ in rows], [c for _, c in rows]


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_top_k_covering_the_vocabulary_gives_the_exact_full_loss(server, local_teacher, fingerprint, tiny_workspace, beta):
    student = load_model(str(tiny_workspace.student), dtype=torch.float32)
    batch = random_batch(81, seed=2)
    remote = RemoteTeacher(TeacherClient(server.url), fingerprint=fingerprint, top_k=81, temperature=1.0)
    hidden = completion_hidden(student, batch).detach()
    head = head_of(student)
    targets = batch.completion_ids[batch.completion_mask]
    exact = fused_distill_loss(hidden, head, local_teacher.score(batch), targets, beta=beta, top_k=0)
    sparse = fused_distill_loss(hidden, head, remote.score(batch), targets, beta=beta, top_k=81)
    torch.testing.assert_close(sparse.loss, exact.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse.kd_per_token, exact.kd_per_token, atol=1e-5, rtol=1e-5)


def metrics_of(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("top_k", [81, 8])
def test_a_run_with_the_remote_teacher_trains_like_the_local_teacher(server, tiny_workspace, tmp_path, top_k):
    """Same seeds, same data, same samples: only where the teacher's numbers come from differs.
    K = 81 covers the vocabulary, so the local run there uses the exact full-vocabulary loss."""
    common = dict(lmbda=0.5, grad_accum=2, max_steps=2, beta=0.5, kd_temperature=1.3)
    local = tiny_workspace.spec(**common, loss_top_k=0 if top_k == 81 else top_k)
    remote = tiny_workspace.spec(**common, loss_top_k=top_k, teacher="", teacher_server_url=server.url)
    run(local, output_dir=tmp_path / "local", reporter=JsonlReporter(tmp_path / "local"))
    run(remote, output_dir=tmp_path / "remote", reporter=JsonlReporter(tmp_path / "remote"))
    local_lines, remote_lines = metrics_of(tmp_path / "local"), metrics_of(tmp_path / "remote")
    # step 0: the student evaluated before training (its divergence to each teacher), then steps 1, 2 and the eval
    assert [line["step"] for line in local_lines] == [line["step"] for line in remote_lines] == [0, 1, 2, 2]
    for a, b in zip(local_lines, remote_lines, strict=True):
        for key in ("loss", "loss/kd", "grad_norm", "eval/loss/kd"):
            if key in a["metrics"]:
                assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-4, abs=1e-5), key
    assert {line["metrics"]["data/on_policy"] for line in local_lines[1:3]} <= {0.0, 0.5, 1.0}


# --- refusals and failures -------------------------------------------------------------------------------
def test_another_vocabulary_is_refused_naming_both(tiny_workspace, tmp_path, fingerprint):
    other = tmp_path / "other-teacher"
    tokenizer = build_tokenizer(extra_chars="äöü")
    build_model(other, tokenizer, hidden=64, layers=1, seed=4)
    process = ServerProcess(other, log_dir=tmp_path)
    try:
        spec = tiny_workspace.spec(teacher="", teacher_server_url=process.url, loss_top_k=8)
        student = load_model(str(tiny_workspace.student), dtype=torch.float32)
        with pytest.raises(TeacherMismatchError) as caught:
            connect_teacher(spec, student)
        message = str(caught.value)
        assert fingerprint in message and vocab_fingerprint(tokenizer) in message and "tokenizer" in message
        # a client that skips the handshake is refused by the server itself (HTTP 409)
        request = ScoreRequest.from_sequences([[5, 6, 7]], [1], top_k=2, temperature=1.0, fingerprint=fingerprint)
        with pytest.raises(TeacherMismatchError, match="vocabulary mismatch"):
            TeacherClient(process.url).score(request)
        with pytest.raises(TeacherMismatchError):
            run(spec, output_dir=tmp_path / "run")
        assert not (tmp_path / "run" / "metrics.jsonl").exists()
    finally:
        process.stop()


def test_a_top_k_above_the_servers_limit_is_refused(tiny_workspace, server):
    spec = tiny_workspace.spec(teacher="", teacher_server_url=server.url, loss_top_k=2000)
    with pytest.raises(TeacherServerError, match="max_top_k=1024"):
        connect_teacher(spec, load_model(str(tiny_workspace.student), dtype=torch.float32))


def test_no_server_at_the_url_fails_after_retries_with_a_clear_error():
    client = TeacherClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.05)
    started = time.monotonic()
    with pytest.raises(TeacherServerError, match=r"did not answer GET /info after 3 attempts"):
        client.info()
    assert time.monotonic() - started >= 0.15  # it waited 0.05 + 0.1 between attempts


class KillServerAt(JsonlReporter):
    """Kills the teacher server once `step` is logged, as a crash of the teacher's machine would."""

    def __init__(self, output_dir, process: ServerProcess, step: int):
        super().__init__(output_dir)
        self.process, self.step = process, step

    def log(self, step, metrics):
        super().log(step, metrics)
        if step == self.step and "loss" in metrics:
            self.process.kill()


def test_a_killed_server_stops_the_run_and_keeps_what_it_committed(tiny_workspace, tmp_path):
    process = ServerProcess(tiny_workspace.teacher, log_dir=tmp_path)
    out = tmp_path / "run"
    spec = tiny_workspace.spec(teacher="", teacher_server_url=process.url, loss_top_k=8, lmbda=0.0, max_steps=4,
                               save_every=1, eval_data="")  # fmt: skip
    try:
        with pytest.raises(TeacherServerError, match="did not answer POST /score after 4 attempts") as caught:
            run(spec, output_dir=out, reporter=KillServerAt(out, process, step=2))
        assert "metrics and checkpoints of the steps already finished are kept" in str(caught.value)
    finally:
        process.stop()
    assert [line["step"] for line in metrics_of(out)] == [1, 2]  # step 3 never committed anything
    assert latest_checkpoint(out).name == "step-00000002"
    # the server comes back (on another port here): the run resumes from step 2 and finishes
    revived = ServerProcess(tiny_workspace.teacher, log_dir=tmp_path)
    try:
        result = run(spec.with_overrides({"teacher_server_url": revived.url}), output_dir=out, reporter=JsonlReporter(out))
    finally:
        revived.stop()
    assert result.step == 4
    assert [line["step"] for line in metrics_of(out)] == [1, 2, 3, 4]


def test_the_server_batches_and_reports_its_work(server, fingerprint):
    before = server.stats()
    client = TeacherClient(server.url)
    request = ScoreRequest.from_sequences([[5, 6, 7, 8], [9, 10]], [2, 1], top_k=4, temperature=1.0, fingerprint=fingerprint)
    client.score(request)
    after = server.stats()
    assert after["requests"] == before["requests"] + 1
    assert after["scored_tokens"] == before["scored_tokens"] + 3


def test_seq_kd_cannot_use_a_teacher_server(tiny_workspace):
    from core_distill.spec import DistillSpec, SpecError

    fields = tiny_workspace.spec().model_dump() | dict(teacher_server_url="http://127.0.0.1:1", loss_top_k=8, seq_kd=True)
    with pytest.raises(SpecError, match="seq_kd: samples completions from the teacher"):
        DistillSpec.parse(fields)
