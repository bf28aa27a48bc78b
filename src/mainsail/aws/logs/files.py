"""The log-file reader behind CloudWatch Logs: each file's chunk index, its events, and bounded scans.

Reading is bounded: each file is indexed once into chunks of about ``CHUNK`` bytes (offsets, time
range and the timestamp carried into each), incrementally as it grows; a call reads only the chunks
its tokens and time window point at, at most ``SCAN_BUDGET`` bytes (a :class:`Budget`).
Lines that start with a ``logging`` timestamp (``2026-11-23 14:42:15,949 ...``, local time) carry it;
other lines carry the previous line's; lines before the first timestamped one carry the first
timestamp in the file (the file's last-modified time when it has none).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Bytes per index chunk (chunks end at a line end, so one may be longer).
CHUNK = 256 * 1024
#: Bytes of log one call reads at most before it answers with what it found and a token.
SCAN_BUDGET = 64 * 1024 * 1024
MAX_MESSAGE = 256 * 1024
#: A last line without a newline counts once the file has been left alone this long (seconds).
SETTLE = 2.0

_STAMP_RE = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})[ \n]", re.M)


@functools.lru_cache(maxsize=8192)
def _second_ms(text: bytes) -> int:
    """Milliseconds since the epoch of ``YYYY-mm-dd HH:MM:SS`` in local time (as ``logging`` writes)."""
    return int(dt.datetime.strptime(text.decode(), "%Y-%m-%d %H:%M:%S").timestamp()) * 1000


def _stamp_ms(stamp: bytes) -> int | None:
    """``2026-11-23 14:42:15,949`` → ms since the epoch; ``None`` if it is not a valid time."""
    try:
        return _second_ms(stamp[:19]) + int(stamp[20:23])
    except ValueError:
        return None


def _line_stamp(line: bytes) -> int | None:
    if len(line) < 23 or not line[:4].isdigit():
        return None
    match = _STAMP_RE.match(line + b"\n" if len(line) == 23 else line)
    return _stamp_ms(match.group(1) + b"," + match.group(2)) if match else None


@dataclass(frozen=True)
class Chunk:
    """Lines ``[start, end)`` of a file: their time range and the timestamp in effect before them
    (``None``: no timestamped line before, the file's lead time applies)."""

    start: int
    end: int
    lo: int | None
    hi: int | None
    carry_in: int | None
    carry_out: int | None


@dataclass(frozen=True)
class Event:
    timestamp: int
    offset: int
    end: int
    message: str


def _summarize(data: bytes, start: int, carry_in: int | None) -> tuple[Chunk, int | None]:
    """The chunk of ``data`` (which starts at ``start``) and its first timestamp."""
    stamps = [s for s in (_stamp_ms(m.group(1) + b"," + m.group(2)) for m in _STAMP_RE.finditer(data))
              if s is not None]
    first = stamps[0] if stamps else None
    lo = min(stamps) if stamps else None
    hi = max(stamps) if stamps else None
    carry_out = stamps[-1] if stamps else carry_in
    return Chunk(start, start + len(data), lo, hi, carry_in, carry_out), first


class LogFile:
    """One log file's chunk index, extended as the file grows (rebuilt if it is replaced or shrinks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.chunks: list[Chunk] = []
        self.indexed = 0
        self.lead: int | None = None
        self.inode: tuple[int, int] | None = None
        self.bytes_read = 0
        self.size = 0
        self.mtime_ms = 0
        self._tail: tuple[tuple[int, int, int, bool], Chunk | None] | None = None

    def _read(self, start: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(length)
        self.bytes_read += len(data)
        return data

    def refresh(self) -> list[Chunk]:
        """Stat the file, index what was appended, and return every chunk (the unindexed tail last)."""
        with self.lock:
            try:
                st = os.stat(self.path)
            except OSError:
                self.chunks, self.indexed, self.lead, self._tail = [], 0, None, None
                self.size = 0
                return []
            inode = (st.st_dev, st.st_ino)
            if inode != self.inode or st.st_size < self.indexed:
                self.chunks, self.indexed, self.lead, self._tail = [], 0, None, None
                self.inode = inode
            self.size, self.mtime_ms = st.st_size, int(st.st_mtime * 1000)
            while st.st_size - self.indexed >= CHUNK:
                data = self._read(self.indexed, CHUNK)
                cut = data.rfind(b"\n")
                while cut < 0 and self.indexed + len(data) < st.st_size:  # one very long line
                    more = self._read(self.indexed + len(data), CHUNK)
                    if not more:
                        break
                    newline = more.find(b"\n")
                    if newline >= 0:
                        cut = len(data) + newline
                    data += more
                if cut < 0:
                    break  # an unfinished line: left to the tail
                self._freeze(data[:cut + 1])
            return self.chunks + ([tail] if (tail := self._tail_chunk(st)) else [])

    def _freeze(self, data: bytes) -> None:
        carry = self.chunks[-1].carry_out if self.chunks else None
        chunk, first = _summarize(data, self.indexed, carry)
        if self.lead is None and first is not None:
            self.lead = first
        self.chunks.append(chunk)
        self.indexed = chunk.end

    def _tail_chunk(self, st: os.stat_result) -> Chunk | None:
        settled = time.time() - st.st_mtime >= SETTLE
        key = (st.st_size, st.st_mtime_ns, self.indexed, settled)
        if self._tail is not None and self._tail[0] == key:
            return self._tail[1]
        data = self._read(self.indexed, st.st_size - self.indexed)
        if not settled:
            data = data[:data.rfind(b"\n") + 1]
        chunk: Chunk | None = None
        if data:
            carry = self.chunks[-1].carry_out if self.chunks else None
            chunk, first = _summarize(data, self.indexed, carry)
            if self.lead is None and first is not None:
                self.lead = first
        self._tail = (key, chunk)
        return chunk

    def lead_ms(self) -> int:
        return self.lead if self.lead is not None else self.mtime_ms

    def span(self, chunk: Chunk) -> tuple[int, int]:
        """The chunk's time range, counting the timestamp carried into it."""
        carry = chunk.carry_in if chunk.carry_in is not None else self.lead_ms()
        lo = carry if chunk.lo is None else min(chunk.lo, carry)
        hi = carry if chunk.hi is None else max(chunk.hi, carry)
        return lo, hi

    def events_of(self, chunk: Chunk) -> list[Event]:
        """Every event of ``chunk``, in file order."""
        data = self._read(chunk.start, chunk.end - chunk.start)
        current = chunk.carry_in if chunk.carry_in is not None else self.lead_ms()
        out: list[Event] = []
        offset = chunk.start
        for line in data.split(b"\n"):
            end = offset + len(line) + 1
            text = line.rstrip(b"\r")
            if text:
                stamp = _line_stamp(text)
                if stamp is not None:
                    current = stamp
                message = text[:MAX_MESSAGE].decode("utf-8", "replace")
                out.append(Event(current, offset, min(end, chunk.end), message))
            offset = end
        return out


@dataclass
class Budget:
    """Bytes a call may still read; once spent, scans stop where they are and hand back a token."""

    left: int = field(default_factory=lambda: SCAN_BUDGET)

    def spend(self, n: int) -> None:
        self.left -= n

    @property
    def spent(self) -> bool:
        return self.left <= 0


Window = tuple[int | None, int | None, bool]  # start (inclusive), end, end inclusive?


def _in_window(ts: int, window: Window) -> bool:
    start, end, inclusive = window
    if start is not None and ts < start:
        return False
    if end is not None and (ts > end if inclusive else ts >= end):
        return False
    return True


def _chunk_in_window(lf: LogFile, chunk: Chunk, window: Window) -> bool:
    lo, hi = lf.span(chunk)
    start, end, inclusive = window
    if start is not None and hi < start:
        return False
    if end is not None and (lo > end if inclusive else lo >= end):
        return False
    return True


class Paused(Exception):
    """A forward scan ran out of budget before ``offset``."""

    def __init__(self, offset: int) -> None:
        self.offset = offset


def forward(lf: LogFile, chunks: list[Chunk], start: int, window: Window, budget: Budget,
            match: Callable[[str], bool] | None = None) -> Iterator[Event]:
    """Events at or after byte ``start`` in the window (and matching), in file order. Raises
    ``Paused(offset)`` when the budget is spent before the end."""
    for chunk in chunks:
        if chunk.end <= start or not _chunk_in_window(lf, chunk, window):
            continue
        if budget.spent:
            raise Paused(max(start, chunk.start))
        before = lf.bytes_read
        events = lf.events_of(chunk)
        budget.spend(lf.bytes_read - before)
        for event in events:
            if event.offset >= start and _in_window(event.timestamp, window) and (
                    match is None or match(event.message)):
                yield event


def backward(lf: LogFile, chunks: list[Chunk], end: int, window: Window, budget: Budget) -> Iterator[Event]:
    """Events before byte ``end`` in the window, last first."""
    for chunk in reversed(chunks):
        if chunk.start >= end or not _chunk_in_window(lf, chunk, window):
            continue
        if budget.spent:
            return
        before = lf.bytes_read
        events = lf.events_of(chunk)
        budget.spend(lf.bytes_read - before)
        for event in reversed(events):
            if event.offset < end and _in_window(event.timestamp, window):
                yield event
