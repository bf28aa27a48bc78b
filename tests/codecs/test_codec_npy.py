"""application/x-npy: arrays both ways, never through pickle."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mainsail.codecs import MediaType, NpyCodec
from mainsail.errors import BadRequest, ModelError

CODEC = NpyCodec()
MEDIA = MediaType("application/x-npy")


def save(array: Any, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


def decode(body: bytes) -> np.ndarray:
    array: np.ndarray = CODEC.decode(body, MEDIA)
    return array


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.array([0.1, np.nan, -np.inf], dtype=np.float32),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.array(["a", "ü"]),
        np.array([True, False]),
        np.array(3.5),
        np.zeros((0, 3)),
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    ],
)
def test_round_trip(array: np.ndarray) -> None:
    decoded = decode(CODEC.encode(array, MEDIA))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_reads_numpy_save_output() -> None:
    np.testing.assert_array_equal(decode(save([[1, 2], [3, 4]])), [[1, 2], [3, 4]])


def test_object_arrays_are_refused() -> None:
    body = save(np.array([1, "a", None], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest) as info:
        decode(body)
    assert info.value.message == "NPY bodies holding object arrays are refused: loading them would unpickle data"


def test_raw_pickles_are_refused() -> None:
    import pickle

    with pytest.raises(BadRequest, match="does not start with the magic string"):
        decode(pickle.dumps([1, 2]))


def test_empty_and_truncated() -> None:
    with pytest.raises(BadRequest, match="^empty body$"):
        decode(b"")
    body = save(np.arange(10.0))
    with pytest.raises(BadRequest) as info:
        decode(body[:-5])
    assert info.value.message == (
        "invalid NPY: the header promises 80 bytes of data from byte offset 128, but only 75 follow"
    )
    with pytest.raises(BadRequest, match="^invalid NPY header: "):
        decode(body[:8])


def test_huge_shape_in_a_tiny_body_is_refused_before_allocating() -> None:
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    with pytest.raises(BadRequest, match="promises 8000000000000 bytes of data from byte offset 128, but only 0"):
        decode(out.getvalue())


def test_unsupported_format_version() -> None:
    body = bytearray(save(np.arange(3)))
    body[6] = 3
    with pytest.raises(BadRequest) as info:
        decode(bytes(body))
    assert info.value.message == "invalid NPY: format version 3.0 is not supported (use 1.0 or 2.0)"


def test_bad_header() -> None:
    body = bytearray(save(np.arange(3)))
    body[10:20] = b"!!!!!!!!!!"
    with pytest.raises(BadRequest, match="^invalid NPY header: "):
        decode(bytes(body))


def test_encode_pandas_and_lists() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
    np.testing.assert_array_equal(decode(CODEC.encode(frame, MEDIA)), [[1, 3], [2, 4]])
    np.testing.assert_array_equal(decode(CODEC.encode(pd.Series([0.5]), MEDIA)), [0.5])
    np.testing.assert_array_equal(decode(CODEC.encode([[1, 2]], MEDIA)), [[1, 2]])
    strings = decode(CODEC.encode(pd.DataFrame({"a": ["x", "yz"]}), MEDIA))
    assert strings.dtype.kind == "U" and strings.tolist() == [["x"], ["yz"]]


def test_encode_refuses_what_needs_pickle() -> None:
    with pytest.raises(ModelError, match="^cannot encode list as NPY: its values are Python objects"):
        CODEC.encode([1, "a", None], MEDIA)
    with pytest.raises(ModelError, match="^cannot encode list as NPY: "):
        CODEC.encode([[1, 2], [3]], MEDIA)
