"""Targets for the request-body codecs (``mainsail.codecs``): every decoder, and the Content-Type / Accept
parsing that picks one.

The invariant of every decoder: a body is decoded, or refused with a client error (a ``MainsailError``
answering 4xx: ``BadRequest``, ``UnsupportedContentType``); nothing else escapes (no ``IndexError``,
``RecursionError``, ``MemoryError``...). Where two code paths promise the same reading of a body, they
are checked against each other.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pandas as pd

import mainsail.codecs.huggingface as huggingface
import mainsail.codecs.recordio as recordio
import mainsail.codecs.toolkit as toolkit
import mainsail.codecs.xgboost_inputs as xgboost_inputs
from fuzz import Target, check
from fuzz.inputs import Reader
from mainsail.codecs import CsvCodec, JsonCodec, JsonLinesCodec, MediaType, NpyCodec, ParquetCodec, default_registry
from mainsail.codecs.base import parse_accept, parse_media_type
from mainsail.codecs.csv import decode_record
from mainsail.errors import MainsailError, UnsupportedAccept
from mainsail.handlers.tabular import plain_csv_line

T = TypeVar("T")

CHARSETS = ("utf-8", "utf-16", "latin-1", "ascii", "utf-32-be", "x-no-such-charset")
REGISTRY = default_registry()
DEEP = b"[" * 1100 + b"]" * 1100  # deeper than orjson's 1024 levels: the stdlib parser is tried next
FRAME = pd.DataFrame({"a": [1, 2], "b": [0.5, float("nan")], "c": ["x", "y,z"]})


def decoded(decode: Callable[[], T]) -> T | None:
    """``decode()``, or None when it refuses the input with a client error (anything else escapes)."""
    try:
        return decode()
    except MainsailError as exc:
        check(400 <= exc.status_code < 500, f"{type(exc).__name__} answers {exc.status_code}: {exc}")
        return None


def _media(reader: Reader, kind: str) -> MediaType:
    charset = reader.pick(CHARSETS)
    return MediaType(kind) if charset == "utf-8" else MediaType(kind, {"charset": charset})


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, str) != isinstance(b, str):
        return False
    return bool(a == b) and isinstance(a, float) == isinstance(b, float)


# -- text/csv ------------------------------------------------------------------------------------------


def csv(data: bytes) -> None:
    frame = decoded(lambda: CsvCodec().decode(data, MediaType("text/csv")))
    if frame is not None:
        check(isinstance(frame, pd.DataFrame) and len(frame) >= 1, "a decoded CSV body is a non-empty frame")
    # the tabular handler reads a one-line body with decode_record, without pandas: it must read the
    # values the codec reads
    line = plain_csv_line(data, "text/csv")
    if line is None:
        return
    record = decoded(lambda: decode_record(line))
    if frame is None or record is None:
        check(frame is None and record is None or frame is not None and len(frame) != 1,
              f"CsvCodec {'refuses' if frame is None else 'reads'} a one-line body that decode_record "
              f"{'reads' if frame is None else 'refuses'}")
        return
    row = [frame.iat[0, i].item() if isinstance(frame.iat[0, i], np.generic) else frame.iat[0, i]
           for i in range(frame.shape[1])]
    check(len(row) == len(record) and all(_same_value(a, b) for a, b in zip(row, record, strict=True)),
          f"decode_record reads {record!r}, CsvCodec {row!r}")


def _csv_seeds() -> list[bytes]:
    return [b"1,2,3\n4,5,6\n", b'"a,b",1.5,\n"x""y",-2,nan\n', b"\xef\xbb\xbf1;2\r\n", b"a\n\nb\n", b"1e5, inf ,-0"]


# -- application/json and JSON Lines -------------------------------------------------------------------


def json(data: bytes) -> None:
    reader = Reader(data)
    media = _media(reader, "application/json")
    frame = decoded(lambda: JsonCodec().decode(reader.rest(), media))
    check(frame is None or isinstance(frame, pd.DataFrame), "a decoded JSON body is a frame")


def jsonlines(data: bytes) -> None:
    reader = Reader(data)
    media = _media(reader, "application/jsonlines")
    frame = decoded(lambda: JsonLinesCodec().decode(reader.rest(), media))
    check(frame is None or isinstance(frame, pd.DataFrame), "a decoded JSON Lines body is a frame")


def _json_seeds() -> list[bytes]:
    bodies = [b'{"a": 1, "b": [1, 2]}', b'[{"a": 1}, {"b": 2.5e300}]', b'{"instances": [[1, 2], [3, 4]]}',
              b"[1, 2, NaN, Infinity]", b'{"a":1}\n{"a":2}\n', b"12345678901234567890123", b'"\\ud800"']
    return [b"\0" + body for body in [*bodies, DEEP]] + [b"\1" + '{"ключ": "é"}'.encode("utf-16")]


def _jsonlines_seeds() -> list[bytes]:
    bodies = [b'{"a": 1}\n{"a": 2, "b": null}\n', b"[1, 2]\n[3, 4]\n", b"1\n\n2\n", b'"x"\r\n{"y": 1}', b"1\n" + DEEP]
    return [b"\0" + body for body in bodies]


# -- application/x-npy ----------------------------------------------------------------------------------


def npy(data: bytes) -> None:
    array = decoded(lambda: NpyCodec().decode(data, MediaType("application/x-npy")))
    if array is None:
        return
    check(isinstance(array, np.ndarray) and not array.dtype.hasobject, "a decoded NPY body is a plain array")
    # the toolkit's fallback decoder reads NPY with numpy.load: where both read a body, they agree
    loaded = decoded(lambda: toolkit.decode_npy(data))
    if loaded is not None:
        check(loaded.dtype == array.dtype and loaded.shape == array.shape
              and np.array_equal(loaded, array, equal_nan=array.dtype.kind in "fc"),
              f"NpyCodec reads {array.dtype}{array.shape}, numpy.load {loaded.dtype}{loaded.shape}")


def _npy(array: Any) -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def _npy_seeds() -> list[bytes]:
    return [_npy([[1.5, 2.0], [3.0, float("nan")]]), _npy(np.arange(6, dtype=">i2").reshape(2, 3).T),
            _npy(np.array(["a", "bc"])), _npy(np.zeros((0, 3))), _npy(np.float32(7))]


# -- application/x-parquet ------------------------------------------------------------------------------


def parquet(data: bytes) -> None:
    frame = decoded(lambda: ParquetCodec().decode(data, MediaType("application/x-parquet")))
    check(frame is None or isinstance(frame, pd.DataFrame), "a decoded Parquet body is a frame")


def _parquet_seeds() -> list[bytes]:
    codec, media = ParquetCodec(), MediaType("application/x-parquet")
    return [codec.encode(FRAME, media), codec.encode(np.arange(4.0).reshape(2, 2), media),
            codec.encode([{"a": None, "b": "é"}], media)]


# -- application/x-recordio-protobuf --------------------------------------------------------------------


def recordio_protobuf(data: bytes) -> None:
    read = decoded(lambda: recordio.read_labeled(data))
    if read is not None:
        rows, labels = read
        check(rows.shape[0] == len(labels), "one label per RecordIO record")


def _recordio_seeds() -> list[bytes]:
    from scipy.sparse import csr_matrix

    return [recordio.write_records(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), [0, 1]),
            recordio.write_records(np.array([[1, 2, 3]], dtype=np.int32)),
            recordio.write_records(csr_matrix(np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]])), [1.0, 0.0])]


# -- the SageMaker toolkits' default decoders -----------------------------------------------------------


def toolkit_default(data: bytes) -> None:
    reader = Reader(data)
    kind = reader.pick(toolkit.DECODE_TYPES)
    as_text = reader.flag() and kind in toolkit.UTF8_TYPES
    body = reader.rest()
    if as_text:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return
        numeric = reader.flag()
        array = decoded(lambda: toolkit.decode(text, kind, numeric=numeric))
        if kind == toolkit.CSV and array is not None:  # the fast path for one line reads as genfromtxt does
            slow = decoded(lambda: toolkit.genfromtxt(text, numeric))
            check(slow is not None and slow.dtype == array.dtype and slow.shape == array.shape
                  and np.array_equal(slow, array, equal_nan=array.dtype.kind == "f"),
                  f"decode_csv reads {array!r}, genfromtxt {slow!r}")
    else:
        decoded(lambda: toolkit.decode(body, kind))


def _toolkit_seeds() -> list[bytes]:
    from scipy.sparse import csr_matrix, save_npz

    npz = io.BytesIO()
    save_npz(npz, csr_matrix(np.eye(3)))
    return [b"\0\0[[1, 2], [3, 4]]", b"\0\0" + DEEP, b"\1\1" + b"1,2,3\n4,5,6\n", b"\1\0a,True,1.5\nb,False,2\n",
            b"\2\0" + _npy([1, 2, 3]), b"\3\0" + npz.getvalue()]


def xgboost(data: bytes) -> None:
    reader = Reader(data)
    kind = reader.pick(xgboost_inputs.TYPES)
    decoded(lambda: xgboost_inputs.rows(reader.rest(), kind))


def _xgboost_seeds() -> list[bytes]:
    return [b"\0" + b"1,2,3\n4,,6\n", b"\0" + b"1\t2\n3\t4", b"\1" + b"1 0:1.5 3:2\n0 qid:1 1:1 # c\n",
            b"\3" + recordio.write_records(np.array([[1.0, 2.0]]))]


def hugging_face(data: bytes) -> None:
    reader = Reader(data)
    kind = reader.pick((toolkit.JSON, toolkit.CSV, toolkit.NPY, "audio/wav"))
    decoded(lambda: huggingface.decode(reader.rest(), kind))


def _hugging_face_seeds() -> list[bytes]:
    return [b'\0{"inputs": "hi", "parameters": {"top_k": 2}}', b"\0" + DEEP, b"\1inputs,x\nhello,1\n",
            b"\1question,context\nwho?,me\n", b"\2" + _npy([[1, 2]])]


# -- Content-Type and Accept ----------------------------------------------------------------------------


def media_types(data: bytes) -> None:
    header, _, body = data.partition(b"\n")
    value = header.decode("latin-1")
    parse_media_type(value)
    ranges = parse_accept(value)
    qualities = [float(r.params.get("q", "1")) if _is_float(r.params.get("q", "1")) else 1.0 for r in ranges]
    check(all(q > 0 for q in qualities), "a range with q=0 is dropped")
    frame = decoded(lambda: REGISTRY.decode(body, value))
    check(frame is None or isinstance(frame, (pd.DataFrame, np.ndarray)), "a decoded body is a frame or an array")
    try:
        encoded = REGISTRY.encode(FRAME, value)
    except UnsupportedAccept:
        return
    check(encoded.content_type in REGISTRY.encoder_types(), f"encoded as {encoded.content_type!r}")


def _is_float(text: str) -> bool:
    try:
        return not math.isnan(float(text))
    except ValueError:
        return False


def _media_type_seeds() -> list[bytes]:
    return [b"text/csv; charset=utf-8\n1,2\n", b'application/json;q=0.5, text/csv;q="0.9"\n{"a": 1}',
            b"*/*\n", b"application/*;q=0, text/*\n1", b"Application/JSONLines\n[1]\n"]


CODEC = "a 4xx MainsailError (BadRequest, UnsupportedContentType) or a decoded value; nothing else"
TARGETS = [
    Target("csv", csv, f"{CODEC}; a one-line body reads as decode_record (the tabular fast path) reads it",
           _csv_seeds),
    Target("json", json, CODEC, _json_seeds),
    Target("jsonlines", jsonlines, CODEC, _jsonlines_seeds),
    Target("npy", npy, f"{CODEC}; the values numpy.load reads (toolkit.decode_npy), where both read it", _npy_seeds),
    Target("parquet", parquet, CODEC, _parquet_seeds, max_len=8192),
    Target("recordio", recordio_protobuf, f"{CODEC}; one label per record", _recordio_seeds),
    Target("toolkit", toolkit_default, f"{CODEC} (JSON, CSV, NPY, NPZ; str and bytes bodies); decode_csv's "
           "fast path reads what numpy.genfromtxt reads", _toolkit_seeds),
    Target("xgboost_inputs", xgboost, f"{CODEC} (CSV, LIBSVM, RecordIO-protobuf)", _xgboost_seeds),
    Target("huggingface", hugging_face, f"{CODEC} (JSON, CSV, NPY, audio)", _hugging_face_seeds),
    Target("media_types", media_types,
           "Content-Type / Accept parsing never raises; the registry decodes or answers 4xx; an Accept picks "
           "a registered encoder or is UnsupportedAccept", _media_type_seeds),
]
