"""Where alarms live: their definitions and state (one JSON document per alarm, in the output shape's
member names) and their history, in SQLite beside the metrics (``metrics.db``), so a restart of
``mainsail up`` keeps them. The only module of the alarms that speaks SQL."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: how long history items are kept (CloudWatch keeps alarm history 30 days), and how often (in items) the
#: older ones are pruned
HISTORY_RETENTION_S = 30 * 24 * 3600.0
_PRUNE_EVERY = 200


class AlarmStore:
    """Alarms by name and their history items, shared by threads under a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._added = 0
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute("CREATE TABLE IF NOT EXISTS alarms (name TEXT PRIMARY KEY, body TEXT NOT NULL)")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS alarm_history (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " name TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL)")
            self._conn.execute("CREATE INDEX IF NOT EXISTS alarm_history_name ON alarm_history (name, ts)")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT body FROM alarms WHERE name = ?", (name,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def all(self) -> list[dict[str, Any]]:
        """Every alarm, by name."""
        with self._lock:
            rows = self._conn.execute("SELECT body FROM alarms ORDER BY name").fetchall()
        return [dict(json.loads(r[0])) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM alarms").fetchone()[0])

    def put(self, alarm: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO alarms VALUES (?, ?)", (alarm["AlarmName"], json.dumps(alarm)))

    def delete(self, names: Iterable[str]) -> None:
        with self._lock:
            self._conn.executemany("DELETE FROM alarms WHERE name = ?", [(n,) for n in names])

    def add_history(self, item: dict[str, Any]) -> None:
        """Record a history item (``AlarmHistoryItem``'s members; Timestamp in epoch seconds)."""
        with self._lock:
            self._conn.execute("INSERT INTO alarm_history (name, ts, kind, body) VALUES (?, ?, ?, ?)",
                               (item["AlarmName"], item["Timestamp"], item["HistoryItemType"], json.dumps(item)))
            self._added += 1
            if self._added % _PRUNE_EVERY == 1:
                self._conn.execute("DELETE FROM alarm_history WHERE ts < ?", (time.time() - HISTORY_RETENTION_S,))

    def history(self, name: str | None, kind: str | None, start: float | None, end: float | None,
                newest_first: bool = True) -> list[dict[str, Any]]:
        sql, args = "SELECT body FROM alarm_history WHERE 1 = 1", []
        for clause, value in (("name = ?", name), ("kind = ?", kind), ("ts >= ?", start), ("ts <= ?", end)):
            if value is not None:
                sql += f" AND {clause}"
                args.append(value)
        order = "DESC" if newest_first else "ASC"
        with self._lock:
            rows = self._conn.execute(f"{sql} ORDER BY ts {order}, seq {order}", args).fetchall()
        return [dict(json.loads(r[0])) for r in rows]
