"""The SageMaker inference toolkit's default decoders and encoders, reproduced exactly, only faster.

These back the fallbacks a user script gets when it lacks ``input_fn`` or ``output_fn``:
``application/json`` -> ``np.array(json.loads(body))``, ``text/csv`` -> ``np.genfromtxt(body,
delimiter=",")``, ``application/x-npy`` -> ``np.load(body)`` (never with pickles), and the reverse
encoders (JSON through ``tolist()``, CSV through ``np.savetxt(fmt="%s")``, NPY through ``np.save``).
Deliberate deviations from the toolkit: NPY bodies are loaded with ``allow_pickle=False``; NaN and
infinities encode to JSON ``null`` (the toolkit emits the invalid literal ``NaN``); a body that
cannot be decoded is a 400 naming where, not a 500.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np
import orjson

from mainsail.codecs.json import bad_json, loads_value
from mainsail.errors import BadRequest, UnsupportedAccept, UnsupportedContentType

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
OCTET_STREAM = "application/octet-stream"
ANY = "*/*"
UTF8_TYPES = (JSON, CSV)

DECODE_TYPES = (JSON, CSV, NPY, NPZ)
ENCODE_TYPES = (JSON, CSV, NPY)


def media_type_of(content_type: str | None) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``; ``None`` -> ``""``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _json_loads(text: str | bytes) -> Any:
    try:
        return loads_value(text if isinstance(text, str) else text.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise bad_json(exc) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def decode_json(text: str | bytes) -> np.ndarray:
    data = _json_loads(text)
    try:
        return np.array(data)
    except ValueError as exc:
        raise BadRequest(f"JSON body does not form an array: {exc}") from None


def _csv_fast(text: str, numeric: bool) -> np.ndarray | None:
    """One line of plain numbers -> the same 1-D array genfromtxt gives, or None: ``int64`` when every
    field is an integer (``dtype=None``, as the toolkit asks) unless ``numeric``, else ``float64``."""
    line = text[:-1] if text.endswith("\n") else text
    if not line or "\n" in line or "\r" in line or "#" in line or '"' in line or not line.isascii():
        return None  # (int() and float() read non-ASCII digits too, each its own way: genfromtxt decides)
    fields = line.split(",")
    for field in fields:
        stripped = field.strip()
        if not stripped or not (stripped[0].isdigit() or stripped[0] in "-+."):
            return None
        if "_" in stripped:
            return None
    if not numeric and all(_DIGITS.fullmatch(f.strip()) for f in fields) and not all(
            _INT.fullmatch(f.strip()) for f in fields):
        return None  # more than 18 digits (leading zeros too): genfromtxt tells int64 from float64
    try:  # int() and float() strip less than str.strip() does ("\x1f1"): leave such fields to genfromtxt
        if not numeric and all(_INT.fullmatch(f.strip()) for f in fields):
            ints = np.array([int(f) for f in fields], dtype=np.int64)
            return ints[0] if ints.size == 1 else ints
        values = np.array([float(f) for f in fields], dtype=np.float64)
    except ValueError:
        return None
    return values[0] if values.size == 1 else values


_INT = re.compile(r"[+-]?[0-9]{1,18}")
_DIGITS = re.compile(r"[+-]?[0-9]+")


def decode_csv(text: str, numeric: bool = False) -> np.ndarray:
    """The toolkit's ``np.genfromtxt(body, dtype=None, delimiter=",")``: each column's type inferred
    (integer-only CSV is ``int64``, ``True``/``False`` bool, words strings). Columns of different types,
    a structured array there (nothing can predict on it), are ``float64`` here; so is everything with
    ``numeric`` (genfromtxt's default dtype: a word is NaN)."""
    fast = _csv_fast(text, numeric)
    if fast is not None:
        return np.asarray(fast)
    return genfromtxt(text, numeric)


def genfromtxt(text: str, numeric: bool = False) -> np.ndarray:
    """:func:`decode_csv` without its fast path for one line of numbers, which gives what this gives."""
    with warnings.catch_warnings():
        # genfromtxt warns on an empty body; the toolkit returns the empty array it gives.
        warnings.simplefilter("ignore", UserWarning)
        try:
            if not numeric and text.strip():
                inferred: np.ndarray = np.genfromtxt(io.StringIO(text), dtype=None, delimiter=",", encoding=None)
                if inferred.dtype.names is None:
                    return inferred
            array: np.ndarray = np.genfromtxt(io.StringIO(text), delimiter=",")
            return array
        except (ValueError, TypeError) as exc:  # TypeError: genfromtxt's own type guessing, on some bodies
            detail = " ".join(str(exc).replace("Some errors were detected !", "").split())
            raise BadRequest(f"CSV body cannot be read as a numeric array: {detail}") from None


# what numpy.load raises besides ValueError for a broken file: a header its tokenizer cannot end
# (TokenError), one that is not a literal (SyntaxError, TypeError), a short read (EOFError, OSError)
_BROKEN = (OSError, EOFError, TypeError, SyntaxError, tokenize.TokenError)


def decode_npy(data: bytes) -> np.ndarray:
    try:
        array: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
        return array
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise BadRequest("NPY bodies holding pickled objects are refused") from None
        raise BadRequest(f"body is not a valid NPY array: {exc}") from None
    except _BROKEN as exc:
        raise BadRequest(f"body is not a valid NPY array: {exc}") from None


def decode_npz(data: bytes) -> Any:
    try:
        import scipy.sparse
    except ImportError:  # pragma: no cover - scipy ships with the tabular extra
        raise UnsupportedContentType(NPZ, list(DECODE_TYPES[:3])) from None
    try:
        return scipy.sparse.load_npz(io.BytesIO(data))
    except (ValueError, KeyError, zipfile.BadZipFile, zlib.error, *_BROKEN) as exc:  # a broken zip, or member
        raise BadRequest(f"body is not a valid NPZ sparse matrix: {exc}") from None


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not UTF-8: cannot decode byte 0x{data[exc.start]:02x} at byte offset "
                         f"{exc.start}") from None


def decode(data: str | bytes, content_type: str | None, numeric: bool = False) -> Any:
    """The toolkit's ``decoder.decode``: the body (``str`` for JSON/CSV) to a numpy array (CSV read as
    floats with ``numeric``: see :func:`decode_csv`)."""
    kind = media_type_of(content_type)
    if kind == JSON:
        return decode_json(data)
    if kind == CSV:
        return decode_csv(data if isinstance(data, str) else _utf8(data), numeric)
    if kind == NPY:
        return decode_npy(data if isinstance(data, bytes) else data.encode("utf-8"))
    if kind == NPZ:
        return decode_npz(data if isinstance(data, bytes) else data.encode("utf-8"))
    raise UnsupportedContentType(content_type, list(DECODE_TYPES))


def tolist(obj: Any) -> Any:
    """``orjson``'s ``default``: numpy arrays and scalars through their ``tolist()``."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def encode_json(prediction: Any) -> bytes:
    # ``default=tolist`` (not orjson's native numpy support) keeps the toolkit's numbers: a float32
    # goes through Python's float, exactly as ``json.dumps(default=tolist)`` writes it.
    return orjson.dumps(prediction, default=tolist)


def encode_csv(prediction: Any) -> bytes:
    stream = io.StringIO()
    np.savetxt(stream, prediction, delimiter=",", fmt="%s")
    return stream.getvalue().encode("utf-8")


def encode_npy(prediction: Any) -> bytes:
    stream = io.BytesIO()
    np.save(stream, prediction)
    return stream.getvalue()


_ENCODERS = {JSON: encode_json, CSV: encode_csv, NPY: encode_npy}


def parse_accept(accept: str) -> list[str]:
    """The toolkit's rule: split on commas, drop spaces (parameters and q-values are not honoured)."""
    return accept.replace(" ", "").split(",")


def encode(prediction: Any, accept: str) -> tuple[bytes, str]:
    """The toolkit's ``default_output_fn``: the first type in Accept that can be encoded."""
    for candidate in parse_accept(accept):
        encoder = _ENCODERS.get(media_type_of(candidate))
        if encoder is not None:
            return encoder(prediction), candidate
    raise UnsupportedAccept(accept, list(ENCODE_TYPES))
