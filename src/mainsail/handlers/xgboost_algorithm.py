"""SageMaker's built-in XGBoost algorithm, served as its container serves it.

A model directory holding ``xgboost-model`` (what the built-in algorithm's training job writes) and
no script is served with that container's contract: ``text/csv`` rows without a header (or
``text/libsvm``) in, the booster's raw predictions out: one value per line for ``text/csv`` (the
container's default Accept) or ``{"predictions": [{"score": ...}]}`` for ``application/json``. An
empty body answers 204, as the container does.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mainsail.codecs import toolkit
from mainsail.errors import BadRequest, ModelError, ModelLoadError, UnsupportedAccept, UnsupportedContentType
from mainsail.handlers.base import Invocation, Reply

logger = logging.getLogger(__name__)

MODEL_FILE = "xgboost-model"
CSV = "text/csv"
LIBSVM = "text/libsvm"
JSON = "application/json"


def parse_libsvm(text: str) -> Any:
    """``label idx:value ...`` lines -> a CSR matrix (1-based indices shifted, as the container does)."""
    from scipy.sparse import csr_matrix

    rows: list[int] = []
    cols: list[int] = []
    data: list[float] = []
    for row, line in enumerate(text.strip().split("\n")):
        for item in line.split():
            if ":" not in item:
                continue  # the label
            index, _, value = item.partition(":")
            try:
                cols.append(int(index))
                data.append(float(value))
            except ValueError:
                raise BadRequest(f"libsvm line {row + 1}: {item!r} is not index:value") from None
            rows.append(row)
    col = np.array(cols, dtype=np.int64)
    if col.size and col.min() >= 1:
        col -= 1
    return csr_matrix((np.array(data), (np.array(rows, dtype=np.int64), col)))


class XGBoostAlgorithmHandler:
    """The built-in algorithm's inference contract over its ``xgboost-model`` file."""

    name = "xgboost-algorithm"
    default_accept = CSV

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.booster: Any = None

    def load(self) -> None:
        import warnings

        import xgboost

        path = self.model_dir / MODEL_FILE
        with path.open("rb") as fh:
            pickled = fh.read(1) == b"\x80"  # the pickle protocol marker
        try:
            if pickled:
                # Older versions of the algorithm pickled the Booster. A model file is trusted code by
                # nature (as on SageMaker), unlike the data artifacts the other handlers read.
                import pickle

                with path.open("rb") as fh:
                    booster = pickle.load(fh)
                if not isinstance(booster, xgboost.Booster):
                    raise TypeError(f"it holds a {type(booster).__name__}, not a Booster")
                logger.warning("%s is a pickled Booster (an old algorithm version)", MODEL_FILE)
            else:
                booster = xgboost.Booster()
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*Unknown file format", category=UserWarning)
                    booster.load_model(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{MODEL_FILE} cannot be loaded: {type(exc).__name__}: {exc}") from None
        booster.set_param("nthread", "1")
        self.booster = booster

    def invoke(self, invocation: Invocation) -> Reply:
        import xgboost

        if not invocation.body:
            return Reply(b"", invocation.accept, status=204)
        kind = toolkit.media_type_of(invocation.content_type)
        try:
            text = invocation.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"body is not valid utf-8: byte offset {exc.start}") from None
        if kind == CSV:
            rows = np.atleast_2d(toolkit.decode_csv(text.strip(), numeric=True))
            expected = self.booster.num_features()
            if rows.shape[1] != expected:
                raise BadRequest(f"expected {expected} features per CSV row, got {rows.shape[1]}")
            matrix = xgboost.DMatrix(rows)
        elif kind in (LIBSVM, "text/x-libsvm"):
            matrix = xgboost.DMatrix(parse_libsvm(text))
        else:
            raise UnsupportedContentType(invocation.content_type, [CSV, LIBSVM])
        try:
            predictions = self.booster.predict(matrix, validate_features=False)
        except xgboost.core.XGBoostError as exc:
            raise BadRequest(f"unable to evaluate the payload: {exc}") from None
        except Exception as exc:
            raise ModelError(f"{type(exc).__name__}: {exc}") from exc
        values = predictions.tolist()
        for candidate in toolkit.parse_accept(invocation.accept):
            accept = toolkit.media_type_of(candidate)
            if accept == CSV:
                stream = io.StringIO()
                np.savetxt(stream, np.asarray(values), delimiter=",", fmt="%s")
                return Reply(stream.getvalue().encode(), CSV)
            if accept == JSON:
                return Reply(orjson.dumps({"predictions": [{"score": v} for v in values]}), JSON)
        raise UnsupportedAccept(invocation.accept, [CSV, JSON])
