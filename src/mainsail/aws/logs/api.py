"""CloudWatch Logs (AWS JSON 1.1, ``X-Amz-Target: Logs_20140328.<Op>``) over the instances' log files.

The local backend writes each instance's stdout and stderr to
``$MAINSAIL_HOME/logs/<endpoint>/<variant>-<index>-<port>.log``. Here each endpoint's directory is
the log group ``/aws/sagemaker/Endpoints/<endpoint>`` and each file a log stream
``<variant>/i-<index>-<port>`` (SageMaker names them ``AllTraffic/i-0123...``), one event per
non-empty line. Lines that start with a ``logging`` timestamp (``2026-11-23 14:42:15,949 ...``, local
time) carry it; other lines (tracebacks, ``print`` output) carry the previous line's; lines before the
first timestamped one carry the first timestamp in the file (the file's last-modified time when it
has none). Files of instances that have stopped stay readable, as logs outlive instances on AWS.

Reading is bounded: each file is indexed once into chunks of about ``CHUNK`` bytes (offsets, time
range and the timestamp carried into each), incrementally as it grows; a call reads only the chunks
its tokens and time window point at, at most ``SCAN_BUDGET`` bytes, and answers at most 1 MB.
Tokens hold byte offsets.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import heapq
import json
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mainsail.aws.errors import ControlError, SerializationException, UnknownOperationException
from mainsail.aws.identity import ACCOUNT

TARGET_PREFIX = "Logs_20140328."
GROUP_PREFIX = "/aws/sagemaker/Endpoints/"
#: Bytes per index chunk (chunks end at a line end, so one may be longer).
CHUNK = 256 * 1024
#: Bytes of log one call reads at most before it answers with what it found and a token.
SCAN_BUDGET = 64 * 1024 * 1024
#: Largest response (events' messages + 26 bytes each), as CloudWatch Logs.
RESPONSE_BYTES = 1024 * 1024
MAX_MESSAGE = 256 * 1024
DEFAULT_LIMIT = 10_000
#: A last line without a newline counts once the file has been left alone this long (seconds).
SETTLE = 2.0

_ENDPOINT_RE = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_FILE_RE = re.compile(r"([a-zA-Z0-9](?:-*[a-zA-Z0-9])*)-(\d+)-(\d+)\.log")
_STREAM_RE = re.compile(r"([a-zA-Z0-9](?:-*[a-zA-Z0-9])*)/i-(\d+)-(\d+)")
_STAMP_RE = re.compile(rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})[ \n]", re.M)
_TOKEN_RE = re.compile(r"([fb])/(\d{1,56})")


class LogsError(ControlError):
    """A CloudWatch Logs error: JSON 1.1 ``{"__type": code, "message": text}`` (lower-case key)."""

    def to_aws(self) -> dict[str, str]:
        return {"__type": self.code, "message": self.message}


class InvalidParameterException(LogsError):
    code = "InvalidParameterException"


class ResourceNotFoundException(LogsError):
    code = "ResourceNotFoundException"


def _group_missing() -> ResourceNotFoundException:
    return ResourceNotFoundException("The specified log group does not exist.")


def _stream_missing() -> ResourceNotFoundException:
    return ResourceNotFoundException("The specified log stream does not exist.")


# -- the reader ----------------------------------------------------------------------------------


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


# -- filter patterns -----------------------------------------------------------------------------


def parse_pattern(pattern: str) -> Callable[[str], bool] | None:
    """A matcher for CloudWatch's unstructured filter pattern syntax: terms (all must occur, case
    sensitive), ``"quoted phrases"``, ``?term ?term`` (at least one), ``-term`` (must not occur).
    ``None`` for an empty pattern. JSON (``{...}``), space-delimited (``[...]``) and regex
    (``%...%``) patterns are refused with InvalidParameterException."""
    text = pattern.strip()
    if not text:
        return None
    if text[0] in "{[%":
        raise InvalidParameterException(
            f"Invalid filter pattern: {pattern!r} (mainsail supports terms, \"quoted phrases\", ?any and -not)")
    required: list[str] = []
    anyof: list[str] = []
    excluded: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        prefix = ""
        if text[i] in "?-" and i + 1 < n and not text[i + 1].isspace():
            prefix, i = text[i], i + 1
        if text[i] == '"':
            j, term = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                term.append(text[j])
                j += 1
            if j >= n:
                raise InvalidParameterException(f"Invalid filter pattern: unbalanced quote in {pattern!r}")
            word, i = "".join(term), j + 1
            if i < n and not text[i].isspace():
                raise InvalidParameterException(f"Invalid filter pattern: {pattern!r}")
        else:
            j = i
            while j < n and not text[j].isspace():
                if text[j] in '"{}[]':
                    raise InvalidParameterException(f"Invalid character(s) in term in filter pattern {pattern!r}")
                j += 1
            word, i = text[i:j], j
        if not word:
            continue
        {"": required, "?": anyof, "-": excluded}[prefix].append(word)

    def match(message: str) -> bool:
        return (all(t in message for t in required) and not any(t in message for t in excluded)
                and (not anyof or any(t in message for t in anyof)))

    return match


# -- tokens ----------------------------------------------------------------------------------------


def _encode(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()


def _decode(token: Any) -> dict[str, Any]:
    try:
        state = json.loads(base64.urlsafe_b64decode(str(token).encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidParameterException("The specified nextToken is invalid.") from None
    if not isinstance(state, dict):
        raise InvalidParameterException("The specified nextToken is invalid.")
    return state


def _event_id(stream: str, event: Event) -> str:
    return f"{event.timestamp:015d}{zlib.crc32(stream.encode()):010d}{event.offset:020d}"


# -- the operations --------------------------------------------------------------------------------


@dataclass
class Stream:
    name: str
    file: LogFile


@dataclass
class LogsApi:
    """The CloudWatch Logs operations over ``<home>/logs``; keeps each file's index between calls."""

    home: Path
    _files: dict[Path, LogFile] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> Path:
        return self.home / "logs"

    def call(self, target: str, raw: bytes, region: str) -> dict[str, Any]:
        """Run ``Logs_20140328.<Op>`` on the JSON body ``raw``."""
        op = {"FilterLogEvents": self.filter_log_events, "GetLogEvents": self.get_log_events,
              "DescribeLogStreams": self.describe_log_streams,
              "DescribeLogGroups": self.describe_log_groups}.get(target[len(TARGET_PREFIX):])
        if op is None:
            raise UnknownOperationException(target)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise SerializationException("Request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise SerializationException("Request body must be a JSON object.")
        return op(body, region)

    # -- groups and streams

    def _file(self, path: Path) -> LogFile:
        with self._lock:
            lf = self._files.get(path)
            if lf is None:
                lf = self._files[path] = LogFile(path)
            return lf

    def _group_dir(self, body: dict[str, Any]) -> tuple[str, Path]:
        name, ident = body.get("logGroupName"), body.get("logGroupIdentifier")
        if name is not None and ident is not None:
            raise InvalidParameterException(
                "LogGroup name and LogGroup ARN are mutually exclusive parameters.")
        if ident is not None:
            name = re.sub(r"^arn:aws[a-z-]*:logs:[^:]*:[^:]*:log-group:", "", str(ident))
            name = name[:-2] if name.endswith(":*") else name
        if not isinstance(name, str) or not name:
            raise InvalidParameterException("Should provide either a LogGroup name or a LogGroup ARN.")
        endpoint = name[len(GROUP_PREFIX):] if name.startswith(GROUP_PREFIX) else ""
        directory = self.root / endpoint
        if not _ENDPOINT_RE.fullmatch(endpoint) or not directory.is_dir():
            raise _group_missing()
        return name, directory

    def _streams(self, directory: Path) -> list[Stream]:
        streams = []
        for path in directory.iterdir():
            m = _FILE_RE.fullmatch(path.name)
            if m and path.is_file():
                streams.append(Stream(f"{m.group(1)}/i-{m.group(2)}-{m.group(3)}", self._file(path)))
        streams.sort(key=lambda s: s.name)
        return streams

    def _stream(self, directory: Path, name: Any) -> Stream:
        m = _STREAM_RE.fullmatch(name) if isinstance(name, str) else None
        path = directory / f"{m.group(1)}-{m.group(2)}-{m.group(3)}.log" if m else None
        if path is None or not path.is_file():
            raise _stream_missing()
        return Stream(str(name), self._file(path))

    # -- argument checks

    @staticmethod
    def _limit(body: dict[str, Any], default: int, maximum: int) -> int:
        limit = body.get("limit")
        if limit is None:
            return default
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= maximum:
            raise InvalidParameterException(
                f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: "
                f"Member must have value less than or equal to {maximum}")
        return limit

    @staticmethod
    def _time(body: dict[str, Any], key: str) -> int | None:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidParameterException(f"Invalid {key}: {value!r}")
        return value

    def _window(self, body: dict[str, Any], *, end_inclusive: bool) -> Window:
        start, end = self._time(body, "startTime"), self._time(body, "endTime")
        if start is not None and end is not None and start > end:
            raise InvalidParameterException("startTime must be less than or equal to endTime")
        return start, end, end_inclusive

    # -- operations

    def describe_log_groups(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        limit = self._limit(body, 50, 50)
        prefix = body.get("logGroupNamePrefix")
        pattern = body.get("logGroupNamePattern")
        if prefix is not None and pattern is not None:
            raise InvalidParameterException(
                "LogGroup name prefix and LogGroup name pattern are mutually exclusive parameters.")
        groups = []
        for directory in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not directory.is_dir() or not _ENDPOINT_RE.fullmatch(directory.name):
                continue
            name = GROUP_PREFIX + directory.name
            if prefix is not None and not name.startswith(str(prefix)):
                continue
            if pattern is not None and str(pattern).lower() not in name.lower():
                continue
            groups.append((name, directory))
        start = self._offset_token(body)
        page = groups[start:start + limit]
        out: dict[str, Any] = {"logGroups": []}
        for name, directory in page:
            files = [p for p in directory.iterdir() if p.is_file()]
            arn = f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{name}"
            out["logGroups"].append({
                "logGroupName": name,
                "creationTime": int(min([directory.stat().st_mtime] +
                                        [p.stat().st_mtime for p in files]) * 1000),
                "metricFilterCount": 0, "arn": arn + ":*", "logGroupArn": arn,
                "storedBytes": sum(p.stat().st_size for p in files), "logGroupClass": "STANDARD",
            })
        if start + limit < len(groups):
            out["nextToken"] = _encode({"i": start + limit})
        return out

    @staticmethod
    def _offset_token(body: dict[str, Any]) -> int:
        token = body.get("nextToken")
        if token is None:
            return 0
        index = _decode(token).get("i")
        if not isinstance(index, int) or index < 0:
            raise InvalidParameterException("The specified nextToken is invalid.")
        return index

    def describe_log_streams(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        group, directory = self._group_dir(body)
        limit = self._limit(body, 50, 50)
        order = body.get("orderBy", "LogStreamName")
        if order not in ("LogStreamName", "LastEventTime"):
            raise InvalidParameterException(
                f"1 validation error detected: Value '{order}' at 'orderBy' failed to satisfy constraint: "
                "Member must satisfy enum value set: [LastEventTime, LogStreamName]")
        prefix = body.get("logStreamNamePrefix")
        if prefix is not None and order == "LastEventTime":
            raise InvalidParameterException("Cannot order by LastEventTime with a logStreamNamePrefix.")
        streams = [s for s in self._streams(directory) if prefix is None or s.name.startswith(str(prefix))]
        described = []
        for stream in streams:
            chunks = stream.file.refresh()
            item: dict[str, Any] = {
                "logStreamName": stream.name,
                "creationTime": stream.file.lead_ms(),
                "arn": f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{group}:log-stream:{stream.name}",
                "storedBytes": stream.file.size,
                "lastIngestionTime": stream.file.mtime_ms,
            }
            if chunks:
                item["firstEventTimestamp"] = stream.file.lead_ms()
                last = chunks[-1].carry_out
                item["lastEventTimestamp"] = last if last is not None else stream.file.lead_ms()
            described.append(item)
        if order == "LastEventTime":
            described.sort(key=lambda d: (d.get("lastEventTimestamp", 0), d["logStreamName"]))
        if body.get("descending"):
            described.reverse()
        start = self._offset_token(body)
        out: dict[str, Any] = {"logStreams": described[start:start + limit]}
        if start + limit < len(described):
            out["nextToken"] = _encode({"i": start + limit})
        return out

    def get_log_events(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        _, directory = self._group_dir(body)
        stream = self._stream(directory, body.get("logStreamName"))
        limit = self._limit(body, DEFAULT_LIMIT, DEFAULT_LIMIT)
        window = self._window(body, end_inclusive=False)
        lf = stream.file
        chunks = lf.refresh()
        size = chunks[-1].end if chunks else 0
        token = body.get("nextToken")
        if token is not None:
            m = _TOKEN_RE.fullmatch(str(token))
            if m is None:
                raise InvalidParameterException("The specified nextToken is invalid.")
            direction, position = m.group(1), min(int(m.group(2)), size)
        else:
            direction = "f" if body.get("startFromHead") else "b"
            position = 0 if direction == "f" else size
        budget, used = Budget(), 0
        events: list[Event] = []
        if direction == "f":
            try:
                for event in forward(lf, chunks, position, window, budget):
                    used += len(event.message.encode()) + 26
                    if len(events) >= limit or (events and used > RESPONSE_BYTES):
                        break
                    events.append(event)
            except Paused:
                pass
        else:
            for event in backward(lf, chunks, position, window, budget):
                used += len(event.message.encode()) + 26
                if len(events) >= limit or (events and used > RESPONSE_BYTES):
                    break
                events.append(event)
            events.reverse()
        # as CloudWatch: at either end of the stream the token passed in comes back unchanged
        after = events[-1].end if events else position
        before = events[0].offset if events else position
        return {
            "events": [{"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.timestamp}
                       for e in events],
            "nextForwardToken": f"f/{after:056d}",
            "nextBackwardToken": f"b/{before:056d}",
        }

    def filter_log_events(self, body: dict[str, Any], region: str) -> dict[str, Any]:
        _, directory = self._group_dir(body)
        names, prefix = body.get("logStreamNames"), body.get("logStreamNamePrefix")
        if names is not None and prefix is not None:
            raise InvalidParameterException(
                "logStreamNames and logStreamNamePrefix are mutually exclusive parameters.")
        streams = self._streams(directory)
        if names is not None:
            if not isinstance(names, list) or not 1 <= len(names) <= 100:
                raise InvalidParameterException("logStreamNames must be a list of 1 to 100 stream names.")
            wanted = {str(n) for n in names}
            streams = [s for s in streams if s.name in wanted]
        elif prefix is not None:
            streams = [s for s in streams if s.name.startswith(str(prefix))]
        limit = self._limit(body, DEFAULT_LIMIT, DEFAULT_LIMIT)
        window = self._window(body, end_inclusive=True)
        pattern = body.get("filterPattern")
        match = parse_pattern(pattern if isinstance(pattern, str) else "")
        positions: dict[str, int] = {}
        if body.get("nextToken") is not None:
            state = _decode(body["nextToken"]).get("p")
            if not isinstance(state, dict) or not all(isinstance(v, int) for v in state.values()):
                raise InvalidParameterException("The specified nextToken is invalid.")
            positions = state
        budget = Budget()
        heap: list[tuple[int, str, int, Event, Iterator[Event]]] = []
        cursor: dict[str, int] = {}  # next unread byte per stream; -1 when searched completely
        paused = False

        def pull(name: str, events: Iterator[Event]) -> None:
            nonlocal paused
            try:
                event = next(events, None)
            except Paused as exc:
                cursor[name], paused = exc.offset, True
                return
            if event is None:
                cursor[name] = -1
            else:
                cursor[name] = event.offset
                heapq.heappush(heap, (event.timestamp, name, event.offset, event, events))

        for stream in streams:
            start = positions.get(stream.name, 0) if positions else 0
            if start < 0:
                cursor[stream.name] = -1
                continue
            chunks = stream.file.refresh()
            pull(stream.name, forward(stream.file, chunks, start, window, budget, match))
        out: list[dict[str, Any]] = []
        used = 0
        while heap and not paused and len(out) < limit:
            ts, name, _, event, events = heapq.heappop(heap)
            used += len(event.message.encode()) + 26
            if out and used > RESPONSE_BYTES:
                heapq.heappush(heap, (ts, name, event.offset, event, events))
                break
            out.append({"logStreamName": name, "timestamp": ts, "message": event.message,
                        "ingestionTime": ts, "eventId": _event_id(name, event)})
            pull(name, events)
        result: dict[str, Any] = {
            "events": out,
            "searchedLogStreams": [{"logStreamName": s.name, "searchedCompletely": cursor.get(s.name) == -1}
                                   for s in streams],
        }
        if any(v >= 0 for v in cursor.values()):
            result["nextToken"] = _encode({"p": cursor})
        return result
