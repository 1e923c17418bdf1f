"""An on-disk cache of the teacher's top-K log-probs for dataset completions and eval sets.

Off-policy batches score the same (prompt, completion) rows again and again: every epoch, every
evaluation and every run of a sweep over lmbda, beta, seeds or learning rates. One entry per row,
keyed by the teacher's identity (its weights and dtype), the row's token ids, K and the temperature,
so batches composed differently (other seeds, batch sizes) still hit.

    $DISTILL_TEACHER_CACHE  or  $DISTILL_HOME/teacher-cache        (deleting it is always safe)
        <teacher identity>/<2 hex>/<row key>.dtp                      (core_distill.teachers.protocol)

Runs on one machine share it: an entry is written to a temporary file and renamed into place, so a
reader sees a whole entry or none, and two runs writing the same row write the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core_distill.data.batches import SequenceBatch, make_batch
from core_distill.losses import SparseTeacher
from core_distill.paths import distill_home, resolve_model_path
from core_distill.teachers.base import batch_rows
from core_distill.teachers.protocol import ProtocolError, decode, encode

_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".json", ".model"}


def cache_dir() -> Path:
    default = distill_home() / "teacher-cache"  # under DISTILL_HOME, with everything else of distill
    return Path(os.environ.get("DISTILL_TEACHER_CACHE", default)).expanduser()


def model_identity(name: str, dtype: str) -> str:
    """A name for the teacher's exact weights: its folder plus the name, size and modification time of
    every weight and config file (cheap even for a 70B model), and the compute dtype. A hub id
    stands for itself."""
    path = resolve_model_path(name)
    digest = hashlib.sha256(dtype.encode())
    if isinstance(path, Path) and path.is_dir():
        digest.update(str(path.resolve()).encode())
        for file in sorted(path.iterdir()):
            if file.is_file() and file.suffix in _WEIGHT_SUFFIXES:
                stat = file.stat()
                digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        digest.update(str(name).encode())
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(name)).name)[:48] or "teacher"
    return f"{readable}-{dtype}-{digest.hexdigest()[:16]}"


@dataclass
class RowTargets:
    """One row's targets: ids, logp (n, K); tail, target_logp (n,) for its n completion tokens."""

    ids: np.ndarray
    logp: np.ndarray
    tail: np.ndarray
    target_logp: np.ndarray


class TeacherCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir()

    @staticmethod
    def row_key(identity: str, top_k: int, temperature: float, prompt: list[int], completion: list[int]) -> str:
        head = json.dumps([identity, int(top_k), float(temperature).hex(), len(prompt)]).encode()
        tokens = np.asarray(prompt + completion, dtype=np.int64).tobytes()
        return hashlib.sha256(head + b"\0" + tokens).hexdigest()

    def path(self, identity: str, key: str) -> Path:
        return self.root / re.sub(r"[^A-Za-z0-9_.-]+", "_", identity) / key[:2] / f"{key}.dtp"

    def get(self, identity: str, key: str) -> RowTargets | None:
        path = self.path(identity, key)
        try:
            arrays, meta = decode(path.read_bytes())
        except (FileNotFoundError, ProtocolError):
            return None  # absent, or unreadable (then rewritten on the next miss)
        if meta.get("key") != key or not {"ids", "logp", "tail", "target_logp"} <= arrays.keys():
            return None
        return RowTargets(arrays["ids"], arrays["logp"], arrays["tail"], arrays["target_logp"])

    def put(self, identity: str, key: str, row: RowTargets) -> None:
        path = self.path(identity, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = encode({"ids": row.ids, "logp": row.logp, "tail": row.tail, "target_logp": row.target_logp}, {"key": key})
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            os.replace(tmp, path)  # atomic on POSIX: readers never see half an entry
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class CachedTeacher:
    """Wraps a teacher that can produce sparse targets (`score_sparse`); answers cacheable batches
    from the cache, scoring only the rows it has not seen. Other batches go straight through."""

    def __init__(self, inner, cache: TeacherCache, *, identity: str, top_k: int, temperature: float):
        self.inner = inner
        self.cache = cache
        self.identity = identity
        self.top_k = top_k
        self.temperature = temperature
        self.hits = 0
        self.misses = 0

    @property
    def model(self) -> nn.Module | None:
        return self.inner.model

    @property
    def head_rows(self) -> int | None:
        return getattr(self.inner, "head_rows", None)

    def score(self, batch: SequenceBatch, *, cacheable: bool = False):
        if not cacheable:
            return self.inner.score(batch, cacheable=False)
        rows = batch_rows(batch)
        keys = [TeacherCache.row_key(self.identity, self.top_k, self.temperature, p, c) for p, c in rows]
        found = [self.cache.get(self.identity, key) for key in keys]
        missing = [i for i, row in enumerate(found) if row is None]
        self.hits += len(rows) - len(missing)
        self.misses += len(missing)
        if missing:
            sub = make_batch([rows[i][0] for i in missing], [rows[i][1] for i in missing], pad_id=0)
            scored = self.inner.score_sparse(sub.to(batch.input_ids.device), top_k=self.top_k, temperature=self.temperature)
            lengths = [len(rows[i][1]) for i in missing]
            parts = zip(*(t.cpu().split(lengths) for t in (scored.ids, scored.logp, scored.tail, scored.target_logp)), strict=True)
            for i, (ids, logp, tail, target) in zip(missing, parts, strict=True):
                found[i] = RowTargets(ids.numpy().astype(np.int32), logp.float().numpy(), tail.float().numpy(),
                                      target.float().numpy())  # fmt: skip
                self.cache.put(self.identity, keys[i], found[i])
        device = batch.input_ids.device
        joined = lambda name, dtype: torch.from_numpy(np.concatenate([getattr(r, name) for r in found]).astype(dtype)).to(device)  # noqa: E731
        return SparseTeacher(joined("ids", np.int64), joined("logp", np.float32), joined("tail", np.float32),
                             joined("target_logp", np.float32))  # fmt: skip
