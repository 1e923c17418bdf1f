"""The teacher server: `distill teacher serve MODEL --port 8600`.

One process holds the teacher and answers score requests (core_distill.teachers.protocol) from any
number of training runs. Requests wait in one queue; a batching loop takes everything queued (up to
`max_batch_tokens`, waiting at most `batch_wait_ms` for more after the first), runs the teacher's
forward pass over all their sequences together, then answers each request at its own top_k and
temperature. The forward pass runs in a single worker thread, so the event loop keeps accepting.

    GET  /health   liveness
    GET  /info     model, identity, vocabulary (fingerprint, ids, bos, eos, head rows), limits (the client's handshake)
    GET  /vocab    the tokenizer's token at each id (the client asks when the fingerprints differ, to say how)
    GET  /stats    requests, forward batches, tokens served
    POST /score    binary request -> binary response; 400 bad request, 409 other vocabulary, 413 too big
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request, Response
from torch import nn

from core_distill.data.vocab import Vocabulary, token_list, vocab_fingerprint
from core_distill.losses import Head
from core_distill.teachers.local import sparse_targets
from core_distill.teachers.protocol import (
    CONTENT_TYPE,
    PROTOCOL_VERSION,
    ProtocolError,
    ScoreRequest,
    ScoreResponse,
    ids_dtype,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ServedTeacher:
    """A loaded teacher and what clients need to know about it."""

    model: nn.Module
    head: Head
    name: str
    identity: str  # changes when the weights or the dtype change (keys the client's log-prob cache)
    fingerprint: str
    vocab_size: int  # rows of the lm_head
    device: torch.device
    max_top_k: int = 1024
    max_request_tokens: int = 1 << 20
    vocabulary: Vocabulary | None = None  # what a client compares with its student's (core_distill/data/vocab.py)
    tokens: list[str | None] = field(default_factory=list)  # the tokenizer's token at each id (GET /vocab)

    @classmethod
    def load(cls, name: str, *, dtype: str = "float32", device: str = "auto", trust_remote_code: bool = False,
             max_top_k: int = 1024) -> ServedTeacher:  # fmt: skip
        from core_distill.models import head_of, load_model, load_tokenizer, model_vocabulary, vocab_size
        from core_distill.paths import looks_like_local_path, resolve_model_path
        from core_distill.teachers.cache import model_identity

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if looks_like_local_path(name) and not Path(resolve_model_path(name)).is_dir():
            raise ValueError(f"no model directory at {name!r} (resolved to {resolve_model_path(name)})")
        target = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        model = load_model(name, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
        model = model.to(target).requires_grad_(False).eval()
        tokenizer = load_tokenizer(name, trust_remote_code)
        return cls(model, head_of(model), name, model_identity(name, dtype), vocab_fingerprint(tokenizer),
                   vocab_size(model), target, max_top_k=max_top_k, vocabulary=model_vocabulary(model, tokenizer),
                   tokens=token_list(tokenizer))  # fmt: skip

    def info(self) -> dict:
        return {
            "protocol": PROTOCOL_VERSION, "model": self.name, "identity": self.identity,
            "fingerprint": self.fingerprint, "vocab_size": self.vocab_size, "max_top_k": self.max_top_k,
            "max_request_tokens": self.max_request_tokens, "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
        } | ({"vocab": self.vocabulary.to_json()} if self.vocabulary else {})  # fmt: skip

    def head_for(self, width: int | None) -> Head:
        """The head cut to a request's width (its first `width` rows), or whole."""
        if width is None or width == self.vocab_size:
            return self.head
        head = self.head
        return Head(
            head.weight[:width], None if head.bias is None else head.bias[:width], head.logit_scale, head.softcap
        )

    @torch.no_grad()
    def score_many(self, requests: list[ScoreRequest], max_batch_tokens: int) -> list[ScoreResponse]:
        """One shared forward pass (split by `max_batch_tokens` padded tokens) for all requests."""
        hidden = self._hidden_states(requests, max_batch_tokens)  # per sequence: (n_scored, H)
        responses, k = [], 0
        for request in requests:
            b = len(request.lengths)
            h = torch.cat(hidden[k : k + b]) if b else torch.zeros(0, self.head.weight.shape[1], device=self.device)
            k += b
            tokens = torch.from_numpy(request.tokens.astype(np.int64)).to(self.device)
            starts = np.concatenate([[0], np.cumsum(request.lengths)[:-1]]).astype(np.int64)
            next_ids = torch.cat([tokens[s + p : s + n] for s, p, n in
                                  zip(starts, request.prompt_lengths, request.lengths, strict=True)]) if b else tokens  # fmt: skip
            extra = (
                None
                if request.extra_ids is None
                else torch.from_numpy(request.extra_ids.astype(np.int64)).to(self.device)
            )
            targets, extra_logp = sparse_targets(h, self.head_for(request.width), next_ids, top_k=request.top_k,
                                                 temperature=request.temperature, extra_ids=extra)  # fmt: skip
            as_numpy = lambda t: t.float().cpu().numpy()  # noqa: E731
            responses.append(ScoreResponse(
                targets.ids.cpu().numpy().astype(ids_dtype(self.vocab_size)), as_numpy(targets.logp),
                as_numpy(targets.tail), as_numpy(targets.target_logp), None if extra_logp is None else as_numpy(extra_logp),
            ))  # fmt: skip
        return responses

    def _hidden_states(self, requests: list[ScoreRequest], max_batch_tokens: int) -> list[torch.Tensor]:
        """Final hidden states at the positions predicting each scored token, one (n, H) per sequence."""
        seqs: list[tuple[np.ndarray, int]] = []
        for r in requests:
            start = 0
            for length, prompt in zip(r.lengths.tolist(), r.prompt_lengths.tolist(), strict=True):
                seqs.append((r.tokens[start : start + length], prompt))
                start += length
        out: list[torch.Tensor | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # similar lengths share a batch: less padding
        while order:
            group = [order.pop()]  # longest first
            while order and (len(group) + 1) * len(seqs[group[0]][0]) <= max_batch_tokens:
                group.append(order.pop())
            width = len(seqs[group[0]][0])
            ids = torch.zeros(len(group), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(group):  # right padding: positions are 0..n-1 as in the unpadded sequence
                tokens = torch.from_numpy(seqs[i][0].astype(np.int64))
                ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
            positions = torch.arange(width).expand(len(group), width)
            result = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=positions.to(self.device), output_hidden_states=True,
                                logits_to_keep=1, use_cache=False)  # fmt: skip
            last = result.hidden_states[-1]  # (b, width, H), after the final norm
            for row, i in enumerate(group):
                tokens, prompt = seqs[i]
                out[i] = last[row, prompt - 1 : len(tokens) - 1]
        return out  # type: ignore[return-value]


@dataclass
class _Job:
    request: ScoreRequest
    future: asyncio.Future
    tokens: int


@dataclass
class BatchStats:
    requests: int = 0
    forward_batches: int = 0
    largest_batch: int = 0
    sequences: int = 0
    tokens: int = 0
    scored_tokens: int = 0
    busy_seconds: float = 0.0
    started: float = field(default_factory=time.time)


class BatchingScorer:
    """Queues requests from all clients and answers them from shared forward passes."""

    def __init__(self, teacher: ServedTeacher, *, max_batch_tokens: int = 16384, batch_wait_ms: float = 5.0):
        self.teacher = teacher
        self.max_batch_tokens = max_batch_tokens
        self.batch_wait = batch_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._carry: _Job | None = None  # taken from the queue but did not fit the last batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher")

    async def submit(self, request: ScoreRequest) -> ScoreResponse:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(request, future, int(request.tokens.shape[0])))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect(loop)
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.teacher.score_many, [j.request for j in jobs], self.max_batch_tokens
                )
            except Exception as exc:  # a failed batch fails its requests, not the server
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self._count(jobs, time.perf_counter() - t0)
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(result)

    async def _collect(self, loop) -> list[_Job]:
        first = self._carry or await self._queue.get()
        self._carry = None
        jobs, tokens = [first], first.tokens
        deadline = loop.time() + self.batch_wait
        while True:
            try:
                remaining = deadline - loop.time()
                job = (
                    self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                return jobs
            if tokens + job.tokens > self.max_batch_tokens:
                self._carry = job
                return jobs
            jobs.append(job)
            tokens += job.tokens

    def _count(self, jobs: list[_Job], seconds: float) -> None:
        s = self.stats
        s.requests += len(jobs)
        s.forward_batches += 1
        s.largest_batch = max(s.largest_batch, len(jobs))
        s.sequences += sum(len(j.request.lengths) for j in jobs)
        s.tokens += sum(j.tokens for j in jobs)
        s.scored_tokens += sum(j.request.n_scored for j in jobs)
        s.busy_seconds += seconds

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def create_app(teacher: ServedTeacher, *, max_batch_tokens: int = 16384, batch_wait_ms: float = 5.0) -> FastAPI:
    scorer = BatchingScorer(teacher, max_batch_tokens=max_batch_tokens, batch_wait_ms=batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(scorer.run())
        yield
        task.cancel()
        scorer.close()

    app = FastAPI(title="distill teacher server", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict:
        return teacher.info()

    @app.get("/vocab")
    async def vocab() -> dict:
        return {"tokens": teacher.tokens}

    @app.get("/stats")
    async def stats() -> dict:
        return vars(scorer.stats) | {"queued": scorer._queue.qsize()}

    @app.post("/score")
    async def score(request: Request) -> Response:
        body = await request.body()
        try:
            parsed = ScoreRequest.decode(body)
        except ProtocolError as exc:
            raise HTTPException(400, f"bad score request: {exc}") from None
        if parsed.fingerprint != teacher.fingerprint:
            raise HTTPException(409, f"vocabulary mismatch: the client's tokenizer has fingerprint {parsed.fingerprint}, "
                                     f"this teacher ({teacher.name}) has {teacher.fingerprint}")  # fmt: skip
        try:
            parsed.validate(
                vocab_size=teacher.vocab_size, max_top_k=teacher.max_top_k, max_tokens=teacher.max_request_tokens
            )
        except ProtocolError as exc:
            status = 413 if "at most" in str(exc) else 400
            raise HTTPException(status, f"bad score request: {exc}") from None
        try:
            response = await scorer.submit(parsed)
        except Exception as exc:  # e.g. out of memory: the server lives on, the client learns why
            raise HTTPException(500, f"the teacher failed on this batch: {type(exc).__name__}: {exc}") from None
        return Response(response.encode(), media_type=CONTENT_TYPE)

    app.state.scorer = scorer
    return app


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8600, dtype: str = "float32", device: str = "auto",
          max_top_k: int = 1024, max_batch_tokens: int = 16384, batch_wait_ms: float = 5.0,
          trust_remote_code: bool = False) -> None:  # fmt: skip
    """Load the teacher and serve it until interrupted."""
    import uvicorn

    teacher = ServedTeacher.load(
        model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, max_top_k=max_top_k
    )
    app = create_app(teacher, max_batch_tokens=max_batch_tokens, batch_wait_ms=batch_wait_ms)
    print(f"teacher {model} ({teacher.info()['dtype']} on {teacher.device}, vocabulary {teacher.vocab_size}, "
          f"{teacher.fingerprint}) on http://{host}:{port}", flush=True)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning")
