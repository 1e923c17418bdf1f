"""A run's stored metric points as files: the API's exports (`GET /api/runs/{id}/metrics.csv|json|jsonl|parquet`)
and the `metrics.jsonl` / `metrics.parquet` a service run leaves in its run folder, beside final/.

All read the points the same way (`points`: keyset pages in insertion order, flat memory for any run size).
`metrics.jsonl` is the format CLI runs write (core_distill/reporting.JsonlReporter): one line per log call,
`{"step", "time", "metrics": {key: value}}`. A DatabaseReporter stores the points of one log call with one
wall time, in order, so consecutive points with the same (step, wall time) are one line again (non-finite
values are not stored, so they are not there). `metrics.parquet` is the long table of the CSV (step, key,
value, wall_time), written when pyarrow is installed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from app.models import MetricPoint

log = logging.getLogger(__name__)

EXPORT_CHUNK = 5000
JSONL_FILE = "metrics.jsonl"
PARQUET_FILE = "metrics.parquet"
PARQUET_NEEDS = "the parquet export needs pyarrow, which is not installed here (pip install pyarrow)"


def points(run_id: int, keys: list[str] | None = None, engine: Engine | None = None) -> Iterator[MetricPoint]:
    """Every point of the run (of `keys`, if given) in insertion order, read in chunks (keyset pagination)."""
    from app.db import get_engine

    with Session(engine or get_engine()) as session:
        last_id = 0
        while True:
            query = select(MetricPoint).where(MetricPoint.run_id == run_id, MetricPoint.id > last_id)
            if keys:
                query = query.where(MetricPoint.key.in_(keys))
            chunk = session.exec(query.order_by(MetricPoint.id).limit(EXPORT_CHUNK)).all()
            if not chunk:
                return
            yield from chunk
            last_id = chunk[-1].id


def jsonl_records(stored: Iterable[MetricPoint]) -> Iterator[dict[str, Any]]:
    """The points as metrics.jsonl records: one per log call (consecutive points of one step and wall time)."""
    record: dict[str, Any] | None = None
    for p in stored:
        if record is None or (record["step"], record["time"]) != (p.step, p.wall_time):
            if record is not None:
                yield record
            record = {"step": p.step, "time": p.wall_time, "metrics": {}}
        record["metrics"][p.key] = p.value
    if record is not None:
        yield record


def jsonl_lines(run_id: int, keys: list[str] | None = None, engine: Engine | None = None) -> Iterator[str]:
    for record in jsonl_records(points(run_id, keys, engine)):
        yield json.dumps(record) + "\n"


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def write_parquet(run_id: int, path: Path, keys: list[str] | None = None, engine: Engine | None = None) -> int:
    """The points as a Parquet table (step int64, key string, value float64, wall_time float64), one row group per
    export chunk; returns the rows written.

    Raises:
        ImportError: pyarrow is not installed (PARQUET_NEEDS says so).
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(PARQUET_NEEDS) from None

    schema = pa.schema(
        [("step", pa.int64()), ("key", pa.string()), ("value", pa.float64()), ("wall_time", pa.float64())]
    )
    rows = 0
    columns: dict[str, list] = {name: [] for name in schema.names}
    with pq.ParquetWriter(path, schema) as writer:

        def flush() -> None:
            writer.write_table(pa.table(columns, schema=schema))
            for values in columns.values():
                values.clear()

        for p in points(run_id, keys, engine):
            for name, value in (("step", p.step), ("key", p.key), ("value", p.value), ("wall_time", p.wall_time)):
                columns[name].append(value)
            rows += 1
            if rows % EXPORT_CHUNK == 0:
                flush()
        if columns["step"] or rows == 0:
            flush()
    return rows


def export_to_run_folder(run_id: int, folder: str | Path, engine: Engine | None = None) -> list[Path]:
    """Write the run's metrics.jsonl (and metrics.parquet, with pyarrow) into its run folder, each through a
    temporary file renamed into place (a reader never sees half a file); the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    target = folder / JSONL_FILE
    tmp = folder / f".{JSONL_FILE}.tmp"
    with tmp.open("w") as f:
        f.writelines(jsonl_lines(run_id, engine=engine))
    tmp.replace(target)
    written.append(target)
    if parquet_available():
        target = folder / PARQUET_FILE
        tmp = folder / f".{PARQUET_FILE}.tmp"
        write_parquet(run_id, tmp, engine=engine)
        tmp.replace(target)
        written.append(target)
    else:
        log.info("run %s: %s; only %s written", run_id, PARQUET_NEEDS, JSONL_FILE)
    return written
