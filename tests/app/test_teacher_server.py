"""The teacher server's HTTP surface and its batching of requests from several clients.

Refusals run against the real app in-process (FastAPI's TestClient runs its lifespan and batching
loop); batching across clients runs against a `distill teacher serve` process.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.teacher_server import ServedTeacher, create_app
from core_distill.data.vocab import vocab_fingerprint
from core_distill.models import load_tokenizer
from core_distill.teachers.protocol import CONTENT_TYPE, ScoreRequest, ScoreResponse
from core_distill.teachers.remote import TeacherClient
from tests.core_distill.test_remote_teacher import ServerProcess


@pytest.fixture(scope="module")
def teacher(tiny_workspace):
    return ServedTeacher.load(str(tiny_workspace.teacher), dtype="float32", device="cpu", max_top_k=16)


@pytest.fixture(scope="module")
def http(teacher):
    with TestClient(create_app(teacher, batch_wait_ms=1)) as client:
        yield client


@pytest.fixture(scope="module")
def server(tiny_workspace, tmp_path_factory):
    """A real server process; batches wait up to 400 ms for company, so concurrent clients meet."""
    process = ServerProcess(tiny_workspace.teacher, "--batch-wait-ms", "400", log_dir=tmp_path_factory.mktemp("server"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def fingerprint(tiny_workspace):
    return vocab_fingerprint(load_tokenizer(str(tiny_workspace.student)))


def post(http, request: ScoreRequest):
    return http.post("/score", content=request.encode(), headers={"content-type": CONTENT_TYPE})


def test_info_describes_the_teacher_for_the_handshake(http, teacher, fingerprint, tiny_workspace):
    info = http.get("/info").json()
    assert info["fingerprint"] == fingerprint == teacher.fingerprint
    assert info["vocab_size"] == 81 and info["max_top_k"] == 16 and info["dtype"] == "float32"
    assert info["model"] == str(tiny_workspace.teacher) and info["identity"].startswith("teacher-float32-")
    assert http.get("/health").json() == {"status": "ok"}


def test_a_score_request_gets_binary_arrays(http, fingerprint):
    request = ScoreRequest.from_sequences(
        [[5, 6, 7, 8], [9, 10, 11]], [2, 1], top_k=4, temperature=1.0, fingerprint=fingerprint
    )
    reply = post(http, request)
    assert reply.status_code == 200 and reply.headers["content-type"] == CONTENT_TYPE
    response = ScoreResponse.decode(reply.content)
    assert response.ids.shape == response.logp.shape == (4, 4) and response.ids.dtype == np.uint16
    assert response.tail.shape == response.target_logp.shape == (4,)
    total = np.logaddexp(np.logaddexp.reduce(response.logp, axis=-1), response.tail)
    np.testing.assert_allclose(total, 0.0, atol=1e-5)  # top-K plus tail is the whole distribution
    assert (np.diff(response.logp, axis=-1) <= 0).all()  # sorted, most likely first


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        (dict(fingerprint="vocab-sha256:0000"), 409, "vocabulary mismatch"),
        (dict(top_k=17), 400, "top_k must be between 1 and 16"),
        (dict(sequences=[[5, 6, 500]]), 400, r"token ids must lie in \[0, 81\)"),
        (dict(prompts=[0]), 400, "prompt_length"),
        (dict(temperature=0.0), 400, "temperature"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(http, fingerprint, change, status, message):
    fields = dict(sequences=[[5, 6, 7]], prompts=[1], top_k=4, temperature=1.0, fingerprint=fingerprint) | change
    request = ScoreRequest.from_sequences(fields["sequences"], fields["prompts"], top_k=fields["top_k"],
                                          temperature=fields["temperature"], fingerprint=fields["fingerprint"])  # fmt: skip
    reply = post(http, request)
    assert reply.status_code == status
    assert re.search(message, reply.json()["detail"])


def test_a_body_that_is_not_a_message_is_refused(http):
    reply = http.post("/score", content=b'{"sequences": [[1, 2, 3]]}', headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "magic" in reply.json()["detail"]


def test_an_oversized_request_is_refused_with_413(teacher, fingerprint):
    small = ServedTeacher(**{**vars(teacher), "max_request_tokens": 8})
    with TestClient(create_app(small)) as http:
        request = ScoreRequest.from_sequences(
            [list(range(5, 15))], [1], top_k=2, temperature=1.0, fingerprint=fingerprint
        )
        reply = post(http, request)
    assert reply.status_code == 413 and "at most 8" in reply.json()["detail"]


def test_the_client_splits_what_the_server_would_refuse(server, fingerprint):
    """Per-request token limits are the client's problem: it splits and joins transparently."""
    sequences = [list(range(5, 5 + n)) for n in (9, 4, 12, 3)]
    request = ScoreRequest.from_sequences(sequences, [2, 1, 5, 1], top_k=3, temperature=1.0, fingerprint=fingerprint)
    whole = TeacherClient(server.url).score(request)
    splitting = TeacherClient(server.url)
    splitting.info()["max_request_tokens"] = 13
    parts = splitting.score(request)
    assert splitting.stats.requests == 3
    np.testing.assert_array_equal(parts.ids, whole.ids)
    np.testing.assert_allclose(parts.logp, whole.logp, atol=1e-5)


def test_requests_from_several_clients_share_forward_passes(server, fingerprint):
    """Four runs ask at once; the server answers them from fewer forward passes, each with its own
    numbers (top_k and temperature differ per client)."""
    rng = np.random.default_rng(0)
    requests = [
        ScoreRequest.from_sequences(
            [rng.integers(5, 81, n).tolist() for n in (6, 9)],
            [2, 3],
            top_k=2 + i,
            temperature=0.5 + i / 2,
            fingerprint=fingerprint,
        )  # fmt: skip
        for i in range(4)
    ]
    alone = [TeacherClient(server.url).score(r) for r in requests]  # one at a time
    before = server.stats()
    together: list[ScoreResponse | None] = [None] * 4
    barrier = threading.Barrier(4)

    def client(i: int) -> None:
        teacher = TeacherClient(server.url)
        teacher.info()
        barrier.wait()
        together[i] = teacher.score(requests[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = server.stats()
    assert after["requests"] - before["requests"] == 4
    assert after["forward_batches"] - before["forward_batches"] < 4  # some requests were scored together
    assert after["largest_batch"] >= 2
    for solo, shared in zip(alone, together, strict=True):
        np.testing.assert_array_equal(shared.ids, solo.ids)
        np.testing.assert_allclose(shared.logp, solo.logp, atol=1e-5)
        np.testing.assert_allclose(shared.target_logp, solo.target_logp, atol=1e-5)
