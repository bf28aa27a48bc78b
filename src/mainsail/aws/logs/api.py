"""CloudWatch Logs (AWS JSON 1.1, ``X-Amz-Target: Logs_20140328.<Op>``) over the instances' log files.

The local backend writes each instance's stdout and stderr to
``$MAINSAIL_HOME/logs/<endpoint>/<variant>-<index>-<port>.log``. Here each endpoint's directory is
the log group ``/aws/sagemaker/Endpoints/<endpoint>`` and each file a log stream
``<variant>/i-<index>-<port>`` (SageMaker names them ``AllTraffic/i-0123...``), one event per
non-empty line. Lines that start with a ``logging`` timestamp (``2026-11-23 14:42:15,949 ...``, local
time) carry it; other lines (tracebacks, ``print`` output) carry the previous line's; lines before the
first timestamped one carry the first timestamp in the file (the file's last-modified time when it
has none). Files of instances that have stopped stay readable, as logs outlive instances on AWS.

Reading is bounded (see :mod:`mainsail.aws.logs.files`): a call reads only the chunks its tokens and
time window point at, and answers at most 1 MB. Tokens hold byte offsets. Filter patterns are parsed by
:mod:`mainsail.aws.logs.patterns`.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mainsail.aws.errors import UnknownOperationException
from mainsail.aws.identity import ACCOUNT
from mainsail.aws.logs.errors import InvalidParameterException, ResourceNotFoundException
from mainsail.aws.logs.files import Budget, Event, LogFile, Paused, Window, backward, forward
from mainsail.aws.logs.patterns import parse_pattern
from mainsail.aws.protocol import json_body
from mainsail.aws.shapes import InputCheck

TARGET_PREFIX = "Logs_20140328."
#: every input checked against botocore's model of CloudWatch Logs before its operation runs
INPUTS = InputCheck("logs", error=InvalidParameterException)
GROUP_PREFIX = "/aws/sagemaker/Endpoints/"
#: Largest response (events' messages + 26 bytes each), as CloudWatch Logs.
RESPONSE_BYTES = 1024 * 1024
DEFAULT_LIMIT = 10_000

_ENDPOINT_RE = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_FILE_RE = re.compile(r"([a-zA-Z0-9](?:-*[a-zA-Z0-9])*)-(\d+)-(\d+)\.log")
_STREAM_RE = re.compile(r"([a-zA-Z0-9](?:-*[a-zA-Z0-9])*)/i-(\d+)-(\d+)")
_TOKEN_RE = re.compile(r"([fb])/(\d{1,56})")


def _group_missing() -> ResourceNotFoundException:
    return ResourceNotFoundException("The specified log group does not exist.")


def _stream_missing() -> ResourceNotFoundException:
    return ResourceNotFoundException("The specified log stream does not exist.")


# -- tokens ----------------------------------------------------------------------------------------


def _encode(state: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode()


def _decode(token: Any) -> dict[str, Any]:
    try:
        state = json.loads(base64.urlsafe_b64decode(str(token).encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
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
        name = target[len(TARGET_PREFIX):]
        method = self.OPERATIONS.get(name)
        if method is None:
            raise UnknownOperationException(target)
        body = json_body(raw)
        INPUTS.check(name, body)
        result: dict[str, Any] = getattr(self, method)(body, region)
        return result

    #: the operations served: their names, and the methods that answer them
    OPERATIONS: ClassVar[dict[str, str]] = {
        "FilterLogEvents": "filter_log_events", "GetLogEvents": "get_log_events",
        "DescribeLogStreams": "describe_log_streams", "DescribeLogGroups": "describe_log_groups"}

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
