"""The records of a transform job's input: JSONPath filters (``DataProcessing``'s ``InputFilter`` and
``OutputFilter``, a subset, see :func:`parse_path`), ``JoinSource`` Input, the model's answer split
into one output per record, and the input stream cut into :class:`Batch` requests by ``SplitType``
and ``BatchStrategy`` (the answers are assembled by ``AssembleWith`` in :mod:`.objects`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mainsail.jobs.storage import MB, JobFailure

CHUNK = 1 << 20
_BLANK = re.compile(rb"(?m)^[ \t\r]*(?:\n|\Z)")

# -- JSONPath subset -------------------------------------------------------------------------------

_SEGMENT = re.compile(
    r"\.(?P<name>[A-Za-z_][\w-]*)"
    r"|\[\s*(?P<star>\*)\s*\]"
    r"|\[\s*(?P<keys>(?:'[^']*'|\"[^\"]*\")(?:\s*,\s*(?:'[^']*'|\"[^\"]*\"))*)\s*\]"
    r"|\[\s*(?P<start>-?\d+)?\s*:\s*(?P<stop>-?\d+)?\s*\]"
    r"|\[\s*(?P<index>-?\d+(?:\s*,\s*-?\d+)*)\s*\]"
)
Segment = tuple[str, Any]


def parse_path(expr: str) -> list[Segment]:
    """The segments of a JSONPath in the subset SageMaker documents for DataProcessing: ``$``,
    ``$.a.b``, ``$['a','b']``, ``$[1]``, ``$[0,2]``, ``$[1:]``, ``$[:-1]``, ``$[*]`` and chains of
    them (``$.features[1:]``). ValueError when ``expr`` is outside it."""
    text = expr.strip()
    if not text.startswith("$"):
        raise ValueError(f"JSONPath {expr!r} must start with $")
    pos = 1
    segments: list[Segment] = []
    while pos < len(text):
        match = _SEGMENT.match(text, pos)
        if match is None:
            raise ValueError(f"unsupported JSONPath {expr!r} at {text[pos:]!r}")
        if match.group("name"):
            segments.append(("keys", [match.group("name")]))
        elif match.group("star"):
            segments.append(("all", None))
        elif match.group("keys"):
            names = [k.strip()[1:-1] for k in re.findall(r"'[^']*'|\"[^\"]*\"", match.group("keys"))]
            segments.append(("keys", names))
        elif match.group("index"):
            segments.append(("index", [int(i) for i in match.group("index").split(",")]))
        else:
            start, stop = match.group("start"), match.group("stop")
            segments.append(("slice", (int(start) if start else None, int(stop) if stop else None)))
        pos = match.end()
    return segments


def apply_path(value: Any, segments: list[Segment]) -> Any:
    """Select from ``value`` (a JSON value, or a CSV row as a list of fields) by ``segments``."""
    for kind, arg in segments:
        if kind == "all":
            continue
        if kind == "keys":
            if not isinstance(value, dict):
                raise ValueError(f"cannot select {arg} from a {type(value).__name__}")
            if len(arg) == 1:
                if arg[0] not in value:
                    raise ValueError(f"no member {arg[0]!r}")
                value = value[arg[0]]
            else:
                value = {k: value[k] for k in arg if k in value}
        elif kind == "slice":
            if not isinstance(value, list):
                raise ValueError(f"cannot slice a {type(value).__name__}")
            value = value[arg[0]:arg[1]]
        else:
            if not isinstance(value, list):
                raise ValueError(f"cannot index a {type(value).__name__}")
            try:
                picked = [value[i] for i in arg]
            except IndexError:
                raise ValueError(f"index {arg} out of range for {len(value)} items") from None
            value = picked[0] if len(arg) == 1 else picked
    return value


def _is_json(record: bytes, content_type: str | None) -> bool:
    if content_type and "json" in content_type:
        return True
    if content_type and "csv" in content_type:
        return False
    return record.lstrip()[:1] in (b"{", b"[")


def _csv_fields(record: bytes) -> list[str]:
    return next(csv.reader([record.decode("utf-8")]), [])


def _csv_row(value: Any) -> bytes:
    if not isinstance(value, list):
        return str(value).encode()
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(value)
    return out.getvalue().encode()


def filter_record(record: bytes, segments: list[Segment], content_type: str | None) -> bytes:
    """``record`` (one CSV or JSON line) selected by the parsed JSONPath ``segments``."""
    if not segments:
        return record
    if _is_json(record, content_type):
        return json.dumps(apply_path(json.loads(record), segments)).encode()
    return _csv_row(apply_path(_csv_fields(record), segments))


def join_record(source: bytes, output: bytes, content_type: str | None) -> bytes:
    """JoinSource Input: a JSON object gets the output under ``SageMakerOutput``, a JSON array gets
    it appended, a CSV row gets the output's columns appended."""
    if _is_json(source, content_type):
        parsed = json.loads(source)
        try:
            result: Any = json.loads(output)
        except ValueError:
            result = output.decode("utf-8", "replace")
        if isinstance(parsed, dict):
            return json.dumps({**parsed, "SageMakerOutput": result}).encode()
        if isinstance(parsed, list):
            return json.dumps(parsed + (result if isinstance(result, list) else [result])).encode()
        return json.dumps([parsed, result]).encode()
    return source.rstrip(b"\r\n") + b"," + output.strip()


def split_output(body: bytes, count: int) -> list[bytes]:
    """One output per input record: a JSON array of ``count`` items, or ``count`` lines."""
    stripped = body.strip()
    if stripped[:1] == b"[":
        try:
            items = json.loads(stripped)
        except ValueError:
            items = None
        if isinstance(items, list) and len(items) == count:
            return [json.dumps(item).encode() if not isinstance(item, str) else item.encode()
                    for item in items]
    lines = [line for line in stripped.split(b"\n") if line.strip()] if stripped else []
    if len(lines) == count:
        return [line.rstrip(b"\r") for line in lines]
    if count == 1:
        return [stripped]
    raise ValueError(f"the model answered {len(lines)} lines for {count} records")


# -- the input, cut into requests -----------------------------------------------------------------


def _chunks(fh: Any) -> Iterator[bytes]:
    while True:
        data = fh.read(CHUNK)
        if not data:
            return
        yield data


def split_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of the non-blank lines of a byte stream (``\\r\\n`` too)."""
    rest = b""
    number = 0
    for chunk in chunks:
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            number += 1
            line = part[:-1] if part.endswith(b"\r") else part
            if line.strip():
                yield number, line
    if rest.strip():
        yield number + 1, rest[:-1] if rest.endswith(b"\r") else rest


@dataclass
class Batch:
    """One request: its records (as read, and as sent) and the lines they came from."""

    first_line: int
    last_line: int
    records: list[bytes] = field(default_factory=list)
    size: int = 0
    whole: bool = False
    payload: bytes | None = None  # packed lines, sent as they are (no per-record work)
    count: int = 0

    @property
    def n_records(self) -> int:
        return self.count if self.payload is not None else len(self.records)

    def where(self, uri: str) -> str:
        if self.whole:
            return uri
        if self.first_line == self.last_line:
            return f"{uri}, line {self.first_line}"
        return f"{uri}, lines {self.first_line}-{self.last_line}"



def batches(uri: str, stream: Any, *, limit: int, split: bool, single: bool,
            per_record: bool) -> Iterator[Batch]:
    """The requests of one input ``uri`` read from ``stream``: the whole object (``split`` false:
    SplitType None), or its lines one each (``single``: SingleRecord) or packed into requests of at
    most ``limit`` bytes (MultiRecord; cut from the stream as they are unless ``per_record`` work
    needs the records one by one)."""
    if not split:
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise JobFailure(f"{uri} is larger than MaxPayloadInMB ({limit // MB} MB); "
                             "use SplitType Line or a larger MaxPayloadInMB.")
        yield Batch(1, 1, [data], len(data), whole=True)
        return
    if not single and not per_record:
        yield from packed(uri, stream, limit)
        return
    batch: Batch | None = None
    for number, line in split_lines(_chunks(stream)):
        if len(line) + 1 > limit:
            raise JobFailure(f"The record at {uri}, line {number} is {len(line)} bytes, more "
                             f"than MaxPayloadInMB ({limit // MB} MB).")
        if batch is not None and (single or batch.size + len(line) + 1 > limit):
            yield batch
            batch = None
        if batch is None:
            batch = Batch(number, number)
        batch.records.append(line)
        batch.size += len(line) + 1
        batch.last_line = number
    if batch is not None:
        yield batch


def packed(uri: str, stream: Any, limit: int) -> Iterator[Batch]:
    """MultiRecord with nothing to do per record: whole lines cut from the stream up to the
    payload limit, never split into per-line objects (blank lines are dropped)."""
    buf = bytearray()
    line = 1
    eof = False
    while True:
        while len(buf) <= limit and not eof:
            data = stream.read(CHUNK)
            if data:
                buf += data
            else:
                eof = True
        if eof and len(buf) <= limit:
            cut = len(buf)
        else:
            cut = buf.rfind(b"\n", 0, limit) + 1
            if cut == 0:
                raise JobFailure(f"The record at {uri}, line {line} is more than MaxPayloadInMB "
                                 f"({limit // MB} MB).")
        with memoryview(buf) as view:
            piece = bytes(view[:cut])
        del buf[:cut]
        lines = piece.count(b"\n") + (0 if piece.endswith(b"\n") or not piece else 1)
        if b"\n\n" in piece or b"\n\r\n" in piece or piece[:1] in (b"\n", b"\r") or b"\n \n" in piece:
            piece = _BLANK.sub(b"", piece)
        if piece and not piece.endswith(b"\n"):
            piece += b"\n"
        if piece:
            yield Batch(line, line + lines - 1, payload=piece, count=piece.count(b"\n"), size=len(piece))
        line += lines
        if eof and not buf:
            return
