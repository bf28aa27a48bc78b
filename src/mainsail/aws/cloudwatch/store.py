"""The metric store: one-minute :class:`~mainsail.aws.cloudwatch.datapoints.Datapoint` rows in SQLite
(``$MAINSAIL_HOME/metrics.db``, WAL mode), kept ``retention_s`` and pruned as new ones come.

A metric is (namespace, name, dimensions); each of its periods is one row per unit (CloudWatch keeps units
apart: a query with ``Unit`` sees only that unit's values). ``put`` merges into a period already stored, so
the router can flush a minute more than once and ``PutMetricData`` can add to what the router wrote. A
period's values are kept as a packed histogram (below), from which percentiles are read without decoding it
(:meth:`MetricStore.histograms`, :func:`quantile_of`). This and
:mod:`~mainsail.aws.cloudwatch.alarm_store` (the alarms, in the same file) are CloudWatch's only modules that
speak SQL.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# bucket_value: the value a bucket stands for, read here from the same function Distribution.quantile uses
from mainsail.aws.cloudwatch.datapoints import Datapoint, Dimensions, Distribution, bucket_value

DEFAULT_RETENTION_S = 15 * 24 * 3600.0
#: SQLite's page size for a new metrics file (16 KiB: rows up to about 4 KB are kept in their page)
PAGE_SIZE = 16384
#: how often (in puts) old rows are pruned
_PRUNE_EVERY = 200
#: a packed histogram's head: zeros, how many negative buckets, how many positive ones
_HEAD = struct.Struct("<dII")
_KEY = struct.Struct("<i")
#: whether float64 in memory are laid out as packed (little-endian), so the packed values can be read in place
_LITTLE_ENDIAN = sys.byteorder == "little"

Encoded = bytes | str
"""A histogram as the ``distribution`` column holds it: packed (:func:`pack`), or JSON in rows written
before the packed form."""


@dataclass(frozen=True)
class MetricKey:
    namespace: str
    metric_name: str
    dimensions: Dimensions


def _dims_text(dimensions: Dimensions) -> str:
    return json.dumps([list(pair) for pair in dimensions], separators=(",", ":"))


def _dims_of(text: str) -> Dimensions:
    return tuple((str(k), str(v)) for k, v in json.loads(text))


class MetricStore:
    """One-minute datapoints by metric, shared by threads under a lock; every method is one transaction."""

    def __init__(self, path: str | Path, *, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.path = str(path)
        self.retention_s = retention_s
        self._lock = threading.Lock()
        self._puts = 0
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            # a new file only: a minute's latency histogram (a hundred-odd buckets packed, about 2 KB) then stays
            # in its b-tree page instead of spilling to an overflow page of its own (4 KB pages keep ~1 KB)
            self._conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS datapoints ("
                " namespace TEXT NOT NULL, metric TEXT NOT NULL, dimensions TEXT NOT NULL, unit TEXT NOT NULL,"
                " ts REAL NOT NULL, sample_count REAL NOT NULL, total REAL NOT NULL, minimum REAL NOT NULL,"
                " maximum REAL NOT NULL, distribution TEXT,"
                # ts before unit: a time range of a metric is one seek and comes out in (ts, unit) order
                " PRIMARY KEY (namespace, metric, dimensions, ts, unit)) WITHOUT ROWID")
            self._conn.execute("CREATE INDEX IF NOT EXISTS datapoints_ts ON datapoints (ts)")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS metrics ("
                " namespace TEXT NOT NULL, metric TEXT NOT NULL, dimensions TEXT NOT NULL, last_ts REAL NOT NULL,"
                " PRIMARY KEY (namespace, metric, dimensions)) WITHOUT ROWID")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writing ---------------------------------------------------------------------------------

    def put(self, datapoints: Iterable[Datapoint]) -> None:
        """Store ``datapoints``, each merged into the same metric, unit and period if already there."""
        points = [p for p in datapoints if p.sample_count > 0]
        if not points:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for point in points:
                    self._merge(point)
                self._puts += 1
                if self._puts % _PRUNE_EVERY == 1:
                    self._prune(time.time() - self.retention_s)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _merge(self, point: Datapoint) -> None:
        dims = _dims_text(point.dimensions)
        key = (point.namespace, point.metric_name, dims, point.unit, point.timestamp)
        row = self._conn.execute(
            "SELECT sample_count, total, minimum, maximum, distribution FROM datapoints"
            " WHERE namespace = ? AND metric = ? AND dimensions = ? AND unit = ? AND ts = ?", key).fetchone()
        merged = point
        if row is not None:
            merged = _row_point(point.namespace, point.metric_name, point.dimensions, point.unit, point.timestamp, row)
            merged.merge(point)
        self._conn.execute(
            "INSERT OR REPLACE INTO datapoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*key, merged.sample_count, merged.sum, merged.minimum, merged.maximum,
             None if merged.distribution is None else pack(merged.distribution)))
        self._conn.execute(
            "INSERT INTO metrics VALUES (?, ?, ?, ?) ON CONFLICT (namespace, metric, dimensions)"
            " DO UPDATE SET last_ts = max(last_ts, excluded.last_ts)",
            (point.namespace, point.metric_name, dims, point.timestamp))

    def _prune(self, before: float) -> None:
        self._conn.execute("DELETE FROM datapoints WHERE ts < ?", (before,))
        self._conn.execute("DELETE FROM metrics WHERE last_ts < ?", (before,))

    def prune(self, before: float | None = None) -> None:
        """Drop every period that started before ``before`` (default: now − retention)."""
        with self._lock:
            self._prune(time.time() - self.retention_s if before is None else before)

    # -- reading ---------------------------------------------------------------------------------

    def _range(self, columns: str, namespace: str, metric_name: str, dimensions: Dimensions, start: float,
               end: float, unit: str | None) -> list[Any]:
        """``columns`` of the metric's rows with ``start <= ts < end`` (of ``unit`` only, when given), ordered by
        time then unit: the one query every reader below runs."""
        sql = (f"SELECT {columns} FROM datapoints"
               " WHERE namespace = ? AND metric = ? AND dimensions = ? AND ts >= ? AND ts < ?")
        args: list[object] = [namespace, metric_name, _dims_text(dimensions), start, end]
        if unit is not None:
            sql += " AND unit = ?"
            args.append(unit)
        with self._lock:
            return self._conn.execute(sql + " ORDER BY ts, unit", args).fetchall()

    def datapoints(self, namespace: str, metric_name: str, dimensions: Dimensions, start: float, end: float,
                   unit: str | None = None, *, distributions: bool = True) -> list[Datapoint]:
        """The metric's periods with ``start <= timestamp < end`` (one per unit and period), oldest first.
        ``dimensions`` must match exactly, as CloudWatch requires. With ``distributions`` False the values'
        histograms are not read (every ``distribution`` is None): enough for any statistic but percentiles,
        and most of the cost of reading a day of minutes is decoding them."""
        rows = self._range(f"unit, ts, sample_count, total, minimum, maximum, "
                           f"{'distribution' if distributions else 'NULL'}",
                           namespace, metric_name, dimensions, start, end, unit)
        return [_row_point(namespace, metric_name, dimensions, r[0], r[1], r[2:]) for r in rows]

    def summaries(self, namespace: str, metric_name: str, dimensions: Dimensions, start: float, end: float,
                  unit: str | None = None) -> list[tuple[float, float, float, float, float]]:
        """(timestamp, SampleCount, Sum, Minimum, Maximum) of the metric's periods with ``start <= timestamp <
        end``, oldest first: every statistic but percentiles, without building a :class:`Datapoint` per row."""
        return self._range("ts, sample_count, total, minimum, maximum", namespace, metric_name, dimensions, start,
                           end, unit)

    def histograms(self, namespace: str, metric_name: str, dimensions: Dimensions, start: float, end: float,
                   unit: str | None = None) -> list[tuple[float, Encoded | None]]:
        """(timestamp, histogram as stored) of the metric's periods with ``start <= timestamp < end``, oldest
        first: what percentiles are read from (:func:`quantile_of`), without building a :class:`Datapoint`
        and decoding its :class:`Distribution` for each minute. None for a period put as statistic sets."""
        return self._range("ts, distribution", namespace, metric_name, dimensions, start, end, unit)

    def metrics(self, namespace: str | None = None, metric_name: str | None = None,
                active_since: float | None = None) -> list[MetricKey]:
        """Every metric stored (optionally of one namespace / name, or with a period since ``active_since``),
        ordered by namespace, name and dimensions."""
        sql = "SELECT namespace, metric, dimensions FROM metrics WHERE 1 = 1"
        args: list[object] = []
        for column, value in (("namespace", namespace), ("metric", metric_name)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if active_since is not None:
            sql += " AND last_ts >= ?"
            args.append(active_since)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY namespace, metric, dimensions", args).fetchall()
        return [MetricKey(r[0], r[1], _dims_of(r[2])) for r in rows]


def _row_point(namespace: str, metric_name: str, dimensions: Dimensions, unit: str, ts: float,
               row: tuple[float, float, float, float, Encoded | None]) -> Datapoint:
    count, total, minimum, maximum, distribution = row
    return Datapoint(namespace, metric_name, dimensions, ts, unit, count, total, minimum, maximum,
                     None if distribution is None else unpack(distribution))


# -- histograms as stored ------------------------------------------------------------------------
# Packed: a head (zeros, n negative buckets, n positive ones); the bucket keys as int32 in the order of their
# values (negative buckets by descending key, then positive ones by ascending key); then, as float64, the
# running count in that order with the zeros between the negative and the positive buckets (n + 1 of
# them): the sums Distribution.quantile makes. A percentile of one period is then a bisection of the running
# count, read in place, and one key (``quantile_of``), without a sort, a sum or a copy: a day of one-minute
# periods for ten endpoints is 14,400 of them. The counts are the differences (exact for whole counts, the usual case;
# within a rounding of the last bit otherwise). Several times faster to read back than JSON, and smaller.


@functools.lru_cache(maxsize=1024)
def _layout(n: int) -> tuple[struct.Struct, struct.Struct]:
    """The Structs of the keys and running counts of a histogram of ``n`` buckets, and of its counts alone."""
    return struct.Struct(f"<{n}i{n + 1}d"), struct.Struct(f"<{4 * n}x{n + 1}d")


def pack(distribution: Distribution) -> bytes:
    """``distribution`` as the ``distribution`` column holds it."""
    negative, positive = sorted(distribution.negative, reverse=True), sorted(distribution.positive)
    seen = itertools.accumulate((*(distribution.negative[k] for k in negative), distribution.zeros,
                                 *(distribution.positive[k] for k in positive)))
    return (_HEAD.pack(distribution.zeros, len(negative), len(positive))
            + _layout(len(negative) + len(positive))[0].pack(*negative, *positive, *seen))


def unpack(encoded: Encoded) -> Distribution:
    """The :class:`Distribution` a ``distribution`` column holds (packed, or JSON from older rows)."""
    if isinstance(encoded, str):
        return Distribution.from_json(orjson.loads(encoded))
    zeros, n_negative, n_positive = _HEAD.unpack_from(encoded)
    n = n_negative + n_positive
    values = _layout(n)[0].unpack_from(encoded, _HEAD.size)
    seen = values[n:]
    counts = [b - a for a, b in zip((0.0, *seen[:n]), seen, strict=True)]  # slot by slot, the zeros' included
    return Distribution(dict(zip(values[n_negative:n], counts[n_negative + 1:], strict=True)),
                        dict(zip(values[:n_negative], counts[:n_negative], strict=True)), zeros)


def quantile_of(encoded: Encoded, q: float) -> float | None:
    """``unpack(encoded).quantile(q)`` (the same value for whole counts; for fractional ones the rank may fall
    on a neighbouring bucket when a difference rounds), read from the packed running count without building
    the Distribution; of the keys, only the one found is read."""
    if isinstance(encoded, str):
        return unpack(encoded).quantile(q)
    _, n_negative, n_positive = _HEAD.unpack_from(encoded)
    n = n_negative + n_positive
    offset = _HEAD.size + 4 * n
    seen: Sequence[float]
    if _LITTLE_ENDIAN:  # the running count read in place: a bisection reads a few values, copies none
        seen = memoryview(encoded)[offset:offset + 8 * (n + 1)].cast("d")
    else:
        seen = _layout(n)[1].unpack_from(encoded, _HEAD.size)
    total = seen[-1]
    if total <= 0:
        return None
    rank = max(math.ceil(q * total - 1e-9) - 1, 0)
    index = bisect.bisect_right(seen, rank)  # the first slot where more than ``rank`` values are seen
    if index == n_negative:
        return 0.0
    if index > n:  # not reached (rounding): the largest bucket, as Distribution.quantile falls back
        if not n_positive:
            return 0.0
        index = n  # the last slot: the largest positive bucket
    key = index if index < n_negative else index - 1
    value = bucket_value(_KEY.unpack_from(encoded, _HEAD.size + 4 * key)[0])
    return -value if index < n_negative else value
