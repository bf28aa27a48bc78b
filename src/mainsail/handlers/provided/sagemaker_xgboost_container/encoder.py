"""``sagemaker_xgboost_container.encoder`` as scripts use it, on mainsail's readers of the same formats
(:mod:`mainsail.codecs.xgboost_inputs`): ``csv_to_dmatrix``, ``libsvm_to_dmatrix``, ``decode`` and
``json_to_jsonlines`` with the original's signatures and results. Differences: a trailing newline
in a CSV body is dropped (the original's split makes an empty last row, an error there); malformed
bodies raise mainsail's 400 and an unsupported type its 415 (the original's
``UnsupportedFormatError``); ``recordio_protobuf_to_dmatrix`` reads with :mod:`mainsail.codecs.recordio`
(an all-zero sparse record is a row of zeros, an error in the original's current reader).
"""

from __future__ import annotations

import io
import json
from typing import Any

import xgboost as xgb

from mainsail.codecs import recordio, xgboost_inputs


def csv_to_dmatrix(input: str | bytes, dtype: Any = None) -> xgb.DMatrix:  # noqa: A002 (the original's name)
    """A CSV body (its delimiter sniffed from the first line, empty fields NaN) as a DMatrix; ``dtype``
    upcasts the values as the original's ``astype(dtype)`` does."""
    rows = xgboost_inputs.csv_rows(input)
    return xgb.DMatrix(rows if dtype is None else rows.astype(dtype))


def libsvm_to_dmatrix(string_like: str | bytes) -> xgb.DMatrix:
    """A LIBSVM body as a DMatrix, as XGBoost's own reader reads it."""
    return xgb.DMatrix(xgboost_inputs.libsvm_matrix(string_like))


def recordio_protobuf_to_dmatrix(string_like: bytes) -> xgb.DMatrix:
    """A RecordIO-protobuf body (the SDK's ``RecordSerializer``) as a DMatrix of its feature rows."""
    return xgb.DMatrix(recordio.read_rows(bytes(string_like)))


def decode(obj: str | bytes, content_type: str) -> xgb.DMatrix:
    """A ``text/csv``, ``text/libsvm`` or ``application/x-recordio-protobuf`` body as a DMatrix; any other
    type is unsupported (415)."""
    return xgb.DMatrix(xgboost_inputs.rows(obj, content_type))


def json_to_jsonlines(json_data: dict[str, Any] | str | bytes) -> bytes:
    """A JSON answer with one key (``{"predictions": [...]}``) as JSON lines: one line per entry."""
    resp_dict = json_data if isinstance(json_data, dict) else json.loads(json_data)
    if len(resp_dict.keys()) != 1:
        raise ValueError("JSON response is not compatible for conversion to jsonlines.")
    out = io.BytesIO()
    for value in resp_dict.values():
        for entry in value:
            out.write(bytes(json.dumps(entry) + "\n", "UTF-8"))
    return out.getvalue()
