"""The state store: JSON records by (kind, name). ``SQLiteStore`` is the only module that speaks SQL."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

Record = dict[str, Any]


class StateStore(Protocol):
    """Persistent JSON records keyed by ``(kind, name)``; every method is one atomic transaction."""

    def get(self, kind: str, name: str) -> Record | None:
        """The record, or ``None`` when absent."""
        ...

    def put(self, kind: str, name: str, record: Record) -> None:
        """Create or replace the record."""
        ...

    def insert(self, kind: str, name: str, record: Record) -> bool:
        """Create the record only if absent; ``False`` (and no change) when it already exists."""
        ...

    def update(self, kind: str, name: str, mutate: Callable[[Record], Record]) -> Record | None:
        """Replace the record by ``mutate(record)`` atomically; ``None`` when absent."""
        ...

    def list(self, kind: str) -> list[Record]:
        """Every record of ``kind``, ordered by name."""
        ...

    def delete(self, kind: str, name: str) -> bool:
        """Remove the record; ``False`` when it was absent."""
        ...

    def subscribe(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(kind, name)`` after every committed change (in the writer's thread)."""
        ...


class SQLiteStore:
    """A ``StateStore`` in one SQLite table of JSON text (WAL mode), shared by threads under a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._observers: list[Callable[[str, str], None]] = []
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS records ("
                " kind TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,"
                " PRIMARY KEY (kind, name))"
            )

    def _read(self, kind: str, name: str) -> Record | None:
        row = self._conn.execute(
            "SELECT body FROM records WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        if row is None:
            return None
        record: Record = json.loads(row[0])
        return record

    def _write(self, kind: str, name: str, record: Record) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO records (kind, name, body) VALUES (?, ?, ?)",
            (kind, name, json.dumps(record)),
        )

    def get(self, kind: str, name: str) -> Record | None:
        with self._lock:
            return self._read(kind, name)

    def put(self, kind: str, name: str, record: Record) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._write(kind, name, record)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        self._changed(kind, name)

    def insert(self, kind: str, name: str, record: Record) -> bool:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if self._read(kind, name) is not None:
                    self._conn.execute("ROLLBACK")
                    return False
                self._write(kind, name, record)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        self._changed(kind, name)
        return True

    def update(self, kind: str, name: str, mutate: Callable[[Record], Record]) -> Record | None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                current = self._read(kind, name)
                if current is None:
                    self._conn.execute("ROLLBACK")
                    return None
                new = mutate(current)
                self._write(kind, name, new)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        self._changed(kind, name)
        return new

    def list(self, kind: str) -> list[Record]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM records WHERE kind = ? ORDER BY name", (kind,)
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def delete(self, kind: str, name: str) -> bool:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._conn.execute(
                    "DELETE FROM records WHERE kind = ? AND name = ?", (kind, name)
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        if cursor.rowcount > 0:
            self._changed(kind, name)
            return True
        return False

    def subscribe(self, callback: Callable[[str, str], None]) -> None:
        self._observers.append(callback)

    def _changed(self, kind: str, name: str) -> None:
        for callback in list(self._observers):
            callback(kind, name)

    def close(self) -> None:
        """Close the connection; the store is unusable afterwards."""
        with self._lock:
            self._conn.close()
