"""text/csv: header-less decode with per-column types, encode of frames, arrays and lists."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.codecs import CsvCodec, MediaType, parse_media_type
from mainsail.errors import BadRequest, ModelError

CODEC = CsvCodec()


def decode(body: bytes, content_type: str = "text/csv") -> pd.DataFrame:
    media_type = parse_media_type(content_type)
    assert media_type is not None
    frame: pd.DataFrame = CODEC.decode(body, media_type)
    return frame


def encode(obj: Any) -> bytes:
    return CODEC.encode(obj, MediaType("text/csv"))


def test_decode_types_per_column() -> None:
    frame = decode(b"1,2.5,a,1e3\n3,-4,b,-2\n")
    assert list(frame.columns) == [0, 1, 2, 3]
    assert [str(t) for t in frame.dtypes] == ["int64", "float64", "str", "float64"]
    assert frame.to_dict("list") == {0: [1, 3], 1: [2.5, -4.0], 2: ["a", "b"], 3: [1000.0, -2.0]}


def test_decode_matches_pandas_read_csv_on_plain_data() -> None:
    import io

    body = b"1,2.5,x,\n2,,y,7\n3,0.5,,8\n"
    expected = pd.read_csv(io.BytesIO(body), header=None)
    pd.testing.assert_frame_equal(decode(body), expected, check_column_type=False)


def test_decode_empty_fields_are_nan() -> None:
    frame = decode(b"1,,a,\n,2.5,,\n")
    assert [str(t) for t in frame.dtypes] == ["float64", "float64", "str", "float64"]
    assert frame[0].tolist()[0] == 1.0 and np.isnan(frame[0].tolist()[1])
    assert frame[2].isna().tolist() == [False, True]
    assert frame[3].isna().all()


def test_decode_quoted_fields() -> None:
    frame = decode(b'1,"a,b","say ""hi"""\n2,"line\nbreak","x\r\ny"\n')
    assert frame.to_dict("list") == {0: [1, 2], 1: ["a,b", "line\nbreak"], 2: ['say "hi"', "x\r\ny"]}


def test_decode_line_endings_blank_lines_and_missing_final_newline() -> None:
    frame = decode(b"\r\n1,2\r\n\r\n3,4\n\n5,6")
    assert frame.to_dict("list") == {0: [1, 3, 5], 1: [2, 4, 6]}


def test_decode_single_column_and_single_value() -> None:
    assert decode(b"7").to_dict("list") == {0: [7]}
    assert decode(b"a\nb\n").to_dict("list") == {0: ["a", "b"]}


def test_decode_numbers_with_spaces_are_numbers_strings_keep_spaces() -> None:
    frame = decode(b"1, 2.5 , a \n 3,4,b\n")
    assert frame[0].tolist() == [1, 3] and frame[1].tolist() == [2.5, 4.0]
    assert frame[2].tolist() == [" a ", "b"]


def test_decode_special_floats() -> None:
    frame = decode(b"nan,inf,-Infinity,.5,5.,+1E-3\n")
    values = frame.iloc[0].tolist()
    assert np.isnan(values[0]) and values[1:] == [np.inf, -np.inf, 0.5, 5.0, 0.001]


def test_decode_numeric_lookalikes_stay_strings() -> None:
    frame = decode("1_000,١٢٣,0x1F,1e,--1\n".encode())
    assert frame.iloc[0].tolist() == ["1_000", "١٢٣", "0x1F", "1e", "--1"]


def test_decode_integers_beyond_64_bits_stay_exact_strings() -> None:
    frame = decode(b"123456789012345678901234567890,9223372036854775807\n1,-9223372036854775808\n")
    assert frame[0].tolist() == ["123456789012345678901234567890", "1"]
    assert str(frame[1].dtype) == "int64"


def test_decode_honours_charset_and_drops_bom() -> None:
    assert decode("é,1\n".encode("latin-1"), "text/csv; charset=ISO-8859-1")[0].tolist() == ["é"]
    assert decode("é,1\n".encode("utf-16"), 'text/csv; charset="utf-16"')[0].tolist() == ["é"]
    assert decode(b"\xef\xbb\xbf1,2\n").to_dict("list") == {0: [1], 1: [2]}


@pytest.mark.parametrize("body", [b"", b"\n\n", b"  \r\n"])
def test_decode_empty_body(body: bytes) -> None:
    with pytest.raises(BadRequest, match="^empty body$"):
        decode(body)


def test_decode_ragged_row_names_the_line() -> None:
    with pytest.raises(BadRequest) as info:
        decode(b"1,2\n3,4\n\n5\n")
    assert info.value.message == "CSV line 4 (record 3) has 1 field(s); expected 2 like the first record"
    assert info.value.status_code == 400


def test_decode_ragged_row_after_multiline_field_names_its_first_line() -> None:
    with pytest.raises(BadRequest, match=r"^CSV line 4 \(record 3\) has 3 field\(s\); expected 2"):
        decode(b'1,"a\nb"\n2,c\n3,d,e\n')


def test_decode_unterminated_quote_names_the_line() -> None:
    with pytest.raises(BadRequest) as info:
        decode(b'1,2\n3,"open\nmore\n')
    assert info.value.message.startswith("malformed CSV at line 3 (record 2, starting at line 2):")
    assert "unexpected end of data" in info.value.message


def test_decode_stray_quote_names_the_line() -> None:
    with pytest.raises(BadRequest, match=r"^malformed CSV at line 2 \(record 2, starting at line 2\): .*expected"):
        decode(b'1,2\n3,"4"x\n')


def test_decode_bad_byte_names_the_offset() -> None:
    with pytest.raises(BadRequest) as info:
        decode(b"1,2\n3,\xff\n")
    assert info.value.message == (
        "body is not valid utf-8: cannot decode byte 0xff at byte offset 6 (invalid start byte)"
    )


def test_decode_unknown_charset() -> None:
    with pytest.raises(BadRequest, match="^unknown charset 'klingon'$"):
        decode(b"1\n", "text/csv; charset=klingon")


def test_encode_dataframe() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": [0.1, np.nan], "c": ["x", None], "d": [True, False]})
    assert encode(frame) == b"1,0.1,x,True\n2,,,False\n"


def test_encode_float_precision() -> None:
    values = [0.1, 1 / 3, 1e-7, 1e22, 2.0, -0.0, np.inf]
    assert encode(np.array(values)) == b"".join(f"{v!s}\n".encode() for v in values)
    assert encode(np.array([0.1, 2.5], dtype=np.float32)) == b"0.1\n2.5\n"
    assert encode(pd.DataFrame({"a": np.array([0.1, np.nan], dtype=np.float32), "b": [1, 2]})) == b"0.1,1\n,2\n"
    assert encode(np.array([[0.1, 1.5]], dtype=np.float16)) == b"0.1,1.5\n"
    assert [float(line) for line in encode(values).splitlines()] == values


def test_encode_arrays_and_lists() -> None:
    assert encode(np.arange(6).reshape(2, 3)) == b"0,1,2\n3,4,5\n"
    assert encode(np.array([1, 2, 3])) == b"1\n2\n3\n"
    assert encode(np.float64(0.5)) == b"0.5\n"
    assert encode(np.array(4)) == b"4\n"
    assert encode([[1, "a"], (2, "b")]) == b"1,a\n2,b\n"
    assert encode([1, 2.5, "x"]) == b"1\n2.5\nx\n"
    assert encode(pd.Series([1.5, 2.5])) == b"1.5\n2.5\n"
    assert encode([np.array([1, 2]), np.array([3, 4])]) == b"1,2\n3,4\n"
    assert encode(7) == b"7\n"
    assert encode([]) == b""


def test_encode_dicts_in_their_key_order() -> None:
    assert encode([{"b": 1, "a": 2}, {"a": 3, "b": 4}]) == b"1,2\n3,4\n"
    assert encode({"x": 1, "y": "z"}) == b"1,z\n"


def test_encode_quotes_fields_that_need_it() -> None:
    body = encode([["a,b", 'say "hi"', "two\nlines", "cr\ronly", "plain"]])
    assert body == b'"a,b","say ""hi""","two\nlines","cr\ronly",plain\n'
    assert decode(body).iloc[0].tolist() == ["a,b", 'say "hi"', "two\nlines", "cr\ronly", "plain"]


def test_encode_single_empty_field_stays_a_record() -> None:
    body = encode(pd.DataFrame({"a": [1.0, np.nan, 3.0]}))
    assert body == b'1.0\n""\n3.0\n'
    assert decode(body)[0].isna().tolist() == [False, True, False]


def test_encode_pandas_missing_values_and_datetimes() -> None:
    frame = pd.DataFrame(
        {
            "i": pd.array([1, None], dtype="Int64"),
            "t": pd.to_datetime(["2020-01-02", None]),
        }
    )
    assert encode(frame) == b"1,2020-01-02 00:00:00\n,\n"


def test_encode_refuses_3d_arrays() -> None:
    with pytest.raises(ModelError, match="cannot encode a 3-D array as text/csv"):
        encode(np.zeros((1, 2, 3)))


def test_encode_refuses_unknown_objects() -> None:
    with pytest.raises(ModelError, match="^cannot encode object as text/csv$"):
        encode(object())


_field = st.one_of(
    st.text(alphabet="0123456789+-. \teEnNaAiIfFtTyY_x", max_size=8),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "1 2", "--1", "+", "-", "1e", "nan", "inf", "Infinity", "0x1"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_field, min_size=1, max_size=6))
def test_decode_record_types_fields_as_the_codec_does(fields: list[str]) -> None:
    import math

    from mainsail.codecs.base import parse_media_type
    from mainsail.codecs.csv import CsvCodec, decode_record

    line = ",".join(fields)
    if not line.strip() or any("," in f for f in fields):
        return
    frame = CsvCodec().decode((line + "\n").encode(), parse_media_type("text/csv"))  # type: ignore[arg-type]
    record = decode_record(line + "\n")
    assert record is not None
    cells = [frame[column].iloc[0] for column in frame.columns]
    expected = [v.item() if hasattr(v, "item") else v for v in cells]
    assert len(record) == len(expected)
    for got, want in zip(record, expected, strict=True):
        if isinstance(want, float) and math.isnan(want):
            assert isinstance(got, float) and math.isnan(got)
        else:
            assert (type(got), got) == (type(want), want)
