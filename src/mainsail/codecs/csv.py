"""``text/csv``: header-less rows <-> ``pandas.DataFrame`` with integer column names."""

from __future__ import annotations

import csv as _csv
import io
import math
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from mainsail.codecs.base import MediaType, decode_text
from mainsail.errors import BadRequest, ModelError

_INT = re.compile(r"[ \t]*[+-]?\d+[ \t]*", re.ASCII)
_FLOAT = re.compile(
    r"[ \t]*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|nan|inf|infinity)[ \t]*", re.ASCII | re.IGNORECASE
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


class CsvCodec:
    """CSV without a header row, one record a line (blank lines are skipped).

    ``decode`` gives a ``pandas.DataFrame`` with columns ``0..n-1``: a column whose fields are all
    numbers becomes ``int64`` (``float64`` when it also has empty fields or non-integers), any other
    column holds strings; empty fields are NaN. Quoted fields may hold commas, doubled quotes and line
    breaks. The ``charset`` parameter is honoured. A record with a different number of fields than
    the first, a broken quote or an undecodable byte is a ``BadRequest`` saying where.

    ``encode`` writes UTF-8 rows ending in ``"\\n"`` without header or index: a DataFrame's rows, the
    rows of a 2-D array or list of lists, one value a line for a 1-D array, list or Series, the values
    of each dict (in its key order) for a list of dicts. Floats use ``str()`` (shortest round-trip
    form), NaN/None become empty fields, and fields holding commas, quotes or line breaks are quoted.
    """

    media_types: tuple[str, ...] = ("text/csv",)

    def decode(self, body: bytes, media_type: MediaType) -> Any:
        text = decode_text(body, media_type)
        if not text.strip():
            raise BadRequest("empty body")
        rows = _read_rows(text)
        import pandas as pd

        width = len(rows[0])
        columns = {index: _column([row[index] for row in rows]) for index in range(width)}
        return pd.DataFrame(columns, columns=list(range(width)))

    def encode(self, obj: Any, media_type: MediaType) -> bytes:
        out = io.StringIO()
        for row in _rows_of(obj):
            cells = [_format_cell(value) for value in row]
            if len(cells) == 1 and cells[0] == "":
                out.write('""\n')  # a bare blank line would be skipped when read back
            else:
                out.write(",".join(cells))
                out.write("\n")
        return out.getvalue().encode("utf-8")


def _read_rows(text: str) -> list[list[str]]:
    reader = _csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[list[str]] = []
    width = 0
    start_line = 1
    try:
        for row in reader:
            if row:
                if not rows:
                    width = len(row)
                elif len(row) != width:
                    raise BadRequest(
                        f"CSV line {start_line} (record {len(rows) + 1}) has {len(row)} field(s); "
                        f"expected {width} like the first record"
                    )
                rows.append(row)
            start_line = reader.line_num + 1
    except _csv.Error as exc:
        raise BadRequest(
            f"malformed CSV at line {reader.line_num} "
            f"(record {len(rows) + 1}, starting at line {start_line}): {exc}"
        ) from None
    return rows


def _column(values: list[str]) -> Any:
    import numpy as np

    present = [value for value in values if value != ""]
    if not present:
        return np.full(len(values), np.nan)
    if all(_INT.fullmatch(value) for value in present):
        ints = [int(value) for value in present]
        if all(_INT64_MIN <= number <= _INT64_MAX for number in ints):
            if len(present) == len(values):
                return np.array(ints, dtype=np.int64)
            return np.array([float(value) if value else np.nan for value in values], dtype=np.float64)
        # integers beyond 64 bits stay exact, as strings, rather than silently becoming floats
    elif all(_FLOAT.fullmatch(value) for value in present):
        return np.array([float(value) if value else np.nan for value in values], dtype=np.float64)
    return [value if value else np.nan for value in values]


def _rows_of(obj: Any) -> Iterator[Iterable[Any]]:
    pd = sys.modules.get("pandas")
    np = sys.modules.get("numpy")
    if pd is not None and isinstance(obj, pd.DataFrame):
        yield from obj.itertuples(index=False, name=None)
        return
    if pd is not None and isinstance(obj, (pd.Series, pd.Index)):
        obj = obj.to_numpy()
    if np is not None and isinstance(obj, np.ndarray):
        if obj.ndim > 2:
            raise ModelError(f"cannot encode a {obj.ndim}-D array as text/csv; give at most 2 dimensions")
        if obj.ndim == 2:
            yield from obj
        else:
            for value in obj.reshape(-1):
                yield (value,)
        return
    if isinstance(obj, dict):
        yield obj.values()
        return
    if isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, dict):
                yield item.values()
            elif isinstance(item, (list, tuple)) or (np is not None and isinstance(item, np.ndarray)):
                yield item
            else:
                yield (item,)
        return
    if isinstance(obj, (str, bytes, int, float)) or (np is not None and isinstance(obj, np.generic)):
        yield (obj,)
        return
    raise ModelError(f"cannot encode {type(obj).__name__} as text/csv")


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, float):  # also numpy.float64
        text = "" if math.isnan(value) else str(value)
    elif isinstance(value, (bool, int)):
        text = str(value)
    elif isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    else:
        text = _format_other(value)
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def _format_other(value: Any) -> str:
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.floating):
        return "" if np.isnan(value) else str(value)  # str() of a float32 is its shortest form
    pd = sys.modules.get("pandas")
    if pd is not None and (value is pd.NA or value is pd.NaT):
        return ""
    return str(value)
