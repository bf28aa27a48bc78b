"""Risk tables, imputation and numeric coercion: one rule, applied at two speeds.

``TabularPreprocessor.transform_frame`` turns a DataFrame into the model's float32 matrix with one
vectorized pass per column; ``transform_record`` does the same for one record with plain dict and
float work (no pandas), for the single-record fast path. Both give the same numbers for the same
input. Per feature column:

1. a column with a risk table: ``bins.get(str(value), default_bin)`` (unseen, None and NaN
   categories take the default bin unless the table has a key for them);
2. any other column: the value as a float: None/NaN (and the strings "nan") are missing (NaN),
   numbers are themselves, numeric text is parsed, any other text (or "1_000") is 0.0, as in the
   reference handler;
3. a column with an imputation value: missing values take it.

Risk-table keys are normalised at load: a key that spells an integral number ("3" or "3.0", or a
numeric key 3 from the offline binning step) answers to both spellings, so a value that arrives as
``3`` matches a table fitted on a float column (and the other way round). The reference handler
misses those matches and falls back to the default bin: a training/serving skew we do not copy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mainsail.errors import MissingColumns, ModelLoadError
from mainsail.features.artifacts import IMPUTE_DICT, RISK_TABLES, load_mapping_artifact

_NAN_WORDS = frozenset({"nan", "+nan", "-nan"})


def _key_aliases(key: str) -> list[str]:
    try:
        number = float(key)
    except ValueError:
        return []
    if not math.isfinite(number) or not number.is_integer():
        return []
    if key not in (str(int(number)), str(number)):
        return []
    return [str(int(number)), str(number)]


@dataclass(frozen=True)
class RiskTable:
    """One column's category -> risk mapping, with the default bin for everything else."""

    bins: Mapping[str, float]
    default_bin: float

    @classmethod
    def from_artifact(cls, column: str, table: Any) -> RiskTable:
        if not isinstance(table, Mapping) or "bins" not in table or "default_bin" not in table:
            raise ModelLoadError(f"risk table for {column!r} must hold 'bins' and 'default_bin'")
        try:
            default = float(table["default_bin"])
            raw = {str(k): float(v) for k, v in dict(table["bins"]).items()}
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"risk table for {column!r} holds a non-numeric bin: {exc}") from None
        bins = dict(raw)
        for key, value in raw.items():
            for alias in _key_aliases(key):
                bins.setdefault(alias, value)
        return cls(bins, default)

    def map_value(self, value: Any) -> float:
        return self.bins.get(str(value), self.default_bin)

    def map_series(self, series: Any) -> np.ndarray:
        mapped = series.astype(str).map(self.bins)
        values: np.ndarray = np.array(mapped.to_numpy(dtype=np.float64, na_value=np.nan))
        missing = series.isna().to_numpy()
        if missing.any():
            # pandas may keep None/NaN missing through astype(str); their keys are "None" / "nan".
            values[missing] = [self.map_value(v) for v in series.to_numpy(dtype=object)[missing]]
        unmatched = np.isnan(values)
        if unmatched.any():
            values[unmatched] = self.default_bin
        return values


def to_float(value: Any) -> float:
    """The scalar rule: missing -> NaN, numbers as floats, numeric text parsed, other text 0.0."""
    if value is None:
        return math.nan
    if isinstance(value, (bool, int, float, np.integer, np.floating, np.bool_)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _NAN_WORDS:
            return math.nan
        if "_" in text:
            return 0.0
        try:
            return float(text)
        except ValueError:
            return 0.0
    return 0.0


def series_to_float(series: Any) -> np.ndarray:
    """The vectorized rule, equal to ``to_float`` element by element."""
    import pandas as pd

    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or (
            pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_object_dtype(dtype)):
        return np.asarray(series.astype(np.float64), dtype=np.float64)
    missing = series.isna().to_numpy()
    try:
        numbers: np.ndarray = np.array(
            pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
    except (TypeError, ValueError):
        return np.fromiter((to_float(v) for v in series), dtype=np.float64, count=len(series))
    failed = np.isnan(numbers) & ~missing
    if failed.any():
        text = series[failed].astype(str).str.strip().str.lower()
        is_nan_word = text.isin(_NAN_WORDS).to_numpy()
        numbers[np.flatnonzero(failed)[~is_nan_word]] = 0.0
    underscored = series.map(lambda v: isinstance(v, str) and "_" in v).to_numpy(dtype=bool)
    if underscored.any():
        numbers[underscored] = 0.0
    return numbers


class TabularPreprocessor:
    """Feature columns in model order, with their risk tables and imputation values."""

    def __init__(self, feature_columns: Sequence[str], risk_tables: Mapping[str, RiskTable] | None = None,
                 impute_values: Mapping[str, Any] | None = None) -> None:
        if not feature_columns:
            raise ValueError("feature_columns must name at least one column")
        if len(set(feature_columns)) != len(feature_columns):
            raise ValueError("feature_columns holds duplicate names")
        self.feature_columns = list(feature_columns)
        self.risk_tables = dict(risk_tables or {})
        # Imputation values are coerced by the same rule (a mode string that is not a number -> 0.0).
        self.impute_values = {k: to_float(v) for k, v in dict(impute_values or {}).items()}
        self._plan = [(name, self.risk_tables.get(name), self.impute_values.get(name))
                      for name in self.feature_columns]

    @classmethod
    def from_model_dir(cls, model_dir: Path, feature_columns: Sequence[str]) -> TabularPreprocessor:
        raw_tables = load_mapping_artifact(model_dir / RISK_TABLES, "table") or {}
        tables = {col: RiskTable.from_artifact(col, table) for col, table in raw_tables.items()}
        impute = load_mapping_artifact(model_dir / IMPUTE_DICT, "value") or {}
        return cls(feature_columns, tables, impute)

    def missing_columns(self, present: Any) -> list[str]:
        return [name for name in self.feature_columns if name not in present]

    def transform_record(self, record: Mapping[str, Any]) -> np.ndarray:
        """One record (column name -> raw value) -> a (1, n) float32 row. Raises MissingColumns."""
        values: list[float] = []
        try:
            for name, table, impute in self._plan:
                raw = record[name]
                value = table.map_value(raw) if table is not None else to_float(raw)
                if impute is not None and value != value:
                    value = impute
                values.append(value)
        except KeyError:
            raise MissingColumns(self.missing_columns(record)) from None
        with np.errstate(over="ignore"):  # beyond float32's range is inf, as in the frame path
            return np.array([values], dtype=np.float32)

    def transform_values(self, values: Sequence[Any]) -> np.ndarray:
        """One record given positionally, in feature-column order (headerless CSV)."""
        return self.transform_record(dict(zip(self.feature_columns, values, strict=True)))

    def transform_frame(self, frame: Any) -> np.ndarray:
        """A DataFrame holding every feature column (any order, extras ignored) -> (N, n) float32."""
        missing = self.missing_columns(frame.columns)
        if missing:
            raise MissingColumns(missing)
        matrix = np.empty((len(frame), len(self._plan)), dtype=np.float32)
        for i, (name, table, impute) in enumerate(self._plan):
            column = frame[name]
            values = table.map_series(column) if table is not None else series_to_float(column)
            if impute is not None:
                values = np.where(np.isnan(values), impute, values)
            with np.errstate(over="ignore"):  # beyond float32's range is inf, as in the record path
                matrix[:, i] = values
        return matrix
