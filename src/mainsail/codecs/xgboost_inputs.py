"""The XGBoost framework container's default ``input_fn`` (``sagemaker_xgboost_container.encoder.decode``).

It takes ``text/csv`` (``csv_to_dmatrix``: the delimiter sniffed from the first line, an empty field
read as NaN, every value as float64) and ``text/libsvm`` / ``text/x-libsvm`` (``libsvm_to_dmatrix``:
XGBoost's LIBSVM reader, whose rules :func:`libsvm_matrix` follows); every other type, JSON
included, is its ``UnsupportedFormatError`` (here a 415). Deliberate leniencies, each a 500 in the
container: trailing newlines are dropped (the container's split leaves an empty last row), a first
line whose delimiter cannot be sniffed (one column) is read with ``,``, and a body that is not
numbers or whose rows differ in length is a 400 naming the problem.
``application/x-recordio-protobuf`` is read by :mod:`mainsail.codecs.recordio` (labels ignored, as
there; an all-zero sparse record, an error in the container's current reader, is a row of zeros).
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from mainsail.codecs import recordio
from mainsail.codecs.base import MediaType, decode_text
from mainsail.codecs.recordio import RECORDIO_PROTOBUF
from mainsail.codecs.toolkit import CSV, media_type_of
from mainsail.errors import BadRequest, UnsupportedContentType

LIBSVM_TYPES = ("text/libsvm", "text/x-libsvm")
TYPES = (CSV, *LIBSVM_TYPES, RECORDIO_PROTOBUF)


def _text(data: str | bytes) -> str:
    return data if isinstance(data, str) else decode_text(bytes(data), MediaType(CSV))


def csv_rows(data: str | bytes) -> np.ndarray:
    """A CSV body as the container's ``csv_to_dmatrix`` reads it, before the DMatrix: 2-D float64."""
    text = _text(data).rstrip("\r\n")
    first = text.split("\n", 1)[0][:512]
    try:
        sniffed = csv.Sniffer().sniff(first).delimiter
    except csv.Error:
        sniffed = ","
    delimiter = "," if sniffed.isalnum() else sniffed
    rows = [["nan" if field == "" else field for field in line.rstrip("\r").split(delimiter)]
            for line in text.split("\n")]
    width = len(rows[0])
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise BadRequest(f"CSV line {number} has {len(row)} fields, the first has {width}")
    try:
        return np.array(rows).astype(np.float64)
    except ValueError as exc:
        raise BadRequest(f"CSV body cannot be read as numbers: {exc}") from None


def libsvm_matrix(data: str | bytes) -> Any:
    """A LIBSVM body as XGBoost's reader takes it (the container writes the body to a file and opens
    it with ``xgboost.DMatrix``): ``label index:value ...`` per line, indices as written (zero-based),
    a ``qid:`` pair and ``#`` comments skipped, an index not written is missing; a SciPy CSR matrix
    (XGBoost's text reader is deprecated since 3.1, so the body is parsed here)."""
    matrix, _ = libsvm_labeled(data)
    return matrix


def libsvm_labeled(data: str | bytes) -> tuple[Any, np.ndarray]:
    """:func:`libsvm_matrix` with each line's label: its first token when that is not an ``index:value``
    pair (a line without one has NaN)."""
    from scipy.sparse import csr_matrix

    indptr, indices, values = [0], [], []
    labels: list[float] = []
    width = 0
    for number, raw in enumerate(_text(data).splitlines(), 1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        label = float("nan")
        if ":" not in line[0]:
            try:
                label = float(line[0])
            except ValueError:
                raise BadRequest(f"LIBSVM line {number}: label {line[0]!r} is not a number") from None
        labels.append(label)
        for token in line[0 if ":" in line[0] else 1:]:
            key, colon, value = token.partition(":")
            if key == "qid":
                continue
            try:
                index, number_value = int(key), float(value)
            except ValueError:
                raise BadRequest(f"LIBSVM line {number}: {token!r} is not index:value") from None
            if not colon or index < 0:
                raise BadRequest(f"LIBSVM line {number}: {token!r} is not index:value")
            if index >= 2**32 - 1:  # XGBoost's feature indices are 32-bit
                raise BadRequest(f"LIBSVM line {number}: feature index {index} is beyond XGBoost's (at most 2**32 - 2)")
            indices.append(index)
            values.append(number_value)
            width = max(width, index + 1)
        indptr.append(len(indices))
    if len(indptr) == 1:
        raise BadRequest("LIBSVM body holds no rows")
    matrix = csr_matrix((np.array(values, dtype=np.float32), np.array(indices, dtype=np.int64),
                         np.array(indptr, dtype=np.int64)), shape=(len(indptr) - 1, width))
    return matrix, np.array(labels)


def rows(data: str | bytes, content_type: str | None) -> Any:
    """The container's decode, stopping before the DMatrix: a float64 array for CSV, a CSR matrix
    for LIBSVM, the records' rows for RecordIO-protobuf (:mod:`mainsail.codecs.recordio`); a 415 for any
    other type."""
    media = media_type_of(content_type)
    if media == CSV:
        return csv_rows(data)
    if media in LIBSVM_TYPES:
        return libsvm_matrix(data)
    if media == RECORDIO_PROTOBUF:
        return recordio.read_rows(data.encode() if isinstance(data, str) else bytes(data))
    raise UnsupportedContentType(content_type, list(TYPES))
