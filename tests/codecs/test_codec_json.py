"""application/json: documents to DataFrames, and numpy/pandas objects to JSON bytes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from mainsail.codecs import JsonCodec, MediaType, parse_media_type
from mainsail.errors import BadRequest, ModelError

CODEC = JsonCodec()


def decode(body: bytes, content_type: str = "application/json") -> pd.DataFrame:
    media_type = parse_media_type(content_type)
    assert media_type is not None
    frame: pd.DataFrame = CODEC.decode(body, media_type)
    return frame


def encode(obj: Any) -> bytes:
    return CODEC.encode(obj, MediaType("application/json"))


def test_one_object_is_one_row() -> None:
    frame = decode(b'{"a": 1, "b": "x", "c": [1, 2]}')
    assert frame.shape == (1, 3)
    assert frame.to_dict("records") == [{"a": 1, "b": "x", "c": [1, 2]}]


def test_list_of_objects_unions_keys() -> None:
    frame = decode(b'[{"a": 1, "b": 2}, {"b": 3, "c": "z"}]')
    assert list(frame.columns) == ["a", "b", "c"]
    assert frame["b"].tolist() == [2, 3]
    assert frame["a"].isna().tolist() == [False, True]
    assert frame["c"].isna().tolist() == [True, False]


def test_instances_of_objects_and_of_lists() -> None:
    assert decode(b'{"instances": [{"a": 1}, {"a": 2}]}').to_dict("list") == {"a": [1, 2]}
    frame = decode(b'{"instances": [[1, 2.5], [3, 4.5]]}')
    assert list(frame.columns) == [0, 1]
    assert frame.to_dict("list") == {0: [1, 3], 1: [2.5, 4.5]}


def test_instances_must_be_a_list_to_count() -> None:
    assert decode(b'{"instances": 3, "b": 1}').to_dict("records") == [{"instances": 3, "b": 1}]


def test_list_of_lists_has_integer_columns() -> None:
    frame = decode(b"[[1, 2, 3], [4, 5, 6]]")
    assert list(frame.columns) == [0, 1, 2]
    assert frame.values.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_list_of_scalars_is_one_row() -> None:
    frame = decode(b'[1, 2.5, "x"]')
    assert frame.shape == (1, 3)
    assert frame.iloc[0].tolist() == [1, 2.5, "x"]


def test_lone_scalar_and_empty_list() -> None:
    assert decode(b"42").values.tolist() == [[42]]
    assert decode(b"[]").shape == (0, 0)
    assert decode(b'{"instances": []}').shape == (0, 0)


def test_one_object_a_line() -> None:
    frame = decode(b'{"a": 1}\r\n{"a": 2, "b": 3}\n\n')
    assert frame["a"].tolist() == [1, 2]
    assert frame["b"].isna().tolist() == [True, False]


def test_concatenated_pretty_printed_values() -> None:
    frame = decode(b"[1, 2]\r\n[3,\n 4]  [5, 6]")
    assert frame.values.tolist() == [[1, 2], [3, 4], [5, 6]]


def test_nan_infinity_and_big_integers_fall_back_to_the_stdlib() -> None:
    frame = decode(b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": 123456789012345678901234567890}')
    row = frame.iloc[0].tolist()
    assert np.isnan(row[0]) and row[1:3] == [np.inf, -np.inf]
    assert row[3] == 123456789012345678901234567890  # exact, not a float


def test_long_digit_strings_are_kept() -> None:
    assert decode(b'{"id": "123456789012345678901234567890"}')["id"].tolist() == ["123456789012345678901234567890"]


def test_bom_and_charset() -> None:
    assert decode(b'\xef\xbb\xbf{"a": 1}').to_dict("list") == {"a": [1]}
    assert decode('{"é": "ü"}'.encode("utf-16"), "application/json; charset=UTF-16").to_dict("list") == {"é": ["ü"]}


@pytest.mark.parametrize("body", [b"", b"   \n\t"])
def test_empty_body(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        decode(body)
    assert info.value.message == "empty body"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a": 1,}', "invalid JSON at line 1, column 9: Expecting property name enclosed in double quotes"),
        (b'{\n  "a": 1\n  "b": 2\n}', "invalid JSON at line 3, column 3: Expecting ',' delimiter"),
        (b"[1, 2", "invalid JSON at line 1, column 6: Expecting ',' delimiter"),
        (b"nope", "invalid JSON at line 1, column 1: Expecting value"),
        (b'{"a": 1}\n{"a": }\n', "invalid JSON at line 2, column 7: Expecting value"),
        (b"[1]\n[2]\n  oops", "invalid JSON at line 3, column 3: Expecting value"),
    ],
)
def test_invalid_json_names_line_and_column(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode(body)
    assert info.value.message == message


def test_invalid_utf8_names_the_byte_offset() -> None:
    with pytest.raises(BadRequest, match=r"^body is not valid utf-8: cannot decode byte 0xff at byte offset 7"):
        decode(b'{"a": "\xff"}')


def test_integer_too_long_for_python() -> None:
    with pytest.raises(BadRequest, match="^invalid JSON: .*digits"):
        decode(b"[" + b"9" * 5000 + b"]")


def test_ragged_lists() -> None:
    with pytest.raises(BadRequest) as info:
        decode(b"[[1, 2], [3, 4], [5]]")
    assert info.value.message == "record 3 has 1 value(s); expected 2 like record 1"


def test_mixed_records() -> None:
    with pytest.raises(BadRequest) as info:
        decode(b'{"instances": [{"a": 1}, [1]]}')
    assert info.value.message == "instance 2 is an array, but instance 1 is an object; do not mix them"
    with pytest.raises(BadRequest, match="^record 2 is an object, but record 1 is a scalar"):
        decode(b'[1, {"a": 1}]')
    with pytest.raises(BadRequest, match="^value 2 is a scalar, but value 1 is an object"):
        decode(b'{"a": 1}\n2\n')


def test_encode_plain_objects() -> None:
    assert encode({"a": [1, 2.5, None, "x", True]}) == b'{"a":[1,2.5,null,"x",true]}'
    assert encode({1: "int key"}) == b'{"1":"int key"}'
    assert encode((1, 2)) == b"[1,2]"
    assert encode({3}) == b"[3]"


def test_encode_numpy() -> None:
    assert encode(np.array([[1, 2], [3, 4]])) == b"[[1,2],[3,4]]"
    assert encode(np.array([0.1, np.nan, np.inf], dtype=np.float32)) == b"[0.1,null,null]"
    assert encode({"p": np.float32(0.1), "n": np.int64(3), "b": np.bool_(True)}) == b'{"p":0.1,"n":3,"b":true}'
    assert encode(np.arange(6).reshape(2, 3)[:, 1]) == b"[1,4]"  # not contiguous
    assert encode(np.array(["a", "b"])) == b'["a","b"]'
    assert encode(np.array([1, "a", None], dtype=object)) == b'[1,"a",null]'
    assert encode(float("nan")) == b"null"


def test_encode_pandas() -> None:
    frame = pd.DataFrame(
        {
            "a": [1, 2],
            "b": [0.5, np.nan],
            "c": ["x", None],
            "t": pd.to_datetime(["2020-01-02", None]),
            "i": pd.array([1, None], dtype="Int64"),
        }
    )
    assert orjson.loads(encode(frame)) == [
        {"a": 1, "b": 0.5, "c": "x", "t": "2020-01-02T00:00:00", "i": 1},
        {"a": 2, "b": None, "c": None, "t": None, "i": None},
    ]
    assert encode(pd.DataFrame([[1, 2]])) == b'[{"0":1,"1":2}]'
    assert encode(pd.Series([1.5, 2.5])) == b"[1.5,2.5]"
    assert encode({"idx": pd.Index(["a"])}) == b'{"idx":["a"]}'
    assert encode(pd.Timedelta(seconds=90)) == b'"P0DT0H1M30S"'


def test_encode_datetimes() -> None:
    assert encode(dt.datetime(2020, 1, 2, 3, 4, 5)) == b'"2020-01-02T03:04:05"'
    assert encode(dt.date(2020, 1, 2)) == b'"2020-01-02"'


def test_encode_unencodable_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="^cannot encode object as JSON: Type is not JSON serializable: object$"):
        encode(object())
    with pytest.raises(ModelError, match="^cannot encode list as JSON: Integer exceeds 64-bit range$"):
        encode([2**70])


def test_round_trip_frame() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": [0.25, -1e300], "c": ["x", "ü"]})
    pd.testing.assert_frame_equal(decode(encode(frame)), frame)
