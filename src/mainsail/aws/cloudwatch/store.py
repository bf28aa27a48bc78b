"""The metric store: one-minute :class:`~mainsail.aws.cloudwatch.datapoints.Datapoint` rows in SQLite
(``$MAINSAIL_HOME/metrics.db``, WAL mode), kept ``retention_s`` and pruned as new ones come.

A metric is (namespace, name, dimensions); each of its periods is one row per unit (CloudWatch keeps units
apart: a query with ``Unit`` sees only that unit's values). ``put`` merges into a period already stored, so
the router can flush a minute more than once and ``PutMetricData`` can add to what the router wrote. This is
the only module of CloudWatch that speaks SQL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mainsail.aws.cloudwatch.datapoints import Datapoint, Dimensions, Distribution

DEFAULT_RETENTION_S = 15 * 24 * 3600.0
#: how often (in puts) old rows are pruned
_PRUNE_EVERY = 200


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
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS datapoints ("
                " namespace TEXT NOT NULL, metric TEXT NOT NULL, dimensions TEXT NOT NULL, unit TEXT NOT NULL,"
                " ts REAL NOT NULL, sample_count REAL NOT NULL, total REAL NOT NULL, minimum REAL NOT NULL,"
                " maximum REAL NOT NULL, distribution TEXT,"
                " PRIMARY KEY (namespace, metric, dimensions, unit, ts)) WITHOUT ROWID")
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
             None if merged.distribution is None else json.dumps(merged.distribution.to_json())))
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

    def datapoints(self, namespace: str, metric_name: str, dimensions: Dimensions, start: float, end: float,
                   unit: str | None = None) -> list[Datapoint]:
        """The metric's periods with ``start <= timestamp < end`` (one per unit and period), oldest first.
        ``dimensions`` must match exactly, as CloudWatch requires."""
        sql = ("SELECT unit, ts, sample_count, total, minimum, maximum, distribution FROM datapoints"
               " WHERE namespace = ? AND metric = ? AND dimensions = ? AND ts >= ? AND ts < ?")
        args: list[object] = [namespace, metric_name, _dims_text(dimensions), start, end]
        if unit is not None:
            sql += " AND unit = ?"
            args.append(unit)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY ts, unit", args).fetchall()
        return [_row_point(namespace, metric_name, dimensions, r[0], r[1], r[2:]) for r in rows]

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
               row: tuple[float, float, float, float, str | None]) -> Datapoint:
    count, total, minimum, maximum, distribution = row
    return Datapoint(namespace, metric_name, dimensions, ts, unit, count, total, minimum, maximum,
                     None if distribution is None else Distribution.from_json(json.loads(distribution)))
