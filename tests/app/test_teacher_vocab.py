"""The served teacher's handshake applies the vocabulary rules of core_distill/data/vocab.py.

`/info` carries the teacher's vocabulary (fingerprint, ids, bos, eos, the tokens it ends on, its head's
rows) and `/vocab` its tokens; the client cuts a padded head of another size to the tokenizer's ids
(the server cuts its head per request) and refuses tokens or special tokens that differ, with the
same one-line messages as the preflight. Servers run in this process (uvicorn in a thread).
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch

from app.teacher_server import ServedTeacher, create_app
from core_distill.data.batches import make_batch
from core_distill.data.vocab import vocab_fingerprint
from core_distill.models import load_model, load_tokenizer
from core_distill.reporting import JsonlReporter
from core_distill.teachers.factory import build_teacher
from core_distill.teachers.local import LocalTeacher
from core_distill.teachers.remote import RemoteTeacher, TeacherClient, TeacherMismatchError, connect_teacher
from core_distill.train import run
from tests.helpers.servers import serve_in_thread
from tests.helpers.vocabularies import build_padded_pair, one_token_different, remapped_eos, save_teacher

CUT_LINE = "vocabulary cut from 145 (student head) and 209 (teacher head) to 81"


@contextmanager
def served(path):
    teacher = ServedTeacher.load(str(path), dtype="float32", device="cpu", max_top_k=128)
    with serve_in_thread(create_app(teacher, batch_wait_ms=1), lifespan="on") as url:
        yield url


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build_padded_pair(tmp_path_factory.mktemp("padded"))


@pytest.fixture(scope="module")
def padded_server(pair):
    with served(pair.teacher) as url:
        yield url


def test_info_and_vocab_describe_the_teachers_vocabulary(padded_server, pair):
    from core_distill.data.vocab import token_list

    tokenizer = load_tokenizer(str(pair.teacher))
    client = TeacherClient(padded_server)
    vocab = client.info()["vocab"]
    assert vocab == {"fingerprint": vocab_fingerprint(tokenizer), "ids": 81, "bos": None, "eos": "<|eos|>",
                     "stops": ["<|assistant|>", "<|eos|>", "<|system|>", "<|user|>"], "head": 209, "turn_end": "<|eos|>"}  # fmt: skip
    assert client.tokens() == token_list(tokenizer) and len(client.tokens()) == 81


def test_a_padded_served_teacher_scores_as_the_teacher_cut_by_hand(padded_server, pair):
    spec = pair.spec(teacher="", teacher_server_url=padded_server, loss_top_k=8)
    student = load_model(str(pair.student), dtype=torch.float32)
    teacher = build_teacher(spec, student, dtype=torch.float32, device=torch.device("cpu"), token_ids=pair.ids)
    assert isinstance(teacher, RemoteTeacher) and teacher.width == pair.ids

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, pair.ids, (n,), generator=g).tolist() for n in (3, 6, 1)]
    completions = [torch.randint(0, pair.ids, (n,), generator=g).tolist() for n in (5, 2, 7)]
    batch = make_batch(prompts, completions, pad_id=0)
    remote = teacher.score_sparse(batch, top_k=8, temperature=1.3)
    by_hand = LocalTeacher(load_model(str(pair.teacher_cut), dtype=torch.float32).eval())
    local = by_hand.score_sparse(batch, top_k=8, temperature=1.3)
    assert torch.equal(remote.ids, local.ids) and int(remote.ids.max()) < pair.ids
    for name in ("logp", "tail", "target_logp"):
        assert torch.allclose(getattr(remote, name), getattr(local, name), atol=1e-5), name


def test_a_run_with_the_padded_served_teacher_trains_as_the_pair_cut_by_hand(padded_server, pair, tmp_path):
    served_run, by_hand = tmp_path / "served", tmp_path / "by-hand"
    run(pair.spec(teacher="", teacher_server_url=padded_server, loss_top_k=8), output_dir=served_run,
        reporter=JsonlReporter(served_run))  # fmt: skip
    run(pair.spec(cut_by_hand=True, loss_top_k=8), output_dir=by_hand, reporter=JsonlReporter(by_hand))
    read = lambda folder: [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    got, expected = read(served_run), read(by_hand)
    assert [x["step"] for x in got] == [x["step"] for x in expected] == [0, 1, 2, 2]
    for a, b in zip(got, expected, strict=True):
        for key in ("loss", "loss/kd", "grad_norm", "eval/loss/kd"):
            if key in b["metrics"]:
                assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-4, abs=1e-6), key
    assert (served_run / "header.txt").read_text().startswith(CUT_LINE)


@pytest.mark.parametrize(
    ("tokenizer", "expected"),
    [
        (one_token_different, "1 of 81 token ids differ, first: id 7 is '#' in the student, '$' in the teacher"),
        (remapped_eos, "eos differs: the student ends on '<|eos|>', a token the teacher never ends on"),
    ],
    ids=["tokens", "eos"],
)
def test_a_served_teacher_with_another_vocabulary_is_refused_saying_what_differs(tiny_workspace, tmp_path,
                                                                                  tokenizer, expected):  # fmt: skip
    save_teacher(tmp_path / "teacher", tokenizer())
    with served(tmp_path / "teacher") as url:
        spec = tiny_workspace.spec(teacher="", teacher_server_url=url, loss_top_k=8)
        with pytest.raises(TeacherMismatchError) as caught:
            connect_teacher(spec, load_model(str(tiny_workspace.student), dtype=torch.float32))
    message = str(caught.value)
    assert message.startswith(f"the teacher at {url} ") and expected in message and "\n" not in message
