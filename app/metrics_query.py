"""Reading metric series back: downsampled in SQL so a chart never gets more than `max_points`.

Plain reservoir or stride sampling loses spikes (MLflow #11444, TensorBoard #6796, ClearML #997).
Here the x range is cut into equal buckets and each bucket keeps the rows holding its minimum
and its maximum (plus the series' first and last rows), so a one-step spike always survives and
the current value always shows. Series that already fit are returned whole. The bucketing reads
only the covering metric index: one range scan per bucket on SQLite (bare-column GROUP BY on the
wall-time axis), one pass of array MIN/MAX on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from sqlalchemy import TextClause, text
from sqlmodel import Session

MAX_POINTS_CAP = 5000  # the API refuses more: a chart cannot show more pixels than this anyway
MIN_POINTS = 4  # the first, the last, and one bucket's min and max

Point = dict[str, float | int]

_WHERE = "FROM metricpoint WHERE run_id = :run_id AND key = :key"
_SERIES_SQL = f"SELECT step, wall_time, value {_WHERE} ORDER BY step"
# The count stops at the budget, and MIN/MAX(step) are index seeks: the range costs no scan.
_COUNT_SQL = f"SELECT COUNT(*) FROM (SELECT 1 {_WHERE} LIMIT :limit) AS head"
_RANGE_SQL = {
    "step": f"SELECT MIN(step), MAX(step) {_WHERE}",
    "wall_time": f"SELECT MIN(wall_time), MAX(wall_time) {_WHERE}",
}
_ENDS_SQL = f"""
SELECT * FROM (SELECT step, wall_time, value {_WHERE} ORDER BY step ASC LIMIT 1) AS first_point
UNION SELECT * FROM (SELECT step, wall_time, value {_WHERE} ORDER BY step DESC LIMIT 1) AS last_point
"""

# SQLite: with a single min() or max() aggregate, the bare columns come from the row holding it,
# so each GROUP BY is one pass over the covering (run_id, key, step, value, wall_time) index.
_SQLITE_BUCKETS_SQL = f"""
SELECT step, wall_time, value FROM (SELECT {{bucket}} AS bucket, MIN(value) AS value, step, wall_time {_WHERE} GROUP BY bucket)
UNION
SELECT step, wall_time, value FROM (SELECT {{bucket}} AS bucket, MAX(value) AS value, step, wall_time {_WHERE} GROUP BY bucket)
"""

# SQLite on the step axis: GROUP BY on a computed bucket sorts every row into a temporary B-tree.
# Walking the buckets instead (a recursive CTE of step ranges), each bucket's min and max row is an
# index range scan with ORDER BY ... LIMIT 1: the same rows, 2.3x less CPU on 100k points.
_SQLITE_STEP_BUCKETS_SQL = """
WITH RECURSIVE buckets(lo, hi) AS (
    SELECT :lo, :lo + :width
    UNION ALL SELECT hi, hi + :width FROM buckets WHERE hi <= :hi
)
SELECT step, wall_time, value FROM metricpoint WHERE id IN (
    SELECT (SELECT m.id FROM metricpoint m WHERE m.run_id = :run_id AND m.key = :key
            AND m.step >= buckets.lo AND m.step < buckets.hi ORDER BY m.value ASC, m.step LIMIT 1) FROM buckets
    UNION
    SELECT (SELECT m.id FROM metricpoint m WHERE m.run_id = :run_id AND m.key = :key
            AND m.step >= buckets.lo AND m.step < buckets.hi ORDER BY m.value DESC, m.step LIMIT 1) FROM buckets
)
"""

# PostgreSQL has no bare-column rule, but arrays compare element by element: the smallest
# [value, step, wall_time] of a bucket is its minimum row (earliest step on ties), the largest
# [value, -step, wall_time] its maximum row. One pass, no sort (window ranks were 3.5x slower).
_POSTGRES_BUCKETS_SQL = f"""
SELECT MIN(ARRAY[value, step, wall_time]) AS low, MAX(ARRAY[value, -step, wall_time]) AS high
{_WHERE} GROUP BY {{bucket}}
"""


def _in_range(sql: str) -> TextClause:
    # every query of a series filters on "key = :key"; a step range narrows each of them alike
    return text(sql.replace("key = :key", "key = :key AND step BETWEEN :step_lo AND :step_hi"))


def _bucket_expr(x: str, dialect: str) -> str:
    # The offset is >= 0, so SQLite's truncating CAST is a floor; PostgreSQL's CAST would round.
    offset = f"({x} - :lo) / :width"
    if dialect == "sqlite":
        return f"CAST({offset} AS INTEGER)"
    return f"FLOOR(({x} - :lo) / CAST(:width AS DOUBLE PRECISION))"


def downsample_series(
    session: Session,
    run_id: int,
    keys: Iterable[str],
    max_points: int = 500,
    x: Literal["step", "wall_time"] = "step",
    steps: tuple[int, int] | None = None,
) -> dict[str, list[Point]]:
    """Each key's series as [{step, wall_time, value}], sorted by step, at most `max_points` long.

    A series longer than `max_points` is cut into (max_points - 2) // 2 equal buckets along `x`;
    each bucket keeps the rows holding its minimum and its maximum, plus the series' first and
    last rows, so spikes and the current value always show.

    Args:
        run_id: the run.
        keys: metric keys; a key with no points maps to an empty list.
        max_points: the budget per series (clamped to MIN_POINTS..MAX_POINTS_CAP).
        x: the axis cut into buckets: optimizer step, or the worker's wall-clock time.
        steps: only points with first <= step <= last (a zoomed chart asks for finer buckets of its range).
    """
    if x not in ("step", "wall_time"):
        raise ValueError(f"x must be 'step' or 'wall_time', got {x!r}")
    max_points = max(MIN_POINTS, min(int(max_points), MAX_POINTS_CAP))
    dialect = session.get_bind().dialect.name
    buckets_sql = _SQLITE_BUCKETS_SQL if dialect == "sqlite" else _POSTGRES_BUCKETS_SQL
    series: dict[str, list[Point]] = {}
    as_sql = text if steps is None else _in_range
    for key in dict.fromkeys(keys):  # de-duplicated, order kept
        params: dict[str, Any] = {"run_id": run_id, "key": key}
        if steps is not None:
            params.update(step_lo=int(steps[0]), step_hi=int(steps[1]))
        count = session.execute(as_sql(_COUNT_SQL), {**params, "limit": max_points + 1}).scalar_one()
        if count <= max_points:
            rows = session.execute(as_sql(_SERIES_SQL), params).all()
        else:
            lo, hi = session.execute(as_sql(_RANGE_SQL[x]), params).one()
            n_buckets = (max_points - 2) // 2
            # lo..hi spans exactly n_buckets buckets; the factor keeps hi itself in the last one.
            width = (float(hi) - float(lo)) / n_buckets * (1 + 1e-9) or 1.0
            bucket_params = {**params, "lo": lo, "width": width}
            sql = buckets_sql.format(bucket=_bucket_expr(x, dialect))
            if dialect == "sqlite" and x == "step":
                sql = _SQLITE_STEP_BUCKETS_SQL + " UNION " + _ENDS_SQL
                rows = session.execute(as_sql(sql), {**bucket_params, "hi": hi}).all()
            elif dialect == "sqlite":
                rows = session.execute(as_sql(sql + " UNION " + _ENDS_SQL), bucket_params).all()
            else:
                rows = session.execute(as_sql(_ENDS_SQL), params).all()
                for low, high in session.execute(as_sql(sql), bucket_params).all():
                    rows += [(int(low[1]), low[2], low[0]), (-int(high[1]), high[2], high[0])]
            rows = sorted({int(row[0]): row for row in rows}.values(), key=lambda row: row[0])  # one row per step
        series[key] = [{"step": int(s), "wall_time": float(t), "value": float(v)} for s, t, v in rows]
    return series


# Distinct keys of a run by a loose index scan (one index seek per key) on the (run_id, key, step)
# index, instead of reading every point: a run with 100k points per key still answers at once.
_KEYS_SQL = """
WITH RECURSIVE keys(key) AS (
    SELECT MIN(key) FROM metricpoint WHERE run_id = :run_id
    UNION ALL
    SELECT (SELECT MIN(m.key) FROM metricpoint m WHERE m.run_id = :run_id AND m.key > keys.key)
    FROM keys WHERE keys.key IS NOT NULL
)
SELECT key FROM keys WHERE key IS NOT NULL
"""

_LATEST_SQL = """
SELECT step, value FROM metricpoint WHERE run_id = :run_id AND key = :key ORDER BY step DESC LIMIT 1
"""


def metric_keys(session: Session, run_id: int) -> list[str]:
    """The metric keys a run has logged, sorted."""
    return [k for (k,) in session.execute(text(_KEYS_SQL), {"run_id": run_id}).all()]


def latest_metrics(
    session: Session, run_ids: Sequence[int], keys: Iterable[str] | None = None
) -> dict[int, dict[str, float]]:
    """The last logged value of each key of each run: {run_id: {key: value}} (runs without points map to {}).

    Every lookup is an index seek, so this is cheap enough for a run table's columns.
    """
    wanted = list(dict.fromkeys(keys)) if keys is not None else None
    latest: dict[int, dict[str, float]] = {}
    for run_id in dict.fromkeys(run_ids):
        values: dict[str, float] = {}
        for key in wanted if wanted is not None else metric_keys(session, run_id):
            row = session.execute(text(_LATEST_SQL), {"run_id": run_id, "key": key}).first()
            if row is not None:
                values[key] = float(row[1])
        latest[run_id] = values
    return latest


def last_steps(session: Session, run_ids: Sequence[int]) -> dict[int, int]:
    """The highest step with any stored point per run (a cheap 'did anything change' probe for live views)."""
    out: dict[int, int] = {}
    for run_id in dict.fromkeys(run_ids):
        keys = metric_keys(session, run_id)
        steps = [
            row[0]
            for key in keys
            if (row := session.execute(text(_LATEST_SQL), {"run_id": run_id, "key": key}).first()) is not None
        ]
        out[run_id] = max(steps, default=0)
    return out


_FINAL_BY_PREFIX_SQL = """
SELECT m.run_id, m.key, m.value FROM metricpoint m JOIN (
    SELECT run_id, key, MAX(step) AS step FROM metricpoint
    WHERE run_id IN ({ids}) AND key LIKE :pattern GROUP BY run_id, key
) last ON m.run_id = last.run_id AND m.key = last.key AND m.step = last.step
"""
_IDS_PER_QUERY = 500  # bound parameters per statement stay far below SQLite's limit


def final_values(session: Session, run_ids: Sequence[int], prefix: str) -> dict[int, dict[str, float]]:
    """The last logged value of every key starting with `prefix` (e.g. "eval/"), for many runs in a few
    statements: {run_id: {key: value}} (runs without such keys map to {})."""
    ids = list(dict.fromkeys(int(i) for i in run_ids))
    out: dict[int, dict[str, float]] = {run_id: {} for run_id in ids}
    pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start : start + _IDS_PER_QUERY]
        names = ", ".join(f":id{i}" for i in range(len(chunk)))
        sql = text(_FINAL_BY_PREFIX_SQL.format(ids=names).replace("LIKE :pattern", "LIKE :pattern ESCAPE '\\'"))
        params = {"pattern": pattern, **{f"id{i}": run_id for i, run_id in enumerate(chunk)}}
        for run_id, key, value in session.execute(sql, params).all():
            out[run_id][key] = float(value)
    return out
