"""``application/x-recordio-protobuf``: SageMaker's RecordIO-framed ``aialgs.data.Record`` messages.

What the SageMaker SDK's ``RecordSerializer`` (``write_numpy_to_dense_tensor`` /
``write_spmatrix_to_sparse_tensor``) writes and the XGBoost container's ``recordio_protobuf_to_dmatrix``
reads: each record is framed by the magic ``0xCED7230A`` and its length (little-endian ``uint32``
each), padded to 4 bytes; the payload is a ``Record`` whose ``features["values"]`` holds one row as a
``Float32Tensor``, ``Float64Tensor`` or ``Int32Tensor`` (sparse when it has ``keys``: the column of each
value, with ``shape`` the row's width). Labels are ignored, as the container ignores them.

The schema (``record.proto`` of the SDK, proto2) is built here from a descriptor at run time, so no
generated code is vendored; it needs the ``protobuf`` package.
"""

from __future__ import annotations

import struct
from functools import cache
from typing import Any

import numpy as np

from mainsail.errors import BadRequest, UnsupportedContentType

RECORDIO_PROTOBUF = "application/x-recordio-protobuf"
MAGIC = 0xCED7230A
_HEADER = struct.Struct("<II")


@cache
def record_class() -> Any:
    """The ``aialgs.data.Record`` message class."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        raise UnsupportedContentType(RECORDIO_PROTOBUF, ["(with the protobuf package installed) " + RECORDIO_PROTOBUF]
                                     ) from None
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="mainsail_aialgs_record.proto", package="aialgs.data",
                                               syntax="proto2")

    def tensor(name: str, value_type: int) -> None:
        message = proto.message_type.add(name=name)
        for number, (field, kind) in enumerate(
                [("values", value_type), ("keys", F.TYPE_UINT64), ("shape", F.TYPE_UINT64)], 1):
            added = message.field.add(name=field, number=number, type=kind, label=F.LABEL_REPEATED)
            added.options.packed = True

    tensor("Float32Tensor", F.TYPE_FLOAT)
    tensor("Float64Tensor", F.TYPE_DOUBLE)
    tensor("Int32Tensor", F.TYPE_INT32)
    raw = proto.message_type.add(name="Bytes")
    raw.field.add(name="value", number=1, type=F.TYPE_BYTES, label=F.LABEL_REPEATED)
    raw.field.add(name="content_type", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value = proto.message_type.add(name="Value")
    value.oneof_decl.add(name="value")
    for name, number, type_name in [("float32_tensor", 2, "Float32Tensor"), ("float64_tensor", 3, "Float64Tensor"),
                                    ("int32_tensor", 7, "Int32Tensor"), ("bytes", 9, "Bytes")]:
        value.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                        type_name=f".aialgs.data.{type_name}", oneof_index=0)
    record = proto.message_type.add(name="Record")
    for name, number in [("features", 1), ("label", 2)]:
        entry = record.nested_type.add(name=f"{name.title()}Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                        type_name=".aialgs.data.Value")
        record.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                         type_name=f".aialgs.data.Record.{name.title()}Entry")
    for name, number in [("uid", 3), ("metadata", 4), ("configuration", 5)]:
        record.field.add(name=name, number=number, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("aialgs.data.Record"))


def split_records(body: bytes) -> list[bytes]:
    """The payloads of a RecordIO body; a 400 naming the offset where the framing breaks."""
    view = memoryview(body)
    out: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + _HEADER.size > len(view):
            raise BadRequest(f"RecordIO body ends inside a record header at byte {offset}")
        magic, length = _HEADER.unpack_from(view, offset)
        if magic != MAGIC:
            raise BadRequest(f"RecordIO body: no record magic (0xced7230a) at byte {offset}")
        start = offset + _HEADER.size
        if start + length > len(view):
            raise BadRequest(f"RecordIO body: the record at byte {offset} is truncated ({length} bytes announced)")
        out.append(bytes(view[start:start + length]))
        offset = start + ((length + 3) & ~3)
    if not out:
        raise BadRequest("RecordIO body holds no records")
    return out


_TENSORS = {"float32_tensor": np.float32, "float64_tensor": np.float64, "int32_tensor": np.int32}


def read_rows(body: bytes) -> Any:
    """The feature rows of a RecordIO-protobuf body: a 2-D array when every record is dense, else a SciPy
    CSR matrix (a sparse record's width is its ``shape``, else its largest key + 1)."""
    return read_labeled(body)[0]


def read_labeled(body: bytes) -> tuple[Any, np.ndarray]:
    """:func:`read_rows` with each record's ``label["values"]`` (its first value; NaN where none)."""
    cls = record_class()
    labels: list[float] = []
    entries: list[tuple[np.ndarray, np.ndarray | None, int]] = []  # values, keys (None: dense), width
    for number, payload in enumerate(split_records(body), 1):
        record = cls()
        try:
            record.ParseFromString(payload)
        except Exception as exc:  # google.protobuf.message.DecodeError
            raise BadRequest(f"RecordIO record {number} is not a protobuf Record: {exc}") from None
        if "values" not in record.features:
            raise BadRequest(f"RecordIO record {number} has no features['values']")
        label = record.label["values"] if "values" in record.label else None
        label_kind = label.WhichOneof("value") if label is not None else None
        label_values = getattr(label, label_kind).values if label is not None and label_kind in _TENSORS else []
        labels.append(float(label_values[0]) if len(label_values) else float("nan"))
        value = record.features["values"]
        kind = value.WhichOneof("value")
        if kind not in _TENSORS:
            raise BadRequest(f"RecordIO record {number}: features['values'] is {kind or 'empty'}, not a tensor")
        tensor = getattr(value, kind)
        values = np.asarray(tensor.values, dtype=_TENSORS[kind])
        if tensor.keys or (tensor.shape and len(tensor.values) != int(np.prod(list(tensor.shape)))):
            keys = np.asarray(tensor.keys, dtype=np.int64)
            if len(keys) != len(values):
                raise BadRequest(f"RecordIO record {number}: {len(keys)} keys for {len(values)} values")
            width = int(tensor.shape[0]) if tensor.shape else (int(keys.max()) + 1 if len(keys) else 0)
            if len(keys) and int(keys.max()) >= width:
                raise BadRequest(f"RecordIO record {number}: key {int(keys.max())} is outside its shape {width}")
            entries.append((values, keys, width))
        else:
            entries.append((values, None, len(values)))
    if any(keys is not None for _, keys, _ in entries):
        from scipy.sparse import csr_matrix

        width = max(w for _, _, w in entries)
        rows = [(v, np.arange(len(v), dtype=np.int64) if k is None else k, width) for v, k, _ in entries]
        indptr = np.cumsum([0] + [len(k) for _, k, _ in rows])
        data = np.concatenate([v for v, _, _ in rows]) if rows else np.array([])
        matrix = csr_matrix((data, np.concatenate([k for _, k, _ in rows]), indptr), shape=(len(rows), width))
        return matrix, np.array(labels)
    widths = {w for _, _, w in entries}
    if len(widths) != 1:
        raise BadRequest(f"RecordIO records have different lengths: {sorted(widths)}")
    return np.vstack([v for v, _, _ in entries]), np.array(labels)


def write_records(array: Any, labels: Any = None) -> bytes:
    """Rows as the SDK writes them: ``write_numpy_to_dense_tensor`` for an array (a 1-D array is one row),
    ``write_spmatrix_to_sparse_tensor`` for a SciPy sparse matrix (values, their columns as keys, the
    width as shape); float32 / float64 / integer tensors by dtype, one label per row when given."""
    sparse = hasattr(array, "tocsr")
    matrix: Any = array.tocsr() if sparse else np.asarray(array)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2:
        raise ValueError("Array must be a Matrix")
    label_array = np.asarray(labels) if labels is not None else None
    if label_array is not None and (label_array.ndim != 1 or label_array.shape[0] != matrix.shape[0]):
        raise ValueError(f"Label shape {label_array.shape} not compatible with array shape {matrix.shape}")
    cls = record_class()
    out = bytearray()
    kind = _tensor_kind(matrix.dtype)
    label_kind = _tensor_kind(label_array.dtype) if label_array is not None else None
    for index in range(matrix.shape[0]):
        record = cls()
        tensor = getattr(record.features["values"], kind)
        if sparse:
            row = matrix.getrow(index)
            tensor.values.extend(row.data.tolist())
            tensor.keys.extend(row.indices.astype(np.uint64).tolist())
            tensor.shape.extend([matrix.shape[1]])
        else:
            tensor.values.extend(matrix[index].tolist())
        if label_array is not None and label_kind is not None:
            getattr(record.label["values"], label_kind).values.extend([label_array[index].item()])
        payload = record.SerializeToString()
        out += _HEADER.pack(MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4)
    return bytes(out)


def _tensor_kind(dtype: np.dtype) -> str:
    if dtype == np.float32:
        return "float32_tensor"
    if dtype == np.float64:
        return "float64_tensor"
    if np.issubdtype(dtype, np.integer):
        return "int32_tensor"
    raise ValueError(f"Unsupported dtype {dtype} on array")
