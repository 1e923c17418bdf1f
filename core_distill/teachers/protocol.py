"""The teacher server's wire format: NumPy arrays in one binary body.

A message is
    b"DTP1" | u32 little-endian header length | header (UTF-8 JSON) | array buffers
where the header is {"meta": {scalars}, "arrays": {name: {"dtype", "shape", "offset"}}} and each
buffer starts at an 8-byte aligned offset after the header. Decoding is `np.frombuffer` on the body:
no per-token Python objects on either side (TRL's client turns every array into nested lists).

Request (client -> POST /score), sequences concatenated without padding:
    tokens (T,) int32 | lengths (B,) int32 | prompt_lengths (B,) int32 | extra_ids (N, M) int32, optional
    meta: top_k, temperature, fingerprint (core_distill/data/vocab.py's `vocab_fingerprint`), and width
    (optional): score over ids 0 .. width-1 only, the teacher's head cut to the vocabulary it shares
    with the student (core_distill/data/vocab.py)
Positions prompt_length .. length-1 of each sequence are scored (position 0 has no prediction, so
prompt_length >= 1); N = sum(lengths - prompt_lengths) rows come back in sequence order.

Response: ids (N, W) | logp (N, W) float32 | tail (N,) float32 | target_logp (N,) float32 | extra_logp (N, M)
    W = top_k + M. The ids hold the teacher's top K, the caller's extra ids and, where those overlap,
    the teacher's next-ranked tokens, all distinct and sorted by teacher log-prob, so the first K
    columns are exactly the top K. `tail` is the log mass outside the W ids, `target_logp` the
    log-prob of the sequence's actual next token, everything at the requested temperature.

This module imports NumPy only: the engine, the client and the server all use it.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
MAGIC = b"DTP1"
CONTENT_TYPE = "application/x-distill-arrays"
_ALIGN = 8
_DTYPES = {"<f4", "<f2", "<i4", "<i8", "<u2", "|u1"}  # what a message may carry (never objects)
MAX_HEADER_BYTES = 1 << 20


class ProtocolError(ValueError):
    """A body that is not a valid message; the text says what is wrong with it."""


# --- messages ---------------------------------------------------------------------------------------
def encode(arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> bytes:
    """Arrays (any shapes, dtypes in _DTYPES) and JSON-able scalars -> one body."""
    described: dict[str, dict[str, Any]] = {}
    buffers: list[bytes] = []
    offset = 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        array = array.astype(dtype, copy=False)
        if dtype.str not in _DTYPES:
            raise ProtocolError(f"array {name!r} has dtype {dtype.str}, not one of {sorted(_DTYPES)}")
        described[name] = {"dtype": dtype.str, "shape": list(array.shape), "offset": offset}
        data = array.tobytes()
        pad = -len(data) % _ALIGN
        buffers.append(data + b"\0" * pad)
        offset += len(data) + pad
    header = json.dumps({"meta": meta or {}, "arrays": described}, separators=(",", ":")).encode()
    header += b" " * (-(len(MAGIC) + 4 + len(header)) % _ALIGN)  # buffers start 8-byte aligned
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *buffers])


def decode(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One body -> (arrays, meta). Arrays are read-only views of `body`."""
    if len(body) < 8 or body[:4] != MAGIC:
        raise ProtocolError(f"not a distill array message (expected magic {MAGIC!r}, got {body[:4]!r})")
    (header_len,) = struct.unpack("<I", body[4:8])
    if header_len > min(MAX_HEADER_BYTES, len(body) - 8):
        raise ProtocolError(f"header length {header_len} exceeds the body ({len(body)} bytes)")
    try:
        header = json.loads(body[8 : 8 + header_len])
        described, meta = header["arrays"], header["meta"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"unreadable header: {exc}") from None
    if not isinstance(described, dict) or not isinstance(meta, dict):
        raise ProtocolError("header 'arrays' and 'meta' must be objects")
    data = memoryview(body)[8 + header_len :]
    arrays = {}
    for name, spec in described.items():
        try:
            dtype, shape, offset = np.dtype(spec["dtype"]), tuple(int(s) for s in spec["shape"]), int(spec["offset"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"array {name!r}: bad description {spec!r} ({exc})") from None
        if spec["dtype"] not in _DTYPES or any(s < 0 for s in shape) or offset < 0:
            raise ProtocolError(f"array {name!r}: dtype must be one of {sorted(_DTYPES)} and sizes >= 0, got {spec!r}")
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > len(data):
            raise ProtocolError(f"array {name!r} ({nbytes} bytes at {offset}) runs past the body's {len(data)} data bytes")
        arrays[name] = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
    return arrays, meta


# --- score requests and responses -------------------------------------------------------------------
@dataclass
class ScoreRequest:
    tokens: np.ndarray  # (T,) int32, all sequences back to back
    lengths: np.ndarray  # (B,) int32
    prompt_lengths: np.ndarray  # (B,) int32
    top_k: int
    temperature: float
    fingerprint: str
    extra_ids: np.ndarray | None = None  # (N, M) int32: caller-chosen ids to score at every position
    width: int | None = None  # score over ids 0 .. width-1 only (a cut head); None = every row of the head

    @classmethod
    def from_sequences(
        cls, sequences: list[list[int]] | list[np.ndarray], prompt_lengths: list[int], *, top_k: int,
        temperature: float, fingerprint: str, extra_ids: np.ndarray | None = None, width: int | None = None,
    ) -> ScoreRequest:  # fmt: skip
        lengths = np.array([len(s) for s in sequences], dtype=np.int32)
        tokens = np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences]) if sequences else np.zeros(0, np.int32)
        return cls(tokens, lengths, np.asarray(prompt_lengths, dtype=np.int32), top_k, temperature, fingerprint,
                   None if extra_ids is None else np.asarray(extra_ids, dtype=np.int32), width)  # fmt: skip

    @property
    def n_scored(self) -> int:
        return int((self.lengths.astype(np.int64) - self.prompt_lengths).sum())

    def encode(self) -> bytes:
        arrays = {"tokens": _compact_ids(self.tokens), "lengths": self.lengths, "prompt_lengths": self.prompt_lengths}
        if self.extra_ids is not None:
            arrays["extra_ids"] = _compact_ids(self.extra_ids)
        meta = {"top_k": self.top_k, "temperature": self.temperature, "fingerprint": self.fingerprint,
                "protocol": PROTOCOL_VERSION}  # fmt: skip
        if self.width is not None:
            meta["width"] = self.width
        return encode(arrays, meta)

    @classmethod
    def decode(cls, body: bytes) -> ScoreRequest:
        arrays, meta = decode(body)
        missing = {"tokens", "lengths", "prompt_lengths"} - arrays.keys()
        if missing:
            raise ProtocolError(f"request lacks the arrays {sorted(missing)}")
        try:
            top_k, temperature, fingerprint = int(meta["top_k"]), float(meta["temperature"]), str(meta["fingerprint"])
            width = None if meta.get("width") is None else int(meta["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"request meta needs top_k, temperature, fingerprint; width is an integer ({exc!r})") from None
        return cls(arrays["tokens"], arrays["lengths"], arrays["prompt_lengths"], top_k, temperature, fingerprint,
                   arrays.get("extra_ids"), width)  # fmt: skip

    def validate(self, *, vocab_size: int, max_top_k: int, max_tokens: int) -> None:
        """Raise ProtocolError naming the first thing a server cannot score; `vocab_size` is its head's rows."""
        tokens, lengths, prompts = self.tokens, self.lengths, self.prompt_lengths
        if self.width is not None:
            if not 1 <= self.width <= vocab_size:
                raise ProtocolError(f"width must be between 1 and the head's {vocab_size} rows, got {self.width}")
            vocab_size = self.width
        if tokens.ndim != 1 or lengths.ndim != 1 or prompts.shape != lengths.shape:
            raise ProtocolError(f"tokens must be (T,), lengths and prompt_lengths (B,); got {tokens.shape}, "
                                f"{lengths.shape}, {prompts.shape}")  # fmt: skip
        if tokens.dtype.kind not in "iu" or lengths.dtype.kind not in "iu" or prompts.dtype.kind not in "iu":
            raise ProtocolError("tokens, lengths and prompt_lengths must be integer arrays")
        if int(lengths.astype(np.int64).sum()) != tokens.shape[0]:
            raise ProtocolError(f"lengths sum to {int(lengths.sum())} but {tokens.shape[0]} tokens were sent")
        if tokens.shape[0] > max_tokens:
            raise ProtocolError(f"{tokens.shape[0]} tokens in one request; this server takes at most {max_tokens}")
        if len(prompts) and (prompts.min() < 1 or (prompts > lengths).any()):
            raise ProtocolError("every prompt_length must be between 1 and its sequence's length "
                                "(position 0 has no prediction)")  # fmt: skip
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
            raise ProtocolError(f"token ids must lie in [0, {vocab_size}), got {int(tokens.min())}..{int(tokens.max())}")
        if not 1 <= self.top_k <= max_top_k:
            raise ProtocolError(f"top_k must be between 1 and {max_top_k}, got {self.top_k}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ProtocolError(f"temperature must be a finite number > 0, got {self.temperature}")
        if self.extra_ids is not None:
            extra = self.extra_ids
            if extra.ndim != 2 or extra.shape[0] != self.n_scored or extra.dtype.kind not in "iu":
                raise ProtocolError(f"extra_ids must be integer (N={self.n_scored}, M), got {extra.dtype} {extra.shape}")
            if self.top_k + extra.shape[1] > vocab_size:
                raise ProtocolError(f"top_k + extra ids per position = {self.top_k + extra.shape[1]} exceeds the vocabulary ({vocab_size})")
            if extra.size and (extra.min() < 0 or extra.max() >= vocab_size):
                raise ProtocolError(f"extra_ids must lie in [0, {vocab_size})")


@dataclass
class ScoreResponse:
    ids: np.ndarray  # (N, W)
    logp: np.ndarray  # (N, W) float32
    tail: np.ndarray  # (N,) float32
    target_logp: np.ndarray  # (N,) float32
    extra_logp: np.ndarray | None = None  # (N, M) float32

    def encode(self, meta: dict[str, Any] | None = None) -> bytes:
        arrays = {"ids": self.ids, "logp": self.logp, "tail": self.tail, "target_logp": self.target_logp}
        if self.extra_logp is not None:
            arrays["extra_logp"] = self.extra_logp
        return encode(arrays, meta)

    @classmethod
    def decode(cls, body: bytes) -> ScoreResponse:
        arrays, _ = decode(body)
        missing = {"ids", "logp", "tail", "target_logp"} - arrays.keys()
        if missing:
            raise ProtocolError(f"response lacks the arrays {sorted(missing)}")
        return cls(arrays["ids"], arrays["logp"], arrays["tail"], arrays["target_logp"], arrays.get("extra_logp"))

    def to_json(self) -> str:
        """The same content as nested JSON lists (the layout of TRL's JSON mode), for size comparisons."""
        fields = {"ids": self.ids, "logp": self.logp, "tail": self.tail, "target_logp": self.target_logp}
        return json.dumps({k: v.tolist() for k, v in fields.items()})


def ids_dtype(vocab_size: int) -> np.dtype:
    """Two bytes per id when the vocabulary allows it (most below 65,536 tokens), else four."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<i4")


def _compact_ids(ids: np.ndarray) -> np.ndarray:
    if ids.size and ids.min() >= 0 and ids.max() < 1 << 16:
        return ids.astype("<u2")
    return ids.astype("<i4")


# --- compatibility -------------------------------------------------------------------------------------
