"""``application/x-parquet`` (and its aliases): Parquet files <-> ``pandas.DataFrame`` via pyarrow."""

from __future__ import annotations

import io
from typing import Any

from mainsail.codecs.base import MediaType
from mainsail.errors import BadRequest, ModelError

_MAGIC = b"PAR1"


class ParquetCodec:
    """Parquet files, read and written with pyarrow.

    ``decode`` returns the file's table as a ``pandas.DataFrame``; an empty body is
    ``BadRequest("empty body")`` and a file pyarrow cannot read is a ``BadRequest`` with its reason.

    ``encode`` writes a ``DataFrame`` (its index dropped, column names as strings), a 2-D array or
    list of lists (columns ``"0".."n-1"``), a 1-D array, list or ``Series`` (one column), a list of
    dicts or a dict of columns. Anything else, or data pyarrow cannot store, is a ``ModelError``.
    """

    media_types: tuple[str, ...] = (
        "application/x-parquet",
        "application/parquet",
        "application/vnd.apache.parquet",
    )

    def decode(self, body: bytes, media_type: MediaType) -> Any:
        if not body:
            raise BadRequest("empty body")
        if len(body) < 12 or not (body.startswith(_MAGIC) and body.endswith(_MAGIC)):
            tail = max(len(body) - 4, 0)
            raise BadRequest(
                f"invalid Parquet: a Parquet file starts and ends with {_MAGIC!r} "
                f"(got {body[:4]!r} at byte offset 0 and {body[-4:]!r} at byte offset {tail})"
            )
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(body))
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise BadRequest(f"invalid Parquet: {exc}") from None
        try:
            return table.to_pandas()
        except (pa.ArrowException, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            # the file's own "pandas" metadata (index, column types), which pyarrow applies as written
            raise BadRequest(f"invalid Parquet: its pandas metadata cannot be applied: {exc!r}") from None

    def encode(self, obj: Any, media_type: MediaType) -> bytes:
        import pyarrow as pa
        import pyarrow.parquet as pq

        frame = _as_frame(obj)
        frame.columns = [name if isinstance(name, str) else str(name) for name in frame.columns.tolist()]
        out = io.BytesIO()
        try:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise ModelError(f"cannot encode {type(obj).__name__} as Parquet: {exc}") from None
        return out.getvalue()


def _as_frame(obj: Any) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return obj.copy(deep=False)
    if isinstance(obj, pd.Series):
        return obj.to_frame(name=obj.name if obj.name is not None else "0")
    if isinstance(obj, dict):
        return pd.DataFrame(obj)
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(item, dict) for item in obj):
        return pd.DataFrame(list(obj))
    if isinstance(obj, (list, tuple, np.ndarray, np.generic)):
        try:
            array = np.asarray(obj)
        except ValueError as exc:
            raise ModelError(f"cannot encode {type(obj).__name__} as Parquet: {exc}") from None
        if array.ndim == 0:
            array = array.reshape(1)
        if array.ndim == 1:
            return pd.DataFrame({"0": array})
        if array.ndim == 2:
            return pd.DataFrame(array, columns=[str(index) for index in range(array.shape[1])])
        raise ModelError(f"cannot encode a {array.ndim}-D array as Parquet; give at most 2 dimensions")
    raise ModelError(f"cannot encode {type(obj).__name__} as Parquet")
