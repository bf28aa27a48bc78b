"""``application/json``: JSON documents <-> ``pandas.DataFrame``; also the JSON helpers JSON Lines uses."""

from __future__ import annotations

import json as _json
import re
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from mainsail.codecs.base import MediaType, decode_text
from mainsail.errors import BadRequest, ModelError

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
# orjson silently turns integers beyond 64 bits into floats; bodies with such long digit runs go
# to the stdlib parser, which keeps them exact (a long digit run inside a string costs only speed).
_LONG_DIGITS = re.compile(rb"\d{19,}")
# orjson turns integers outside the 64-bit range (from -2**63-1, 19 digits) into floats; the stdlib
# keeps them exact, so bodies with such digit runs take its path.
_LONG_DIGITS_TEXT = re.compile(r"\d{19,}", re.ASCII)
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_UTF8_NAMES = {"utf-8", "utf8", "utf_8"}


class JsonCodec:
    """JSON bodies as ``pandas.DataFrame`` rows.

    ``decode``: an object is one row; a list of objects is one row each (union of keys, missing
    values NaN); ``{"instances": [...]}`` reads as its list; a list of lists is one row each, with
    columns ``0..n-1`` (all of one length); a list of scalars is ONE row with columns ``0..n-1``; a
    lone scalar is a 1x1 frame. Several JSON values separated by whitespace (one object a line) are
    one row each. NaN/Infinity literals and integers beyond 64 bits are accepted. Malformed JSON is a
    ``BadRequest`` naming the line and column; an empty body is ``BadRequest("empty body")``.

    ``encode``: JSON bytes (always UTF-8), with numpy arrays and scalars, ``DataFrame`` (a list of
    records), ``Series``/``Index`` (lists) and datetimes supported; NaN and infinities become null.
    """

    media_types: tuple[str, ...] = ("application/json",)

    def decode(self, body: bytes, media_type: MediaType) -> Any:
        if not body.strip():
            raise BadRequest("empty body")
        if media_type.charset.lower() in _UTF8_NAMES and not _LONG_DIGITS.search(body):
            try:
                return frame_from_document(orjson.loads(body))
            except orjson.JSONDecodeError:
                pass  # the stdlib below parses what orjson refuses, or explains where it breaks
        text = decode_text(body, media_type)
        if not text.strip():
            raise BadRequest("empty body")
        try:
            return frame_from_document(_stdlib_loads(text))
        except _json.JSONDecodeError as exc:
            if exc.msg != "Extra data":
                raise bad_json(exc) from None
        except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits(), deep nesting
            raise BadRequest(f"invalid JSON: {exc}") from None
        return records_to_frame(_loads_stream(text), "value")

    def encode(self, obj: Any, media_type: MediaType) -> bytes:
        return dumps(obj)


def bad_json(exc: _json.JSONDecodeError, line: int | None = None) -> BadRequest:
    """A ``BadRequest`` naming where ``exc`` happened (``line`` overrides its line number)."""
    return BadRequest(f"invalid JSON at line {line or exc.lineno}, column {exc.colno}: {exc.msg}")


def loads_value(text: str) -> Any:
    """One JSON value: orjson when it can, else the stdlib. Raises ``json.JSONDecodeError``/``ValueError``."""
    if not _LONG_DIGITS_TEXT.search(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return _stdlib_loads(text)


def _stdlib_loads(text: str) -> Any:
    """``json.loads``, with nesting deeper than the interpreter's stack a ``ValueError`` (orjson stops at
    1024 levels, then the stdlib is tried: it would raise ``RecursionError``)."""
    try:
        return _json.loads(text)
    except RecursionError:
        raise ValueError("the JSON nests arrays and objects too deeply") from None


def _loads_stream(text: str) -> list[Any]:
    """Every JSON value in ``text``, separated by whitespace (as in one object a line)."""
    decoder = _json.JSONDecoder()
    values: list[Any] = []
    index = _skip_whitespace(text, 0)
    while index < len(text):
        try:
            value, index = decoder.raw_decode(text, index)
        except _json.JSONDecodeError as exc:
            raise bad_json(exc) from None
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"invalid JSON in value {len(values) + 1}: {exc}") from None
        values.append(value)
        index = _skip_whitespace(text, index)
    return values


def _skip_whitespace(text: str, index: int) -> int:
    match = _WHITESPACE.match(text, index)
    return match.end() if match is not None else index


def _frame(data: Any = None) -> Any:
    """``pandas.DataFrame(data)``; a string holding a lone surrogate (a ``"\\ud800"`` escape: JSON's grammar
    allows it, UTF-8 cannot carry it, and pandas' string columns are UTF-8) is a ``BadRequest``."""
    import pandas as pd

    try:
        return pd.DataFrame(data)
    except UnicodeEncodeError as exc:
        raise BadRequest(f"invalid JSON: a string holds {exc.object[exc.start:exc.end]!r}, a lone surrogate, "
                         "which UTF-8 cannot carry") from None


def frame_from_document(value: Any) -> Any:
    """One parsed JSON document -> ``pandas.DataFrame`` by the rules in :class:`JsonCodec`."""
    if isinstance(value, dict):
        instances = value.get("instances")
        if isinstance(instances, list):
            return records_to_frame(instances, "instance", scalars_as_row=True)
        return _frame([value])
    if isinstance(value, list):
        return records_to_frame(value, "record", scalars_as_row=True)
    return _frame([[value]])


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a scalar"


def records_to_frame(
    records: Sequence[Any], noun: str, *, scalars_as_row: bool = False, labels: Sequence[str] | None = None
) -> Any:
    """Parsed JSON records -> ``pandas.DataFrame``.

    All objects: one row each, union of keys. All arrays: one row each, columns ``0..n-1``; arrays of
    different lengths are a ``BadRequest``. All scalars: one row (``scalars_as_row``) or one column.
    A mix is a ``BadRequest``. ``labels[i]`` (default ``f"{noun} {i + 1}"``) names record ``i``.
    """
    def label(index: int) -> str:
        return labels[index] if labels is not None else f"{noun} {index + 1}"

    if not records:
        return _frame()
    first = _kind(records[0])
    for index, record in enumerate(records):
        kind = _kind(record)
        if kind != first:
            raise BadRequest(f"{label(index)} is {kind}, but {label(0)} is {first}; do not mix them")
    if first == "an array":
        width = len(records[0])
        for index, record in enumerate(records):
            if len(record) != width:
                raise BadRequest(f"{label(index)} has {len(record)} value(s); expected {width} like {label(0)}")
    elif first == "a scalar":
        return _frame([list(records)]) if scalars_as_row else _frame({0: list(records)})
    return _frame(list(records))


def frame_records(frame: Any) -> list[dict[Any, Any]]:
    """A ``DataFrame``'s rows as dicts keyed by column name (non-string names as strings)."""
    names = [name if isinstance(name, str) else str(name) for name in frame.columns.tolist()]
    return [dict(zip(names, row, strict=True)) for row in frame.itertuples(index=False, name=None)]


def _default(obj: Any) -> Any:
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(obj, pd.DataFrame):
            return frame_records(obj)
        if isinstance(obj, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray)):
            return obj.tolist()
        if obj is pd.NA or obj is pd.NaT:
            return None
        if isinstance(obj, pd.Timestamp):
            return obj.isoformat()
        if isinstance(obj, pd.Timedelta):
            return obj.isoformat()
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    """``obj`` as JSON bytes (numpy and pandas objects included); ``ModelError`` when impossible."""
    try:
        return orjson.dumps(obj, default=_default, option=_DUMP_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise ModelError(f"cannot encode {type(obj).__name__} as JSON: {exc}") from None
