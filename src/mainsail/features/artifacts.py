"""Reading the data artifacts of a model directory, safely.

``.pkl`` artifacts (risk tables, imputation values, calibration tables) go through a restricted
unpickler that builds only plain data: dicts, lists, tuples, sets, strings, bytes, numbers, None,
and numpy scalars, dtypes and arrays. A pickle that asks for anything else (a function, a class, a
module attribute) is refused with an error naming the file and what it asked for: loading a model
must never run code hidden in a data file.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from mainsail.errors import ModelLoadError

RISK_TABLES = "risk_table_map.pkl"
IMPUTE_DICT = "impute_dict.pkl"
FEATURE_COLUMNS = "feature_columns.txt"
HYPERPARAMETERS = "hyperparameters.json"

_SAFE_BUILTINS = frozenset({
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
    "complex", "bool", "slice", "range",
})
_SAFE_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol-2 pickles spell bytes as _codecs.encode(text, "latin1")
    ("copy_reg", "_reconstructor"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
})
_NUMPY_SCALARS = frozenset({
    "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
    "float32", "float64", "longdouble", "complex64", "complex128", "str_", "bytes_",
})


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals plain data needs (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module == "builtins" and name in _SAFE_BUILTINS)
            or (module, name) in _SAFE_GLOBALS
            or (module in ("numpy", "numpy.dtypes") and (name in _NUMPY_SCALARS or name.endswith("DType")))
        )
        if not allowed:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only plain data is allowed")
        if module == "copy_reg":
            module = "copyreg"
        return super().find_class(module, name)


def load_data_pickle(path: Path) -> Any:
    """Unpickle ``path`` as plain data; any refusal or corruption is a ``ModelLoadError`` naming it."""
    try:
        with path.open("rb") as fh:
            return DataOnlyUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as exc:
        raise ModelLoadError(f"{path.name} is not a readable pickle: {type(exc).__name__}: {exc}") from None


def load_mapping_artifact(path: Path, what: str) -> dict[str, Any] | None:
    """A pickled ``{column: ...}`` artifact (risk tables, imputation values), or None when absent.

    Keys are made strings; anything but a dict is a ``ModelLoadError`` saying what ``what`` should be.
    """
    if not path.exists():
        return None
    raw = load_data_pickle(path)
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path.name} must hold a dict of column -> {what}")
    return {str(key): value for key, value in raw.items()}


def read_feature_columns(path: Path) -> list[str]:
    """``feature_columns.txt``: ``#`` comments, then ``<index>,<name>`` lines in column order.

    A line that does not split into exactly two parts on "," is skipped, as the reference
    training pipeline's readers do.
    """
    columns: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(",")
        if len(parts) != 2:
            continue
        columns.append(parts[1].strip())
    if not columns:
        raise ModelLoadError(f"{path.name} lists no feature columns")
    return columns


def write_feature_columns(path: Path, columns: list[str]) -> None:
    for name in columns:
        if "," in name or "\n" in name:
            raise ValueError(f"feature name {name!r} cannot be written to {path.name}: it holds a comma")
    lines = ["# Feature columns in exact order required for model inference",
             "# DO NOT MODIFY THE ORDER OF THESE COLUMNS",
             "# Each line contains: <column_index>,<column_name>"]
    lines += [f"{i},{name}" for i, name in enumerate(columns)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_hyperparameters(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path.name} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} must hold a JSON object")
    return data
