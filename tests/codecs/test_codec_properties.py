"""Property tests: CSV, JSON and JSON Lines round trips over generated data; NPY, the tabular CSV fast path
and the toolkit's CSV fast path read as the reference readings do."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mainsail.codecs import CsvCodec, JsonCodec, JsonLinesCodec, MediaType, NpyCodec, toolkit
from mainsail.codecs.csv import decode_record
from mainsail.errors import BadRequest
from mainsail.handlers.tabular import plain_csv_line

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


# -- two readings of one body agree (the fuzz targets' differential invariants, over generated values) --

NPY_DTYPES = st.sampled_from(["<i1", ">i2", "<i4", ">i8", "<u2", ">u8", "<f2", "<f4", ">f8", "<c8", "|b1", "<U3", "|S2"])


@PROPERTY
@given(hnp.arrays(NPY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)), st.booleans())
def test_npy_reads_what_numpy_saves_as_numpy_load_does(array: np.ndarray, fortran: bool) -> None:
    saved = np.asfortranarray(array) if fortran and array.ndim > 1 else array  # (a 0-d one would become 1-d)
    body = io.BytesIO()
    np.save(body, saved, allow_pickle=False)
    decoded = NpyCodec().decode(body.getvalue(), MediaType("application/x-npy"))
    loaded = toolkit.decode_npy(body.getvalue())
    for got in (decoded, loaded):
        assert got.dtype == saved.dtype and got.shape == saved.shape
        assert np.array_equal(got, saved, equal_nan=saved.dtype.kind in "fc")


CSV_FIELDS = st.one_of(INT64, st.integers(min_value=-(10**22), max_value=10**22), FLOATS, STRINGS,
                       st.sampled_from(["", " 7 ", "+3", "-0", "1_0", "0x1f", "1e5", "Infinity", "\x1f5", "\ufeff1"]))


@PROPERTY
@given(st.lists(CSV_FIELDS, min_size=1, max_size=6))
def test_decode_record_reads_a_one_line_body_as_the_codec_does(fields: list[Any]) -> None:
    body = CSV.encode([fields], MediaType("text/csv"))
    line = plain_csv_line(body, "text/csv")
    assume(line is not None)  # one line (a quoted line break makes two): the tabular fast path reads it
    try:
        frame = CSV.decode(body, MediaType("text/csv"))
    except BadRequest:
        with pytest.raises(BadRequest):
            decode_record(line)
        return
    row = [frame.iat[0, i].item() if isinstance(frame.iat[0, i], np.generic) else frame.iat[0, i]
           for i in range(frame.shape[1])]
    record = decode_record(line)
    assert record is not None and len(record) == len(row)
    for got, want in zip(record, row):
        assert type(got) is type(want) or (_missing(got) and _missing(want)), (got, want)
        assert got == want or (_missing(got) and _missing(want))


TOOLKIT_NUMBERS = st.one_of(st.integers(min_value=-(10**25), max_value=10**25), FLOATS)


@PROPERTY
@given(st.lists(st.tuples(TOOLKIT_NUMBERS, st.sampled_from(["", " ", "0", "\t"])), min_size=1, max_size=6),
       st.booleans())
def test_toolkit_csv_fast_path_reads_what_genfromtxt_reads(fields: list[tuple[Any, str]], numeric: bool) -> None:
    line = ",".join(pad + str(value) if pad != "0" or not str(value)[:1].isdigit() else "0" + str(value)
                    for value, pad in fields)
    fast, slow = toolkit.decode_csv(line, numeric), toolkit.genfromtxt(line, numeric)
    assert fast.dtype == slow.dtype and fast.shape == slow.shape
    assert np.array_equal(fast, slow, equal_nan=slow.dtype.kind == "f")
