"""A teacher served by vLLM's OpenAI-compatible server (`vllm serve TEACHER --max-logprobs K`).

Each micro-batch is one `POST /v1/completions` whose prompts are the rows' token ids (prompt +
completion, padding removed), with `max_tokens=1` and `prompt_logprobs=K`. What vLLM returns, and
what this module does about it:

- `prompt_logprobs[i]` is the distribution that predicts token i from tokens < i; entry 0 is None
  (nothing predicts the first token). Completion token j of a row with a P-token prompt is token
  P + j, so its targets are entry P + j: no shift of the student's frame is needed beyond that.
- Each entry holds the top K ids by log-prob, plus the actual token when it ranks below K.
- The log-probs are raw (temperature 1): vLLM's sampling temperature does not apply to prompt
  log-probs. We apply the loss temperature T ourselves: log p_T(i) = log p(i) / T - logsumexp_j(log p(j) / T).
  When K covers the vocabulary this is exact. Otherwise the tokens outside the top K are unknown
  individually; their tempered mass is estimated as if the tail were uniform (exact at T = 1, an
  upper bound of the tail for T > 1 and a lower bound for T < 1, by concavity of p -> p^(1/T)).
- The server refuses K above its `--max-logprobs` (default 20); we probe that on connect and say
  which flag to raise, instead of failing at the first step.

On connect the client also checks that the server tokenizes like the student (`POST /tokenize`)
and knows every id of the student's vocabulary, and refuses a mismatch.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import httpx
import torch
from torch import Tensor, nn

from core_distill.data.batches import SequenceBatch
from core_distill.losses import SparseTeacher

_TAIL_FLOOR = math.log(1e-12)  # the same floor the loss puts under log tail masses
_RETRY_STATUS = {502, 503, 504}
# characters that tell tokenizers apart: letters, digits, punctuation, spaces, a newline
_FINGERPRINT_TEXT = "The 3 quick foxes (x=12+30?) jumped; 4*5 = 20.\nZebra #7: yes, no: 0-9."


class VLLMTeacherError(RuntimeError):
    """The vLLM teacher server cannot be used: unreachable, refused a request, or incompatible."""


def rows_of(batch: SequenceBatch) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of each row of a left/right-padded batch, padding removed."""
    prompt_ids = batch.input_ids[:, : batch.prompt_width]
    prompt_mask = batch.attention_mask[:, : batch.prompt_width].bool()
    return [
        (prompt_ids[i][prompt_mask[i]].tolist(), batch.completion_ids[i][batch.completion_mask[i]].tolist())
        for i in range(batch.input_ids.shape[0])
    ]


def temper(top_logp: Tensor, target_logp: Tensor, vocab_size: int, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """Raw (T = 1) top-K log-probs -> (top-K, tail, target) log-probs at `temperature`.

    top_logp (N, K) and target_logp (N,) are raw log-probs; vocab_size is V. Returns the tempered
    top-K (N, K), the log tail mass (N,) and the tempered target log-probs (N,).
    """
    top_logp, target_logp = top_logp.double(), target_logp.double()
    k = top_logp.shape[-1]
    raw_tail = torch.log(-torch.expm1(torch.logsumexp(top_logp, dim=-1).clamp(max=-1e-15)))  # log(1 - sum p)
    outside = vocab_size - k
    if outside <= 0:
        tail_scaled = torch.full_like(raw_tail, float("-inf"))
    else:  # uniform tail: each of the `outside` tokens holds raw_tail - log(outside)
        tail_scaled = math.log(outside) + (raw_tail - math.log(outside)) / temperature
    scaled = top_logp / temperature
    log_z = torch.logsumexp(torch.cat([scaled, tail_scaled.unsqueeze(-1)], dim=-1), dim=-1)
    tail = (tail_scaled - log_z).clamp(min=_TAIL_FLOOR)
    return (scaled - log_z.unsqueeze(-1)).float(), tail.float(), (target_logp / temperature - log_z).float()


class VLLMTeacher:
    """`Teacher` over a vLLM server: top-K + tail targets at the loss temperature, one request per batch."""

    def __init__(
        self, url: str, *, top_k: int, temperature: float, tokenizer, vocab_size: int,
        timeout: float = 600.0, retries: int = 3, backoff: float = 0.5,
    ):  # fmt: skip
        if top_k < 1:
            raise ValueError(f"loss_top_k must be >= 1 with a vLLM teacher, got {top_k}")
        self.url = url.rstrip("/")
        self.top_k = top_k
        self.temperature = temperature
        self.vocab_size = vocab_size
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))
        served = self._request("GET", "/v1/models").json()["data"]
        if not served:
            raise VLLMTeacherError(f"the vLLM server at {self.url} serves no model")
        self.served_model: str = served[0]["id"]
        self.max_model_len: int | None = served[0].get("max_model_len")
        self._check_tokenizer(tokenizer)
        self._check_top_k()
        self.top_k = min(top_k, vocab_size)  # K >= V: the whole vocabulary, no tail

    @property
    def model(self) -> nn.Module | None:
        return None  # the weights live in the server; nothing here can generate (seq_kd needs a local teacher)

    @property
    def identity(self) -> str:
        """The teacher cache's key for these weights (the served path, when it is a folder on this machine)."""
        from core_distill.teachers.cache import model_identity

        return model_identity(self.served_model, "vllm")

    def close(self) -> None:
        self._http.close()

    # --- connect-time checks ------------------------------------------------------------------
    def _check_tokenizer(self, tokenizer) -> None:
        ours = tokenizer.encode(_FINGERPRINT_TEXT, add_special_tokens=False)
        body = {"model": self.served_model, "prompt": _FINGERPRINT_TEXT, "add_special_tokens": False}
        theirs = self._request("POST", "/tokenize", json=body).json()["tokens"]
        if theirs != ours:
            raise VLLMTeacherError(
                f"the teacher served at {self.url} ({self.served_model}) tokenizes differently from the student: "
                f"{_FINGERPRINT_TEXT!r} -> teacher {theirs[:12]}..., student {ours[:12]}... Token-level "
                f"distillation needs the same token ids on both sides."
            )
        # same output size: the student's highest id exists on the server and the next one does not
        response = self._completions([[0, self.vocab_size - 1]], prompt_logprobs=1, check=False)
        if response.status_code >= 400:
            raise VLLMTeacherError(
                f"the teacher served at {self.url} ({self.served_model}) does not accept the student's token id "
                f"{self.vocab_size - 1} (student vocabulary {self.vocab_size}): {_error_text(response)}"
            )
        if self._completions([[0, self.vocab_size]], prompt_logprobs=1, check=False).status_code < 400:
            raise VLLMTeacherError(
                f"the teacher served at {self.url} ({self.served_model}) has a larger vocabulary than the student's "
                f"{self.vocab_size} tokens: its top-K ids could name tokens the student cannot produce"
            )

    def _check_top_k(self) -> None:
        response = self._completions([[0, 1]], prompt_logprobs=self.top_k, check=False)
        if response.status_code < 400:
            return
        message = _error_text(response)
        limit = re.search(r"max(?:imum)? allowed:?\s*(\d+)", message)
        if limit or "logprobs" in message:
            allowed = f" (the server allows {limit.group(1)})" if limit else ""
            raise VLLMTeacherError(
                f"loss_top_k={self.top_k} is above the vLLM server's max_logprobs{allowed}: restart it with "
                f"`vllm serve {self.served_model} --max-logprobs {self.top_k}` or lower loss_top_k. Server said: {message}"
            )
        raise VLLMTeacherError(f"the vLLM server at {self.url} refused a probe request: {message}")

    # --- scoring ------------------------------------------------------------------------------
    def score_sparse(self, batch: SequenceBatch, *, top_k: int, temperature: float) -> SparseTeacher:
        """The teacher cache's entry point; K and T are fixed when the client connects."""
        if min(top_k, self.vocab_size) != self.top_k or temperature != self.temperature:
            raise ValueError(f"this vLLM teacher scores K={self.top_k}, T={self.temperature}; asked K={top_k}, T={temperature}")
        return self.score(batch)

    @torch.no_grad()
    def score(self, batch: SequenceBatch, *, cacheable: bool = False) -> SparseTeacher:
        device = batch.input_ids.device
        rows = [(p, c) for p, c in rows_of(batch) if c]  # rows without completion tokens have no targets
        for prompt, completion in rows:
            if not prompt:
                raise ValueError("a row has an empty prompt: nothing predicts its first completion token")
            if self.max_model_len and len(prompt) + len(completion) > self.max_model_len:
                raise VLLMTeacherError(
                    f"a sequence of {len(prompt) + len(completion)} tokens exceeds the vLLM server's max_model_len "
                    f"{self.max_model_len}: restart it with a larger --max-model-len or shorten max_prompt_length / "
                    f"max_new_tokens / max_completion_length"
                )
        n = sum(len(c) for _, c in rows)
        ids = torch.zeros(n, self.top_k, dtype=torch.long)
        raw_top = torch.full((n, self.top_k), float("-inf"), dtype=torch.float64)
        raw_target = torch.empty(n, dtype=torch.float64)
        if rows:
            choices = self._completions([p + c for p, c in rows], prompt_logprobs=self.top_k).json()["choices"]
            choices = sorted(choices, key=lambda choice: choice["index"])
            at = 0
            for (prompt, completion), choice in zip(rows, choices, strict=True):
                entries = choice["prompt_logprobs"]
                for j, token in enumerate(completion):
                    # entry P + j predicts completion token j (entry 0 is None: position 0 has no prediction)
                    entry = entries[len(prompt) + j]
                    ranked = sorted(((int(tid), lp["logprob"]) for tid, lp in entry.items()), key=lambda t: -t[1])
                    top = ranked[: self.top_k]
                    ids[at, : len(top)] = torch.tensor([tid for tid, _ in top])
                    raw_top[at, : len(top)] = torch.tensor([lp for _, lp in top], dtype=torch.float64)
                    raw_target[at] = entry[str(token)]["logprob"]  # vLLM always includes the actual token
                    at += 1
        logp, tail, target_logp = temper(raw_top, raw_target, self.vocab_size, self.temperature)
        return SparseTeacher(ids.to(device), logp.to(device), tail.to(device), target_logp.to(device))

    # --- HTTP ---------------------------------------------------------------------------------
    def _completions(self, prompts: list[list[int]], *, prompt_logprobs: int, check: bool = True) -> httpx.Response:
        body: dict[str, Any] = {
            "model": self.served_model, "prompt": prompts, "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": prompt_logprobs,
        }  # fmt: skip
        return self._request("POST", "/v1/completions", json=body, check=check)

    def _request(self, method: str, path: str, *, check: bool = True, **kwargs: Any) -> httpx.Response:
        """One call with retries on transport failures and 502/503/504; 4xx/500 are not retried."""
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, self.url + path, **kwargs)
                if response.status_code not in _RETRY_STATUS:
                    break
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self.retries:
                raise VLLMTeacherError(
                    f"the vLLM teacher server at {self.url} did not answer {method} {path} after "
                    f"{self.retries + 1} tries ({problem}); is `vllm serve` running there?"
                )
            time.sleep(self.backoff * 2**attempt)
        if check and response.status_code >= 400:
            raise VLLMTeacherError(f"the vLLM server at {self.url} refused {method} {path}: {_error_text(response)}")
        return response


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error", body)
        return str(error.get("message", error) if isinstance(error, dict) else error)
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"


def connect_vllm_teacher(spec, student: nn.Module) -> VLLMTeacher:
    """The spec's vLLM teacher server, checked against the student's tokenizer, vocabulary and loss_top_k."""
    from core_distill.models import load_tokenizer, vocab_size

    return VLLMTeacher(
        spec.teacher_server_url, top_k=spec.loss_top_k, temperature=spec.kd_temperature,
        tokenizer=load_tokenizer(spec.student, spec.trust_remote_code), vocab_size=vocab_size(student),
    )  # fmt: skip
