"""``sagemaker_containers`` encoders and decoders (``beta.framework.encoders``), with the original's
functions, signatures and output. One deliberate difference: ``npy_to_numpy`` refuses pickled
arrays (the original loads them with ``allow_pickle=True``, which runs code from the request).
``array_to_recordio_protobuf`` writes with :mod:`mainsail.codecs.recordio`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from mainsail.codecs import recordio, toolkit

from . import _content_types, _errors


def array_to_npy(array_like: Any) -> bytes:
    """An array-like object in the NPY format."""
    return toolkit.encode_npy(array_like)


def npy_to_numpy(npy_array: bytes) -> np.ndarray:
    """An NPY body as a numpy array (never one holding pickled objects)."""
    try:
        array: np.ndarray = np.load(io.BytesIO(npy_array), allow_pickle=False)
    except ValueError as exc:
        raise _errors.ClientError(f"Error while reading NPY: {exc}") from None
    return array


def array_to_json(array_like: Any) -> str:
    """An array-like object as JSON (numpy values through ``tolist``)."""

    def default(value: Any) -> Any:
        if hasattr(value, "tolist"):
            return value.tolist()
        return json.JSONEncoder().default(value)

    return json.dumps(array_like, default=default)


def json_to_numpy(string_like: str | bytes, dtype: Any = None) -> np.ndarray:
    """A JSON body as ``np.array(json.loads(body), dtype=dtype)``."""
    return np.array(json.loads(string_like), dtype=dtype)


def csv_to_numpy(string_like: str, dtype: Any = None) -> np.ndarray:
    """A CSV body read with ``csv.reader``, squeezed, then ``astype(dtype)`` (float64 when None).
    As the original: values that are not numbers stay the strings they are when no ``dtype`` was
    asked for, and are a ``ClientError`` when one was."""
    try:
        reader = csv.reader(io.StringIO(string_like), delimiter=",", quotechar='"', doublequote=True, strict=True)
        array = np.array(list(reader)).squeeze()
    except Exception as exc:
        raise _errors.ClientError(f"Error while decoding csv: {exc}") from None
    try:
        return array.astype(dtype)
    except ValueError as exc:
        if dtype is not None:
            raise _errors.ClientError(f"Error while writing numpy array: {exc}. dtype is: {dtype}") from None
        return array


def array_to_csv(array_like: Any) -> str:
    """An array-like object as CSV rows (a 1-D array as one column)."""
    array = np.array(array_like)
    if len(array.shape) == 1:
        array = np.reshape(array, (array.shape[0], 1))
    try:
        stream = io.StringIO()
        writer = csv.writer(stream, lineterminator="\n", delimiter=",", quotechar='"', doublequote=True, strict=True)
        writer.writerows(array)
        return stream.getvalue()
    except csv.Error as exc:
        raise _errors.ClientError(f"Error while encoding csv: {exc}") from None


def array_to_recordio_protobuf(array_like: Any, labels: Any = None) -> bytes:
    """Rows (a 1-D array is one row; a SciPy sparse matrix stays sparse) as RecordIO-protobuf records,
    byte for byte what the SDK's ``RecordSerializer`` writes."""
    shape = getattr(array_like, "shape", None)
    if shape is None or len(shape) not in (1, 2):
        raise AssertionError("Expecting a 1 or 2 dimensional array")
    return recordio.write_records(array_like, labels)


_encoders_map: dict[str, Callable[[Any], Any]] = {
    _content_types.NPY: array_to_npy, _content_types.CSV: array_to_csv, _content_types.JSON: array_to_json}
_decoders_map: dict[str, Callable[[Any], Any]] = {
    _content_types.NPY: npy_to_numpy, _content_types.CSV: csv_to_numpy, _content_types.JSON: json_to_numpy}


def _codec(table: dict[str, Callable[[Any], Any]], content_type: str) -> Callable[[Any], Any]:
    """The function for ``content_type`` (matched exactly, as the original), or its 415."""
    try:
        return table[content_type]
    except KeyError:
        raise _errors.UnsupportedFormatError(content_type) from None


def decode(obj: Any, content_type: str) -> Any:
    """``obj`` decoded by the decoder of ``content_type``."""
    return _codec(_decoders_map, content_type)(obj)


def encode(array_like: Any, content_type: str) -> Any:
    """``array_like`` encoded for ``content_type``."""
    return _codec(_encoders_map, content_type)(array_like)
