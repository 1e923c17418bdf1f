"""A teacher on another machine: the client of `distill teacher serve` and the engine's `Teacher` over it.

    client = TeacherClient("http://gpu-box:8600")
    width = client.check_compatible(student_vocabulary, token_list(tokenizer))   # refuses another vocabulary
    response = client.score(ScoreRequest.from_sequences(...))

Transport failures (refused connection, dropped connection, timeouts, 502/503/504) are retried with
exponential backoff; when the retries run out a `TeacherServerError` says so and the run stops
there, with everything committed up to the last finished step kept. Bad requests (4xx) are not
retried: their message comes from the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import torch
from torch import nn

from core_distill.data.batches import SequenceBatch
from core_distill.data.vocab import Vocabulary, mismatch, shared_width
from core_distill.losses import SparseTeacher
from core_distill.teachers.base import batch_rows
from core_distill.teachers.protocol import CONTENT_TYPE, PROTOCOL_VERSION, ScoreRequest, ScoreResponse

_RETRY_STATUS = {502, 503, 504}


class TeacherServerError(RuntimeError):
    """The teacher server could not be used: unreachable, refused the request, or incompatible."""


class TeacherMismatchError(TeacherServerError):
    """The server's teacher has another vocabulary than the student."""


@dataclass
class LinkStats:
    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    scored_tokens: int = 0
    seconds: float = 0.0


class TeacherClient:
    def __init__(self, url: str, *, timeout: float = 600.0, retries: int = 3, backoff: float = 0.5):
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.stats = LinkStats()
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        self._info: dict[str, Any] | None = None

    def close(self) -> None:
        self._http.close()

    def info(self) -> dict[str, Any]:
        """The server's /info: model, identity, fingerprint, vocab_size (its head's rows), vocab (its
        `Vocabulary`: ids, special tokens, head), max_top_k, max_request_tokens."""
        if self._info is None:
            self._info = self._call("GET", "/info").json()
            if self._info.get("protocol") != PROTOCOL_VERSION:
                raise TeacherServerError(f"teacher server {self.url} speaks protocol {self._info.get('protocol')}, "
                                         f"this client {PROTOCOL_VERSION}: upgrade the older side")  # fmt: skip
        return self._info

    def check_compatible(self, student: Vocabulary, student_tokens: list[str | None]) -> int | None:
        """The width both heads are cut to (None: no cut), after the rules of core_distill/data/vocab.py;
        TeacherMismatchError naming what differs when the teacher's ids mean other tokens than the student's."""
        info = self.info()
        where = f"the teacher at {self.url} ({info['model']})"
        if "vocab" not in info:  # a server from before vocabularies were compared: fingerprint and size only
            return self._check_old_server(where, info, student)
        teacher = Vocabulary.from_json(info["vocab"])
        problem = mismatch(student, teacher, teacher_tokens=self.tokens, student_tokens=lambda: student_tokens)
        if problem:
            raise TeacherMismatchError(f"{where}: {problem} (vocabulary fingerprints: teacher {teacher.fingerprint}, "
                                       f"student {student.fingerprint})")  # fmt: skip
        return shared_width(student.head, teacher.head, student.ids)[0]

    def tokens(self) -> list[str | None]:
        """The server tokenizer's token at each id (GET /vocab), for saying what differs."""
        return list(self._call("GET", "/vocab").json()["tokens"])

    @staticmethod
    def _check_old_server(where: str, info: dict[str, Any], student: Vocabulary) -> None:
        if info["fingerprint"] != student.fingerprint:
            raise TeacherMismatchError(
                f"{where} has another tokenizer vocabulary than the student: teacher {info['fingerprint']}, "
                f"student {student.fingerprint}. Token-level distillation needs the same token ids on both sides."
            )
        if info["vocab_size"] != student.head:
            raise TeacherMismatchError(
                f"{where} predicts {info['vocab_size']} tokens, the student {student.head}, and the server is too old "
                f"to cut its head to the shared vocabulary: upgrade it (distill teacher serve)"
            )
        return None

    def score(self, request: ScoreRequest) -> ScoreResponse:
        """Score a request, split into several when it exceeds the server's per-request token limit."""
        limit = int(self.info()["max_request_tokens"])
        parts = _split(request, limit)
        responses = []
        for part in parts:
            body = part.encode()
            t0 = time.perf_counter()
            reply = self._call("POST", "/score", content=body, headers={"content-type": CONTENT_TYPE})
            self.stats.seconds += time.perf_counter() - t0
            self.stats.requests += 1
            self.stats.bytes_sent += len(body)
            self.stats.bytes_received += len(reply.content)
            self.stats.scored_tokens += part.n_scored
            responses.append(ScoreResponse.decode(reply.content))
        return responses[0] if len(responses) == 1 else _concat(responses)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        errors = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                reply = self._http.request(method, self.url + path, **kwargs)
            except httpx.TransportError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if reply.status_code in _RETRY_STATUS:
                errors.append(f"HTTP {reply.status_code}")
                continue
            if reply.status_code == 409:
                raise TeacherMismatchError(f"teacher server {self.url} refused the request: {_detail(reply)}")
            if reply.status_code >= 400:
                raise TeacherServerError(f"teacher server {self.url} answered {method} {path} with HTTP "
                                         f"{reply.status_code}: {_detail(reply)}")  # fmt: skip
            return reply
        raise TeacherServerError(
            f"teacher server {self.url} did not answer {method} {path} after {self.retries + 1} attempts "
            f"(last error: {errors[-1]}). The run stops here; metrics and checkpoints of the steps already "
            f"finished are kept: restart the server and resume the run."
        )


class RemoteTeacher:
    """The engine's `Teacher` backed by a teacher server: top-K + tail targets at the loss temperature."""

    def __init__(self, client: TeacherClient, *, fingerprint: str, top_k: int, temperature: float,
                 width: int | None = None):  # fmt: skip
        self.client = client
        self.fingerprint = fingerprint
        self.top_k = top_k
        self.temperature = temperature
        self.width = width  # the server's head cut to these ids (a padded head beside the student's); None: whole

    @property
    def head_rows(self) -> int:
        """Rows of the served teacher's lm_head."""
        return int(self.client.info()["vocab_size"])

    def cut(self, width: int) -> None:
        """Score over ids 0 .. width-1 from now on (the server cuts its head per request)."""
        self.width = None if width == self.head_rows else width

    @property
    def model(self) -> nn.Module | None:
        return None  # the weights live on the server; nothing here can generate (seq_kd needs a local teacher)

    @property
    def identity(self) -> str:
        identity = str(self.client.info()["identity"])
        return identity if self.width is None else f"{identity}-cut{self.width}"  # a cut head scores other numbers

    def score(self, batch: SequenceBatch, *, cacheable: bool = False) -> SparseTeacher:
        return self.score_sparse(batch, top_k=self.top_k, temperature=self.temperature)

    def score_sparse(self, batch: SequenceBatch, *, top_k: int, temperature: float,
                     extra_ids: torch.Tensor | None = None) -> SparseTeacher:  # fmt: skip
        """Targets for the completion tokens of `batch` in `completion_mask` order.

        `extra_ids` (N, M): more ids to put in the support (e.g. the student's top tokens).
        """
        rows = batch_rows(batch)
        request = ScoreRequest.from_sequences(
            [p + c for p, c in rows], [len(p) for p, _ in rows], top_k=top_k, temperature=temperature,
            fingerprint=self.fingerprint, extra_ids=None if extra_ids is None else extra_ids.cpu().numpy(),
            width=self.width,
        )  # fmt: skip
        return to_sparse_teacher(self.client.score(request), batch.input_ids.device)


def to_sparse_teacher(response: ScoreResponse, device: torch.device) -> SparseTeacher:
    as_tensor = lambda a, dtype: torch.from_numpy(np.array(a, dtype=dtype)).to(device)  # noqa: E731  (copy: views are read-only)
    return SparseTeacher(as_tensor(response.ids, np.int64), as_tensor(response.logp, np.float32),
                         as_tensor(response.tail, np.float32), as_tensor(response.target_logp, np.float32))  # fmt: skip


def _split(request: ScoreRequest, max_tokens: int) -> list[ScoreRequest]:
    """Whole sequences per part, each part at most `max_tokens` tokens (a longer sequence goes alone)."""
    if request.tokens.shape[0] <= max_tokens:
        return [request]
    parts, start, seq_start, row_start = [], 0, 0, 0
    ends = np.cumsum(request.lengths)
    scored = np.cumsum(request.lengths.astype(np.int64) - request.prompt_lengths)
    b = len(request.lengths)
    while start < b:
        stop = start + 1
        while stop < b and ends[stop] - seq_start <= max_tokens:
            stop += 1
        row_stop = int(scored[stop - 1])
        extra = None if request.extra_ids is None else request.extra_ids[row_start:row_stop]
        parts.append(ScoreRequest(request.tokens[seq_start : ends[stop - 1]], request.lengths[start:stop],
                                  request.prompt_lengths[start:stop], request.top_k, request.temperature,
                                  request.fingerprint, extra, request.width))  # fmt: skip
        start, seq_start, row_start = stop, int(ends[stop - 1]), row_stop
    return parts


def _concat(responses: list[ScoreResponse]) -> ScoreResponse:
    extra = None if responses[0].extra_logp is None else np.concatenate([r.extra_logp for r in responses])
    return ScoreResponse(*(np.concatenate([getattr(r, f) for r in responses]) for f in ("ids", "logp", "tail", "target_logp")),
                         extra)  # fmt: skip


def _detail(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("detail", reply.text))
    except ValueError:
        return reply.text[:500]


def connect_teacher(spec, student: nn.Module) -> RemoteTeacher:
    """The spec's teacher server, after checking that it shares the student's vocabulary (core_distill/data/vocab.py);
    a head of another size is cut to the shared vocabulary by `teachers.share_vocabulary`."""
    from core_distill.data.vocab import token_list
    from core_distill.models import load_tokenizer, model_vocabulary

    tokenizer = load_tokenizer(spec.student, spec.trust_remote_code)
    vocabulary = model_vocabulary(student, tokenizer)
    client = TeacherClient(spec.teacher_server_url)
    client.check_compatible(vocabulary, token_list(tokenizer))
    max_top_k = int(client.info()["max_top_k"])
    if spec.loss_top_k > max_top_k:
        raise TeacherServerError(f"loss_top_k={spec.loss_top_k} exceeds the teacher server's max_top_k={max_top_k} "
                                 f"({spec.teacher_server_url}); lower loss_top_k or restart the server with --max-top-k")  # fmt: skip
    return RemoteTeacher(client, fingerprint=vocabulary.fingerprint, top_k=spec.loss_top_k,
                         temperature=spec.kd_temperature)  # fmt: skip
