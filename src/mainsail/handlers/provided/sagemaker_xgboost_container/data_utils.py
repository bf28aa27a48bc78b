"""``sagemaker_xgboost_container.data_utils`` as XGBoost script-mode scripts use it (provided by mainsail).

Such a script trains and serves from one file: its training part (under ``if __name__ ==
"__main__"``) calls ``get_dmatrix`` / ``get_size`` / ``get_content_type``, and the import at its top
must work when the same file is served. The functions here do what the container's do in *file mode*,
on mainsail's readers: a path is a file or a folder (files three levels deep, names starting with
``.`` or ``_`` skipped), CSV has the label in column 0 (and the instance weight in column 1 with
``csv_weights=1``), Parquet the label in column 0, LIBSVM a label first on each line, RecordIO-protobuf
its records' labels. Pipe mode is a SageMaker training channel: asked for here, it is a ``UserError``.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from mainsail.codecs import recordio, xgboost_inputs

logger = logging.getLogger(__name__)

CSV = "csv"
LIBSVM = "libsvm"
PARQUET = "parquet"
RECORDIO_PROTOBUF = "recordio-protobuf"
MAX_FOLDER_DEPTH = 3

_MEDIA = {
    CSV: CSV, "text/csv": CSV,
    LIBSVM: LIBSVM, "text/libsvm": LIBSVM, "text/x-libsvm": LIBSVM,
    PARQUET: PARQUET, "application/x-parquet": PARQUET,
    RECORDIO_PROTOBUF: RECORDIO_PROTOBUF, "application/x-recordio-protobuf": RECORDIO_PROTOBUF,
}
VALID_CONTENT_TYPES = list(_MEDIA)


class UserError(Exception):
    """The container's ``sagemaker_algorithm_toolkit.exceptions.UserError``: the data's fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _parse(value: str) -> tuple[str, dict[str, str]]:
    """``text/csv; label_size=1`` → ``("text/csv", {"label_size": "1"})`` (as ``cgi.parse_header``)."""
    media, _, rest = value.partition(";")
    params = {}
    for part in rest.split(";"):
        key, eq, val = part.partition("=")
        if eq:
            params[key.strip()] = val.strip().strip('"')
    return media.strip(), params


def get_content_type(content_type_cfg_val: str | None) -> str:
    """``csv``, ``libsvm``, ``parquet`` or ``recordio-protobuf`` for a channel's content type (None is
    ``libsvm``); a CSV ``label_size`` other than 1, or any other type, is a ``UserError``."""
    if content_type_cfg_val is None:
        return LIBSVM
    media, params = _parse(content_type_cfg_val.lower())
    kind = _MEDIA.get(media)
    if kind is None:
        raise UserError(f"{content_type_cfg_val} is not an accepted ContentType: {', '.join(VALID_CONTENT_TYPES)}.")
    if kind == CSV and params.get("label_size", "1") != "1":
        raise UserError(f"{content_type_cfg_val} is not an accepted csv ContentType. "
                        "Optional parameter label_size must be equal to 1")
    return kind


def _is_data_file(name: str) -> bool:
    """Not hidden (``.`` / ``_``), not an XGBoost cache file (``dtrain``/``dval`` ``.cache``)."""
    return not name.startswith((".", "_")) and not (".cache" in name and ("dtrain" in name or "dval" in name))


def _data_files(data_path: str | list[str]) -> list[Path]:
    paths = data_path if isinstance(data_path, list) else [data_path]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
            continue
        if not path.is_dir():
            continue
        for root, dirs, files in os.walk(path):
            depth = len(Path(root).relative_to(path).parts) + 1
            if depth >= MAX_FOLDER_DEPTH:
                if dirs:
                    logger.warning("The depth of folder %s exceed the limit %d. Files in deeper sub dirs won't be "
                                   "loaded.", path, MAX_FOLDER_DEPTH)
                dirs[:] = []
            found.extend(Path(root) / name for name in sorted(files) if _is_data_file(name))
    return found


def _csv_dmatrix(files: list[Path], csv_weights: int) -> xgb.DMatrix:
    try:
        data = np.vstack([np.atleast_2d(xgboost_inputs.csv_rows(f.read_bytes())) for f in files])
    except Exception as exc:
        raise UserError(f"Failed to load csv data with exception:\n{exc}") from None
    if csv_weights == 1:
        return xgb.DMatrix(data[:, 2:], label=data[:, 0], weight=data[:, 1])
    return xgb.DMatrix(data[:, 1:], label=data[:, 0])


def _libsvm_dmatrix(files: list[Path]) -> xgb.DMatrix:
    from scipy.sparse import vstack

    try:
        parts = [xgboost_inputs.libsvm_labeled(f.read_bytes()) for f in files]
        width = max(m.shape[1] for m, _ in parts)
        for m, _ in parts:
            m.resize((m.shape[0], width))  # files may end at different columns
        matrix = vstack([m for m, _ in parts]).tocsr()
    except Exception as exc:
        raise UserError(f"Failed to load libsvm data with exception:\n{exc}") from None
    return xgb.DMatrix(matrix, label=np.concatenate([labels for _, labels in parts]))


def _parquet_dmatrix(files: list[Path]) -> xgb.DMatrix:
    import pyarrow.parquet as pq

    try:
        data = np.vstack([pq.read_table(f).to_pandas().to_numpy() for f in files])
    except Exception as exc:
        raise UserError(f"Failed to load parquet data with exception:\n{exc}") from None
    return xgb.DMatrix(data[:, 1:], label=data[:, 0])


def _recordio_dmatrix(files: list[Path]) -> xgb.DMatrix:
    from scipy.sparse import issparse, vstack

    try:
        parts = [recordio.read_labeled(f.read_bytes()) for f in files]
        rows: Any = (vstack([p[0] for p in parts]).tocsr() if any(issparse(p[0]) for p in parts)
                     else np.vstack([p[0] for p in parts]))
    except Exception as exc:
        raise UserError(f"Failed to load recordio-protobuf data with exception:\n{exc}") from None
    return xgb.DMatrix(rows, label=np.concatenate([p[1] for p in parts]))


def get_dmatrix(data_path: str | list[str], content_type: str, csv_weights: int = 0,
                is_pipe: bool = False) -> xgb.DMatrix | None:
    """A DMatrix (features and labels) of the data under ``data_path``; None when there is none."""
    if is_pipe:
        raise UserError("Pipe mode reads a SageMaker training channel, which mainsail does not provide: "
                        "read the files in file mode")
    files = _data_files(data_path)
    if not files:
        logger.info("File path %s does not exist!", data_path)
        return None
    kind = get_content_type(content_type)
    readers = {CSV: lambda: _csv_dmatrix(files, csv_weights), LIBSVM: lambda: _libsvm_dmatrix(files),
               PARQUET: lambda: _parquet_dmatrix(files), RECORDIO_PROTOBUF: lambda: _recordio_dmatrix(files)}
    dmatrix = readers[kind]()
    if dmatrix.get_label().size == 0:
        raise UserError("Got input data without labels. Please check the input data set.")
    return dmatrix


def get_size(data_path: str, is_pipe: bool = False) -> int:
    """Bytes of data under ``data_path`` (0 when it does not exist); a hidden file is a ``UserError``."""
    if is_pipe and os.path.exists(f"{data_path}_0"):
        return 1
    path = Path(data_path)
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            if name.startswith("."):
                raise UserError("Hidden file found in the data path! Remove that before training.")
            total += (Path(root) / name).stat().st_size
    return total


def validate_data_file_path(data_path: str, content_type: str) -> None:
    """The first line of each data file is of ``content_type`` (a delimiter can be found in CSV; LIBSVM
    starts with a number label and ``index:value`` pairs)."""
    kind = get_content_type(content_type)
    if not os.path.exists(data_path):
        raise UserError(f"{data_path} is not a valid path!")
    for file in _data_files(data_path):
        with open(file, errors="ignore") as stream:
            first = stream.readline()
        if kind == CSV:
            try:
                csv.Sniffer().sniff(first)
            except csv.Error as exc:
                raise UserError(f"Could not determine delimiter on line {first[:50]}:\n{exc}") from None
        elif kind == LIBSVM and first.strip():
            tokens = first.split()
            try:
                float(tokens[0].split(":")[0])
                ok = all(len(t.split(":")) == 2 for t in tokens[1:])
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"First line '{first[:50]}...' of file '{file.name}' is not 'LIBSVM' format. "
                                "Please ensure the file is in 'LIBSVM' format.")


def check_data_redundancy(train_path: str, validate_path: str) -> None:
    """Warn about files with the same name and size in the training and validation folders."""
    for path, what in ((train_path, "training"), (validate_path, "validation")):
        if not os.path.exists(path):
            raise UserError(f"{what} data's path is not existed")
    train = {f for f in os.listdir(train_path) if os.path.isfile(os.path.join(train_path, f))}
    validate = {f for f in os.listdir(validate_path) if os.path.isfile(os.path.join(validate_path, f))}
    for name in sorted(train & validate):
        a, b = os.path.join(train_path, name), os.path.join(validate_path, name)
        if os.path.getsize(a) == os.path.getsize(b):
            logger.warning("Suspected identical files found. (%s and %s with same size %d bytes).", a, b,
                           os.path.getsize(b))
