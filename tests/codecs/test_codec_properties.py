"""Property tests: CSV, JSON and JSON Lines round trips over generated data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.codecs import CsvCodec, JsonCodec, JsonLinesCodec, MediaType

CSV, JSON, JSONL = CsvCodec(), JsonCodec(), JsonLinesCodec()
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
# Any non-empty text, commas, quotes, line breaks, NUL and non-ASCII included. An empty field reads
# back as NaN, so strings are non-empty; a column whose strings all look like numbers reads back as
# numbers, so the first string of each column starts with a letter.
TEXT = st.text(min_size=1, max_size=12)
SPECIAL = st.sampled_from([",", '"', '""', "\n", "\r\n", "\r", " 1 ", "a,b", 'x"y', "ünï", "\x00", "nan", "1e5", "-"])
STRINGS = st.one_of(TEXT, SPECIAL)


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    rows = draw(st.integers(min_value=1, max_value=8))
    kinds = draw(st.lists(st.sampled_from(["int", "float", "str"]), min_size=1, max_size=5))
    columns: dict[int, Any] = {}
    for index, kind in enumerate(kinds):
        if kind == "int":
            columns[index] = np.array(draw(st.lists(INT64, min_size=rows, max_size=rows)), dtype=np.int64)
        elif kind == "float":
            columns[index] = np.array(draw(st.lists(FLOATS, min_size=rows, max_size=rows)), dtype=np.float64)
        else:
            values = draw(st.lists(STRINGS, min_size=rows, max_size=rows))
            columns[index] = ["s" + values[0], *values[1:]]
    return pd.DataFrame(columns, columns=list(range(len(kinds))))


@PROPERTY
@given(frames())
def test_csv_round_trip(frame: pd.DataFrame) -> None:
    media_type = MediaType("text/csv")
    decoded = CSV.decode(CSV.encode(frame, media_type), media_type)
    pd.testing.assert_frame_equal(decoded, frame, check_exact=True, check_column_type=False)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
KEYS = st.sampled_from(["a", "b", "c", "ключ", "with space", "0"])
RECORDS = st.lists(st.dictionaries(KEYS, JSON_SCALARS, min_size=1), min_size=1, max_size=6)


@PROPERTY
@given(RECORDS)
def test_json_records_round_trip(records: list[dict[str, Any]]) -> None:
    media_type = MediaType("application/json")
    decoded = JSON.decode(JSON.encode(records, media_type), media_type)
    pd.testing.assert_frame_equal(decoded, pd.DataFrame(records), check_exact=True)


@PROPERTY
@given(RECORDS)
def test_json_frame_round_trip(records: list[dict[str, Any]]) -> None:
    media_type = MediaType("application/json")
    frame = pd.DataFrame(records)
    decoded = JSON.decode(JSON.encode(frame, media_type), media_type)
    pd.testing.assert_frame_equal(decoded, pd.DataFrame(frame_to_python(frame)), check_exact=True)


def frame_to_python(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The records JSON can carry: missing values are null, i.e. None."""
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


@PROPERTY
@given(RECORDS)
def test_jsonlines_records_round_trip(records: list[dict[str, Any]]) -> None:
    media_type = MediaType("application/jsonlines")
    body = JSONL.encode(records, media_type)
    assert body.count(b"\n") == len(records)
    decoded = JSONL.decode(body, media_type)
    pd.testing.assert_frame_equal(decoded, pd.DataFrame(records), check_exact=True)


@PROPERTY
@given(
    st.integers(min_value=1, max_value=5).flatmap(
        lambda width: st.lists(st.lists(INT64, min_size=width, max_size=width), min_size=1, max_size=6)
    )
)
def test_jsonlines_array_round_trip(rows: list[list[int]]) -> None:
    media_type = MediaType("application/jsonlines")
    array = np.array(rows, dtype=np.int64)
    decoded = JSONL.decode(JSONL.encode(array, media_type), media_type)
    pd.testing.assert_frame_equal(decoded, pd.DataFrame(array), check_exact=True)
