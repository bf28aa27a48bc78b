"""application/x-parquet and aliases: pyarrow files <-> DataFrames."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mainsail.codecs import MediaType, ParquetCodec, default_registry
from mainsail.errors import BadRequest, ModelError

CODEC = ParquetCodec()
MEDIA = MediaType("application/x-parquet")


def encode(obj: Any) -> bytes:
    return CODEC.encode(obj, MEDIA)


def decode(body: bytes) -> pd.DataFrame:
    frame: pd.DataFrame = CODEC.decode(body, MEDIA)
    return frame


def test_round_trip_frame() -> None:
    frame = pd.DataFrame(
        {
            "a": [1, 2, 3],
            "b": [0.5, np.nan, 1e300],
            "c": ["x", None, "ü"],
            "t": pd.to_datetime(["2020-01-01", "2021-06-30", None]),
        }
    )
    pd.testing.assert_frame_equal(decode(encode(frame)), frame)


def test_index_is_dropped_and_column_names_become_strings() -> None:
    frame = pd.DataFrame({0: [1, 2], "b": [3, 4]}, index=[10, 20])
    decoded = decode(encode(frame))
    assert list(decoded.columns) == ["0", "b"]
    assert decoded.index.tolist() == [0, 1]
    assert list(frame.columns) == [0, "b"]  # the caller's frame is untouched


def test_arrays_and_lists() -> None:
    assert decode(encode(np.arange(6).reshape(3, 2))).to_dict("list") == {"0": [0, 2, 4], "1": [1, 3, 5]}
    assert decode(encode([[1.5, 2.5]])).to_dict("list") == {"0": [1.5], "1": [2.5]}
    assert decode(encode(np.array([1, 2]))).to_dict("list") == {"0": [1, 2]}
    assert decode(encode(np.float64(3.5))).to_dict("list") == {"0": [3.5]}
    assert decode(encode([{"a": 1}, {"a": 2, "b": "x"}]))["a"].tolist() == [1, 2]
    assert decode(encode({"a": [1, 2]})).to_dict("list") == {"a": [1, 2]}
    assert decode(encode(pd.Series([1, 2], name="p"))).to_dict("list") == {"p": [1, 2]}
    assert decode(encode(pd.Series([1, 2]))).to_dict("list") == {"0": [1, 2]}


def test_reads_files_written_by_pyarrow_under_every_alias() -> None:
    out = io.BytesIO()
    pq.write_table(pa.table({"x": [1, 2], "y": ["a", "b"]}), out)
    registry = default_registry()
    for content_type in ("application/x-parquet", "Application/Parquet", "application/vnd.apache.parquet"):
        assert registry.decode(out.getvalue(), content_type).to_dict("list") == {"x": [1, 2], "y": ["a", "b"]}


def test_empty_body() -> None:
    with pytest.raises(BadRequest, match="^empty body$"):
        decode(b"")


def test_not_parquet() -> None:
    with pytest.raises(BadRequest) as info:
        decode(b"a,b\n1,2\n")
    assert info.value.message == (
        "invalid Parquet: a Parquet file starts and ends with b'PAR1' "
        "(got b'a,b\\n' at byte offset 0 and b'1,2\\n' at byte offset 4)"
    )


def test_corrupt_parquet() -> None:
    body = bytearray(encode(pd.DataFrame({"a": list(range(100))})))
    body[8 : len(body) - 8] = b"\x00" * (len(body) - 16)
    with pytest.raises(BadRequest, match="^invalid Parquet: "):
        decode(bytes(body))


def test_truncated_parquet() -> None:
    body = encode(pd.DataFrame({"a": list(range(100))}))
    with pytest.raises(BadRequest, match="^invalid Parquet: "):
        decode(body[:20] + b"PAR1")


def test_encode_refusals() -> None:
    with pytest.raises(ModelError, match="cannot encode a 3-D array as Parquet"):
        encode(np.zeros((2, 2, 2)))
    with pytest.raises(ModelError, match="^cannot encode object as Parquet$"):
        encode(object())
    with pytest.raises(ModelError, match="^cannot encode list as Parquet: "):
        encode([[1, 2], [3]])
    with pytest.raises(ModelError, match="^cannot encode DataFrame as Parquet: "):
        encode(pd.DataFrame({"a": [object()]}))
