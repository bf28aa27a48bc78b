"""The built-in tabular handler: XGBoost, LightGBM and scikit-learn classifiers with no user code.

A model directory in the reference training pipeline's layout (``xgboost_model.bst``,
``risk_table_map.pkl``, ``impute_dict.pkl``, ``feature_columns.txt``, ``calibration/``) or with a
LightGBM ``model.txt`` or a scikit-learn ``model.joblib`` is served as it stands. JSON, JSON Lines and
Parquet columns are matched by name (any order, extras ignored); CSV (and NPY) columns by the order
of ``feature_columns.txt``. One JSON object or one CSV line takes the single-record fast path: no
pandas, one ``(1, n)`` float32 row straight into the library's fastest single-row call; several plain
records are read record by record with the same rules, also without pandas.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from mainsail.codecs import default_registry
from mainsail.codecs.csv import decode_record
from mainsail.codecs.toolkit import media_type_of
from mainsail.errors import BadRequest, ModelError, ModelLoadError, UnsupportedContentType
from mainsail.features.artifacts import FEATURE_COLUMNS, read_feature_columns
from mainsail.features.calibration import Calibrator, calibrate, load_calibrator
from mainsail.features.output import encode_scores
from mainsail.features.tabular import TabularPreprocessor
from mainsail.handlers.base import Invocation, Outcome, Reply, invoke_each

logger = logging.getLogger(__name__)

XGBOOST_FILES = ("xgboost_model.bst", "xgboost_model.json", "xgboost_model.ubj")
LIGHTGBM_FILES = ("model.txt",)
SKLEARN_FILES = ("model.joblib",)
INPUT_TYPES = ("text/csv", "application/json", "application/jsonlines", "application/x-parquet",
               "application/x-npy")


class Scorer(Protocol):
    """A loaded model: (N, n) float32 features -> (N, C) class probabilities."""

    library: str
    feature_names: list[str] | None

    def predict(self, features: np.ndarray) -> np.ndarray: ...


def _as_two_columns(scores: np.ndarray) -> np.ndarray:
    if scores.ndim == 1:
        return np.column_stack([1 - scores, scores])
    return scores


class XGBoostScorer:
    library = "xgboost"

    def __init__(self, path: Path) -> None:
        import warnings

        import xgboost

        self.booster = xgboost.Booster()
        with warnings.catch_warnings():
            # A .bst name makes xgboost warn that it guesses the (UBJSON) format; it guesses right.
            warnings.filterwarnings("ignore", message=".*Unknown file format", category=UserWarning)
            self.booster.load_model(str(path))
        self.feature_names = list(self.booster.feature_names) if self.booster.feature_names else None
        objective = orjson.loads(self.booster.save_config())["learner"]["objective"]["name"]
        if not (objective.startswith("binary:") or objective == "multi:softprob"):
            raise ModelLoadError(
                f"{path.name}: objective {objective!r} does not give class probabilities; the tabular "
                "handler serves binary:* and multi:softprob classifiers (write an inference.py for others)"
            )

    def predict(self, features: np.ndarray) -> np.ndarray:
        scores = self.booster.inplace_predict(features, validate_features=False)
        return _as_two_columns(np.asarray(scores))


class LightGBMScorer:
    library = "lightgbm"

    def __init__(self, path: Path) -> None:
        import lightgbm

        self.booster = lightgbm.Booster(model_file=str(path))
        names = self.booster.feature_name()
        self.feature_names = list(names) if names and not all(n.startswith("Column_") for n in names) else None

    def predict(self, features: np.ndarray) -> np.ndarray:
        return _as_two_columns(np.asarray(self.booster.predict(features)))


class SklearnScorer:
    library = "sklearn"

    def __init__(self, path: Path) -> None:
        import warnings

        import joblib

        # A model file is trusted code by nature (as on SageMaker): joblib is pickle.
        self.model = joblib.load(path)
        if not hasattr(self.model, "predict_proba"):
            raise ModelLoadError(f"{path.name}: the estimator has no predict_proba (a classifier is needed)")
        names = getattr(self.model, "feature_names_in_", None)
        self.feature_names = [str(n) for n in names] if names is not None else None
        # Rows arrive as arrays in the fitted column order; the name check would only warn.
        warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(features))


def _json_records(body: bytes, kind: str) -> list[dict[str, Any]] | None:
    """A JSON list of objects, ``{"instances": [objects]}`` or JSON Lines of objects; else None."""
    try:
        if kind == "application/json":
            data = orjson.loads(body)
            if isinstance(data, dict) and set(data) == {"instances"}:
                data = data["instances"]
        elif kind == "application/jsonlines":
            lines = body.split(b"\n")
            if lines and not lines[-1].strip():
                lines.pop()
            data = [orjson.loads(line) for line in lines]
        else:
            return None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, list) or not data or not all(isinstance(record, dict) for record in data):
        return None
    return data


def _utf8_text(body: bytes, content_type: str | None) -> str | None:
    """A UTF-8 body's text; None for another charset, or a leading BOM (which the codec drops)."""
    params = (content_type or "").lower()
    if "charset" in params and "utf-8" not in params and "utf8" not in params:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if text.startswith("\ufeff") else text


def plain_csv_line(body: bytes, content_type: str | None) -> str | None:
    """The one line of a UTF-8 CSV body of one line, its line break dropped; else None. What
    :func:`~mainsail.codecs.csv.decode_record` reads of it is what ``CsvCodec`` reads."""
    text = _utf8_text(body, content_type)
    stripped = text.strip("\r\n") if text is not None else ""
    if not stripped or "\n" in stripped or "\r" in stripped:
        return None
    return stripped


def _plain_csv_lines(body: bytes, content_type: str | None) -> list[str] | None:
    """The lines of a UTF-8 CSV body with no quotes, carriage returns or blank lines; else None."""
    text = _utf8_text(body, content_type)
    if text is None or '"' in text or "\r" in text:
        return None
    lines = text.rstrip("\n").split("\n")
    if not lines or any(not line.strip() for line in lines):
        return None
    return lines


def find_model_file(model_dir: Path) -> tuple[str, Path] | None:
    """The library and file of a model directory the tabular handler can serve, or None."""
    for names, library in ((XGBOOST_FILES, "xgboost"), (LIGHTGBM_FILES, "lightgbm"), (SKLEARN_FILES, "sklearn")):
        for name in names:
            if (model_dir / name).is_file():
                return library, model_dir / name
    return None


class TabularHandler:
    """Preprocessing artifacts -> model -> calibration -> the reference response layout."""

    name = "tabular"
    batchable = True

    def __init__(self, model_dir: Path, *, fast_path: bool = True) -> None:
        self.model_dir = model_dir
        self.fast_path = fast_path
        self.codecs = default_registry()
        self.scorer: Scorer | None = None
        self.preprocessor: TabularPreprocessor | None = None
        self.calibrator: Calibrator | None = None

    def load(self) -> None:
        found = find_model_file(self.model_dir)
        if found is None:
            raise ModelLoadError(f"no tabular model file in {self.model_dir}")
        library, path = found
        scorer: Scorer
        if library == "xgboost":
            scorer = XGBoostScorer(path)
        elif library == "lightgbm":
            scorer = LightGBMScorer(path)
        else:
            scorer = SklearnScorer(path)
        columns_file = self.model_dir / FEATURE_COLUMNS
        if columns_file.is_file():
            columns = read_feature_columns(columns_file)
        elif scorer.feature_names:
            columns = scorer.feature_names
        else:
            raise ModelLoadError(
                f"{FEATURE_COLUMNS} is missing and {path.name} does not name its features: "
                "write feature_columns.txt (mainsail.package does)"
            )
        self.preprocessor = TabularPreprocessor.from_model_dir(self.model_dir, columns)
        try:
            self.calibrator = load_calibrator(self.model_dir)
        except ModelLoadError as exc:
            logger.error("calibration is broken, serving raw scores as calibrated: %s", exc.message)
            self.calibrator = None
        self.scorer = scorer
        logger.info("tabular handler: %s model %s, %d features, %d risk tables, %d imputed, calibration: %s",
                    library, path.name, len(columns), len(self.preprocessor.risk_tables),
                    len(self.preprocessor.impute_values),
                    self.calibrator.kind if self.calibrator else "none")

    # -- request path --------------------------------------------------------------------------
    def invoke(self, invocation: Invocation) -> Reply:
        return self._reply(self.score(self._decode(invocation)), invocation)

    def invoke_batch(self, invocations: Sequence[Invocation]) -> list[Outcome]:
        """Several requests' rows stacked into one model call; each answered as if alone."""
        return invoke_each(invocations, self._decode, self._score_stacked, self._reply)

    def _decode(self, invocation: Invocation) -> np.ndarray:
        return self.features(invocation.body, invocation.content_type)

    def _score_stacked(self, matrices: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        raw, calibrated = self.score(matrices[0] if len(matrices) == 1 else np.vstack(matrices))
        bounds = np.cumsum([len(m) for m in matrices])[:-1]
        return list(zip(np.split(raw, bounds), np.split(calibrated, bounds), strict=True))

    @staticmethod
    def _reply(scores: tuple[np.ndarray, np.ndarray], invocation: Invocation) -> Reply:
        body, content_type = encode_scores(*scores, invocation.accept, layout="xgboost",
                                           request_id=invocation.request_id)
        return Reply(body, content_type)

    def score(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.scorer is not None
        try:
            raw = self.scorer.predict(features)
        except Exception as exc:
            raise ModelError(f"{self.scorer.library} prediction failed: {type(exc).__name__}: {exc}") from exc
        return raw, calibrate(raw, self.calibrator)

    def features(self, body: bytes, content_type: str | None) -> np.ndarray:
        """The request body -> the (N, n) float32 matrix the model takes."""
        pre = self.preprocessor
        assert pre is not None
        kind = media_type_of(content_type)
        if kind not in INPUT_TYPES and kind not in self.codecs.decoder_types():
            raise UnsupportedContentType(content_type, list(INPUT_TYPES))
        if self.fast_path:
            fast = self._fast_features(body, content_type, kind)
            if fast is None:
                fast = self._records_features(body, content_type, kind)
            if fast is not None:
                return fast
        decoded = self.codecs.decode(body, content_type)
        if isinstance(decoded, np.ndarray):
            return pre.transform_frame(self._positional(decoded, kind))
        if len(decoded) == 0:
            raise BadRequest("the body holds no records")
        if all(isinstance(c, (int, np.integer)) for c in decoded.columns):
            decoded = self._positional(decoded, kind)
        return pre.transform_frame(decoded)

    def _fast_features(self, body: bytes, content_type: str | None, kind: str) -> np.ndarray | None:
        pre = self.preprocessor
        assert pre is not None
        if kind == "application/json":
            start = body.lstrip()[:1]
            if start != b"{":
                return None
            try:
                record = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None  # the codec names the error
            if not isinstance(record, dict) or "instances" in record:
                return None
            return pre.transform_record(record)
        if kind == "text/csv":
            line = plain_csv_line(body, content_type)
            if line is None:
                return None
            values = decode_record(line)
            if values is None:
                return None
            self._check_width(len(values))
            return pre.transform_values(values)
        return None

    def _records_features(self, body: bytes, content_type: str | None, kind: str) -> np.ndarray | None:
        """Several records without pandas, each through the single-record rules (which give the
        numbers the frame path gives); None when the body is not plain records (then the codecs and
        pandas read it, and name any error)."""
        pre = self.preprocessor
        assert pre is not None
        if kind == "text/csv":
            lines = _plain_csv_lines(body, content_type)
            if lines is None:
                return None
            width = len(pre.feature_columns)
            rows = [decode_record(line) for line in lines]
            if any(row is None or len(row) != width for row in rows):
                return None
            return np.vstack([pre.transform_values(row) for row in rows if row is not None])
        records = _json_records(body, kind)
        # A column missing from some records is missing data in the frame path, not a 400: leave
        # such bodies to it.
        if records is None or any(pre.missing_columns(record) for record in records):
            return None
        return np.vstack([pre.transform_record(record) for record in records])

    def _check_width(self, width: int) -> None:
        assert self.preprocessor is not None
        expected = len(self.preprocessor.feature_columns)
        if width != expected:
            raise BadRequest(
                f"expected {expected} columns in {FEATURE_COLUMNS} order, got {width}"
            )

    def _positional(self, data: Any, kind: str) -> Any:
        """Header-less rows (CSV, NPY, lists of lists) take feature_columns.txt's names in order."""
        import pandas as pd

        assert self.preprocessor is not None
        if isinstance(data, np.ndarray):
            if data.ndim == 1:
                data = data.reshape(1, -1)
            if data.ndim != 2:
                raise BadRequest(f"an array body must be 1-D or 2-D, got {data.ndim}-D")
            data = pd.DataFrame(data)
        self._check_width(data.shape[1])
        data = data.copy()
        data.columns = self.preprocessor.feature_columns
        return data
