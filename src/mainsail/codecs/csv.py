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

# Fields made only of these characters are handed to numpy's int/float parsers (which, like int()
# and float(), strip spaces and accept "nan", "inf", "infinity" in any case); anything else is text.
_NOT_INT_ALPHABET = re.compile(r"[^0-9+\- \t]")
_NOT_FLOAT_ALPHABET = re.compile(r"[^0-9+\-.eE \tnNaAiIfFtTyY]")
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

        columns = {index: _column(values) for index, values in enumerate(zip(*rows, strict=True))}
        return pd.DataFrame(columns, columns=list(range(len(rows[0]))))

    def encode(self, obj: Any, media_type: MediaType) -> bytes:
        columns = _columns_of(obj)
        if columns is None:
            lines = [_join([_format_cell(value) for value in row]) for row in _rows_of(obj)]
        elif len(columns) == 1:
            lines = [cell or '""' for cell in columns[0]]
        else:
            lines = [",".join(cells) for cells in zip(*columns, strict=True)]
        return "".join(line + "\n" for line in lines).encode("utf-8")


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
            f"malformed CSV at line {reader.line_num} (record {len(rows) + 1}, starting at line {start_line}): {exc}"
        ) from None
    return rows


def _column(values: tuple[str, ...]) -> Any:
    import numpy as np

    present = [value for value in values if value] if "" in values else list(values)
    if not present:
        return np.full(len(values), np.nan)
    # The alphabet checks keep numpy's parsers to plain ASCII numbers: no "1_000", no non-ASCII digits.
    joined = " ".join(present)
    if not _NOT_INT_ALPHABET.search(joined):
        try:
            ints = np.array(present, dtype=np.int64)
        except (OverflowError, ValueError):
            # integers beyond 64 bits stay exact, as strings; and text like "--1" made only of digits
            # and signs is no float either
            return [value or np.nan for value in values]
        if len(present) == len(values):
            return ints
    if not _NOT_FLOAT_ALPHABET.search(joined):
        try:
            return np.array([value or "nan" for value in values], dtype=np.float64)
        except ValueError:
            pass
    return [value or np.nan for value in values]


def _join(cells: list[str]) -> str:
    # a lone empty field is written as "" because a blank line would be skipped when read back
    return '""' if cells == [""] else ",".join(cells)


def _columns_of(obj: Any) -> list[list[str]] | None:
    """The formatted columns of a DataFrame, Series, Index or array; None for other objects."""
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(obj, pd.DataFrame):
            return [_format_column(series) for _, series in obj.items()]
        if isinstance(obj, (pd.Series, pd.Index)):
            return [_format_column(obj)]
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray):
        if obj.ndim > 2:
            raise ModelError(f"cannot encode a {obj.ndim}-D array as text/csv; give at most 2 dimensions")
        if obj.ndim == 2:
            return [_format_column(obj[:, index]) for index in range(obj.shape[1])]
        return [_format_column(obj.reshape(-1))]
    return None


def _format_column(values: Any) -> list[str]:
    import numpy as np

    dtype = values.dtype
    if isinstance(dtype, np.dtype):  # not a pandas extension dtype, whose missing values need care
        if dtype.kind in "iub":
            return [str(value) for value in values.tolist()]
        if dtype == np.float64:
            return ["" if value != value else str(value) for value in values.tolist()]
        if dtype.kind == "f":  # numpy scalars keep their own shortest form: float32 0.1 is "0.1"
            return [_format_cell(value) for value in np.asarray(values)]
    return [_format_cell(value) for value in values]


def _rows_of(obj: Any) -> Iterator[Iterable[Any]]:
    np = sys.modules.get("numpy")
    if isinstance(obj, dict):
        yield obj.values()
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, dict):
                yield item.values()
            elif isinstance(item, (list, tuple)) or (np is not None and isinstance(item, np.ndarray)):
                yield item
            else:
                yield (item,)
    elif isinstance(obj, (str, bytes, int, float)) or (np is not None and isinstance(obj, np.generic)):
        yield (obj,)
    else:
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


def _type_field(value: str) -> Any:
    """One field typed as ``_column`` types a one-value column, with plain Python parsing."""
    if not value:
        return math.nan
    if not _NOT_INT_ALPHABET.search(value):
        try:
            number = int(value)
        except ValueError:
            return value
        return number if -(2**63) <= number < 2**63 else value
    if not _NOT_FLOAT_ALPHABET.search(value):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def decode_record(text: str) -> list[Any] | None:
    """One CSV record typed field by field exactly as ``CsvCodec.decode`` types a one-row body.

    Returns None when ``text`` holds more than one record; a blank one is ``BadRequest("empty body")``,
    as the codec says. The single-record fast paths use it to skip pandas while reading every value
    the way the batch path would.
    """
    if not text.strip():
        raise BadRequest("empty body")
    if '"' not in text and "\n" not in text.rstrip("\r\n") and "\r" not in text.rstrip("\r\n"):
        line = text.rstrip("\r\n")
        if line.strip():
            return [_type_field(field) for field in line.split(",")]
    rows = _read_rows(text)
    if len(rows) != 1:
        return None
    return [_type_field(field) for field in rows[0]]
