"""``application/jsonlines`` (and its aliases): one JSON value a line <-> ``pandas.DataFrame``."""

from __future__ import annotations

import json as _json
import sys
from collections.abc import Iterator
from typing import Any

from mainsail.codecs.base import MediaType, decode_text
from mainsail.codecs.json import bad_json, dumps, frame_records, loads_value, records_to_frame
from mainsail.errors import BadRequest


class JsonLinesCodec:
    """JSON Lines: one JSON value per non-blank line.

    ``decode``: lines of objects are rows (union of keys, missing values NaN); lines of arrays are
    rows with columns ``0..n-1`` (all of one length); lines of scalars are one column. A line that is
    not JSON, or that mixes kinds with the first line, is a ``BadRequest`` naming the line number; an
    empty body is ``BadRequest("empty body")``. The ``charset`` parameter is honoured.

    ``encode``: one UTF-8 JSON value per line, each ending in ``"\\n"``: a ``DataFrame``'s rows as
    objects, an array's rows (2-D rows as lists), a list's items; anything else is a single line.
    """

    media_types: tuple[str, ...] = (
        "application/jsonlines",
        "application/jsonl",
        "application/x-jsonlines",
        "application/json-lines",
        "application/x-ndjson",
        "application/ndjson",
    )

    def decode(self, body: bytes, media_type: MediaType) -> Any:
        text = decode_text(body, media_type)
        values: list[Any] = []
        labels: list[str] = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                values.append(loads_value(line))
            except _json.JSONDecodeError as exc:
                raise bad_json(exc, line=number) from None
            except ValueError as exc:
                raise BadRequest(f"invalid JSON at line {number}: {exc}") from None
            labels.append(f"line {number}")
        if not values:
            raise BadRequest("empty body")
        return records_to_frame(values, "line", labels=labels)

    def encode(self, obj: Any, media_type: MediaType) -> bytes:
        return b"".join(dumps(value) + b"\n" for value in _values_of(obj))


def _values_of(obj: Any) -> Iterator[Any]:
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(obj, pd.DataFrame):
            yield from frame_records(obj)
            return
        if isinstance(obj, (pd.Series, pd.Index)):
            yield from obj.tolist()
            return
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray) and obj.ndim > 0:
        yield from obj  # rows (or numpy scalars) keep their own precision through orjson
        return
    if isinstance(obj, (list, tuple)):
        yield from obj
        return
    yield obj
