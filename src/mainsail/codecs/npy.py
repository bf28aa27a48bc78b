"""``application/x-npy``: NumPy ``.npy`` files <-> ``numpy.ndarray``, never through pickle."""

from __future__ import annotations

import io
import math
import sys
import tokenize
from typing import Any

from mainsail.codecs.base import MediaType
from mainsail.errors import BadRequest, ModelError

_MAGIC = b"\x93NUMPY"


class NpyCodec:
    """NumPy ``.npy`` files.

    ``decode`` returns the array, read with ``allow_pickle=False``: a body that is not an ``.npy``
    file, is truncated, or holds an object (pickled) array is a ``BadRequest``; pickles are refused
    because loading one runs arbitrary code.

    ``encode`` writes ``numpy.asarray(obj)`` (a ``DataFrame``'s values) with ``numpy.save``. Arrays
    that would need pickling (Python objects) are a ``ModelError``, except arrays holding only strings,
    which are stored as a fixed-width unicode array instead.
    """

    media_types: tuple[str, ...] = ("application/x-npy",)

    def decode(self, body: bytes, media_type: MediaType) -> Any:
        if not body:
            raise BadRequest("empty body")
        if not body.startswith(_MAGIC):
            raise BadRequest(f"invalid NPY: the body does not start with the magic string {_MAGIC!r}")
        import numpy as np

        shape, fortran_order, dtype, offset = _read_header(body)
        if dtype.hasobject:
            raise BadRequest("NPY bodies holding object arrays are refused: loading them would unpickle data")
        if dtype.subdtype is not None:  # numpy.save never writes one: an array's dtype is never a subarray
            raise BadRequest(f"invalid NPY: the header's dtype {dtype} is a subarray type")
        if any(size < 0 for size in shape):
            raise BadRequest(f"invalid NPY: the header's shape {shape} has a negative dimension")
        count = math.prod(shape)
        needed = count * dtype.itemsize
        # checked before allocating anything: a tiny body must not make us allocate a huge array
        if len(body) - offset < needed:
            raise BadRequest(
                f"invalid NPY: the header promises {needed} bytes of data from byte offset {offset}, "
                f"but only {len(body) - offset} follow"
            )
        if needed == 0:
            return np.empty(shape, dtype=dtype, order="F" if fortran_order else "C")
        flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
        if fortran_order:
            return flat.reshape(shape[::-1]).transpose().copy(order="F")
        return flat.reshape(shape).copy()

    def encode(self, obj: Any, media_type: MediaType) -> bytes:
        import numpy as np

        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(obj, (pd.DataFrame, pd.Series, pd.Index)):
            obj = obj.to_numpy()
        try:
            array = np.asarray(obj)
            if array.dtype.hasobject and all(isinstance(value, str) for value in array.flat):
                array = array.astype(str)
        except ValueError as exc:
            raise ModelError(f"cannot encode {type(obj).__name__} as NPY: {exc}") from None
        if array.dtype.hasobject:
            raise ModelError(
                f"cannot encode {type(obj).__name__} as NPY: its values are Python objects, "
                "which NPY stores only as pickles (refused)"
            )
        out = io.BytesIO()
        np.save(out, array, allow_pickle=False)
        return out.getvalue()


def _read_header(body: bytes) -> tuple[tuple[int, ...], bool, Any, int]:
    """(shape, fortran_order, dtype, data offset) from an ``.npy`` header; ``BadRequest`` if broken."""
    import numpy as np

    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            number = f"{version[0]}.{version[1]}"
            raise BadRequest(f"invalid NPY: format version {number} is not supported (use 1.0 or 2.0)")
    except (ValueError, TypeError, SyntaxError, OSError, EOFError, tokenize.TokenError) as exc:
        raise BadRequest(f"invalid NPY header: {exc}") from None
    return tuple(shape), bool(fortran_order), dtype, stream.tell()
