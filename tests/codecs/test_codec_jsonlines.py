"""application/jsonlines and aliases: one JSON value a line, both ways."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from mainsail.codecs import JsonLinesCodec, MediaType, default_registry, parse_media_type
from mainsail.errors import BadRequest, ModelError

CODEC = JsonLinesCodec()


def decode(body: bytes, content_type: str = "application/jsonlines") -> pd.DataFrame:
    media_type = parse_media_type(content_type)
    assert media_type is not None
    frame: pd.DataFrame = CODEC.decode(body, media_type)
    return frame


def encode(obj: Any) -> bytes:
    return CODEC.encode(obj, MediaType("application/jsonlines"))


@pytest.mark.parametrize(
    "content_type",
    [
        "application/jsonlines",
        "application/jsonl",
        "application/x-jsonlines",
        "application/json-lines",
        "application/x-ndjson",
        "Application/NDJSON; charset=utf-8",
    ],
)
def test_aliases_decode_through_the_registry(content_type: str) -> None:
    frame = default_registry().decode(b'{"a": 1}\n{"a": 2}\n', content_type)
    assert frame.to_dict("list") == {"a": [1, 2]}


def test_objects_are_rows_with_union_of_keys() -> None:
    frame = decode(b'{"a": 1, "b": "x"}\r\n\n  \n{"a": 2, "c": 0.5}')
    assert list(frame.columns) == ["a", "b", "c"]
    assert frame["a"].tolist() == [1, 2]
    assert frame["c"].isna().tolist() == [True, False]


def test_arrays_are_rows_scalars_a_column() -> None:
    assert decode(b"[1, 2]\n[3, 4]\n").values.tolist() == [[1, 2], [3, 4]]
    frame = decode(b'1\n"x"\n')
    assert list(frame.columns) == [0] and frame[0].tolist() == [1, "x"]


def test_nan_and_big_integers() -> None:
    frame = decode(b'{"a": NaN, "b": 123456789012345678901234567890}\n{"a": 1.5, "b": 1}\n')
    assert np.isnan(frame["a"].tolist()[0])
    assert frame["b"].tolist() == [123456789012345678901234567890, 1]


@pytest.mark.parametrize("body", [b"", b"\n \n\r\n"])
def test_empty_body(body: bytes) -> None:
    with pytest.raises(BadRequest, match="^empty body$"):
        decode(body)


def test_bad_line_is_named() -> None:
    with pytest.raises(BadRequest) as info:
        decode(b'{"a": 1}\n\n{"a": 2,}\n')
    assert info.value.message == ("invalid JSON at line 3, column 9: Expecting property name enclosed in double quotes")


def test_two_values_on_one_line_is_an_error() -> None:
    with pytest.raises(BadRequest, match="^invalid JSON at line 2, column 10: Extra data$"):
        decode(b'{"a": 1}\n{"a": 2} {"a": 3}\n')


def test_integer_too_long_names_the_line() -> None:
    with pytest.raises(BadRequest, match="^invalid JSON at line 2: .*digits"):
        decode(b"[1]\n[" + b"9" * 5000 + b"]\n")


def test_mixed_and_ragged_lines_are_named() -> None:
    with pytest.raises(BadRequest) as info:
        decode(b'{"a": 1}\n\n[1]\n')
    assert info.value.message == "line 3 is an array, but line 1 is an object; do not mix them"
    with pytest.raises(BadRequest) as info:
        decode(b"[1, 2]\n\n\n[1]\n")
    assert info.value.message == "line 4 has 1 value(s); expected 2 like line 1"


def test_invalid_utf8_names_the_byte_offset() -> None:
    with pytest.raises(BadRequest, match="at byte offset 9 "):
        decode(b'{"a": 1}\n\xc3\n')


def test_encode_dataframe_rows_as_objects() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, np.nan], 3: ["x", "y"]})
    assert encode(frame) == b'{"a":1,"b":0.5,"3":"x"}\n{"a":2,"b":null,"3":"y"}\n'


def test_encode_arrays_lists_and_single_values() -> None:
    assert encode(np.array([[1, 2], [3, 4]])) == b"[1,2]\n[3,4]\n"
    assert encode(np.array([0.1, 0.2], dtype=np.float32)) == b"0.1\n0.2\n"
    assert encode([{"a": 1}, [1, 2], "x"]) == b'{"a":1}\n[1,2]\n"x"\n'
    assert encode(pd.Series([1, 2])) == b"1\n2\n"
    assert encode({"a": 1}) == b'{"a":1}\n'
    assert encode(np.float64(2.5)) == b"2.5\n"
    assert encode([]) == b""


def test_encode_unencodable_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="^cannot encode object as JSON"):
        encode([object()])


def test_round_trip() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y\nz", "é"], "c": [0.1, 0.2, 1e-9]})
    pd.testing.assert_frame_equal(decode(encode(frame)), frame)
