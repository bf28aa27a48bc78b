"""Fitting the preprocessing artifacts of a tabular model directory from a training DataFrame.

``fit_risk_tables`` and ``fit_imputation`` produce exactly what the reference training pipeline's
inline fitting writes to ``risk_table_map.pkl`` and ``impute_dict.pkl``; ``transform_features``
applies fitted artifacts with the serving rule (``mainsail.features.tabular``), so a model trained
on its output sees the same numbers in training and in serving. Everything is vectorized per
column (one pandas groupby or reduction), never a Python loop per row.

Calibration tables are fitted here too: ``fit_percentile_table`` and ``fit_isotonic_table`` give the
``(raw, calibrated)`` points and ``write_table`` writes them as the reference step does, in the
format :mod:`mainsail.features.calibration` reads back.
"""

from __future__ import annotations

import math
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from mainsail.errors import ModelLoadError
from mainsail.features.calibration import LookupTable
from mainsail.features.tabular import RiskTable, TabularPreprocessor


class RiskTableArtifact(TypedDict):
    """One column's entry of ``risk_table_map.pkl``: ``str(category) -> risk``, and the fallback."""

    bins: dict[str, float]
    default_bin: float


def _require_frame(frame: Any) -> None:
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")


def column_names(columns: Sequence[str], what: str) -> list[str]:
    """``columns`` as a list of distinct names; ``what`` names the argument in the errors."""
    if isinstance(columns, str):
        raise TypeError(f"{what} must be a list of column names, not one string: use [{columns!r}]")
    if not isinstance(columns, Sequence):
        raise TypeError(f"{what} must be a list of column names, got {columns!r}")
    names = list(columns)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what} must hold column names (str), got {name!r}")
    duplicates = sorted(name for name, n in Counter(names).items() if n > 1)
    if duplicates:
        raise ValueError(f"{what} names a column more than once: {', '.join(duplicates)}")
    return names


def _require_columns(frame: Any, names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in frame.columns]
    if missing:
        raise ValueError(f"{what} not in the frame: {', '.join(map(repr, missing))}")


def labelled_rows(frame: Any, label: str) -> Any:
    """The boolean mask (a Series) of rows whose label counts for fitting: not NaN and not -1.

    Raises ``ValueError`` when the label column is absent, a kept label is not 0 or 1, or no row
    is kept. The reference fitting steps drop the same rows (``-1`` marks "unlabelled").
    """
    _require_frame(frame)
    if not isinstance(label, str):
        raise TypeError(f"label must be a column name (str), got {label!r}")
    _require_columns(frame, [label], "label column")
    series = frame[label]
    with np.errstate(invalid="ignore"):
        keep = series.notna() & (series != -1)
    try:
        values = series[keep].astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"label column {label!r} must hold 0/1 (or -1/NaN for unlabelled rows)") from None
    if not values.isin((0.0, 1.0)).all():
        bad = sorted(set(values[~values.isin((0.0, 1.0))].tolist()))[:5]
        raise ValueError(f"label column {label!r} must be binary 0/1 (-1/NaN rows are dropped), found {bad}")
    if not keep.any():
        raise ValueError(f"label column {label!r} has no labelled row (all are -1 or NaN)")
    return keep


def fit_risk_tables(
    frame: Any,
    label: str,
    columns: Sequence[str],
    *,
    smooth_factor: float = 0.0,
    count_threshold: int = 0,
) -> dict[str, RiskTableArtifact]:
    """Fit one risk table per categorical column, in the shape the reference's inline fitting writes.

    Rows whose ``label`` is -1 or NaN are dropped (the label must be binary 0/1 otherwise). Over
    the ``n`` rows kept: ``default = mean(label)``, ``s = int(n * smooth_factor)``. Per column, each
    non-missing category (keyed by ``str(value)``, as the handler looks values up; values whose
    strings coincide, such as ``3`` and ``"3"`` in an object column, form one category) with
    ``count`` rows of which ``n_pos`` are positive gets ``risk = n_pos / count`` and
    ``bin = (count * risk + s * default) / (count + s)`` if ``count >= count_threshold``, else
    ``default``. Missing categories (None/NaN) get no bin, so they map to ``default_bin``.

    ``default`` and ``s`` come from all labelled rows, as in the reference pipeline's risk-table
    step (its inline training processor instead also drops, per column, the rows where that column
    is missing, which changes ``default`` and ``s`` for columns with missing values).

    Returns ``{column: {"bins": {str: float}, "default_bin": float}}`` with Python floats.
    Raises ``TypeError``/``ValueError`` for a non-DataFrame, absent columns, the label among
    ``columns``, a non-binary label, ``smooth_factor`` outside [0, 1] or a negative
    ``count_threshold``.
    """
    _require_frame(frame)
    names = column_names(columns, "columns")
    if isinstance(smooth_factor, bool) or not isinstance(smooth_factor, int | float) \
            or not 0.0 <= smooth_factor <= 1.0:
        raise ValueError(f"smooth_factor must be a number within [0, 1], got {smooth_factor!r}")
    if isinstance(count_threshold, bool) or not isinstance(count_threshold, int) or count_threshold < 0:
        raise ValueError(f"count_threshold must be an int >= 0, got {count_threshold!r}")
    keep = labelled_rows(frame, label)
    if label in names:
        raise ValueError(f"the label column {label!r} cannot be one of the risk-mapped columns")
    _require_columns(frame, names, "risk-table columns")

    rows = frame.loc[keep]
    target = rows[label].astype(np.float64)
    default = float(target.mean())
    smooth = int(len(rows) * smooth_factor)
    tables: dict[str, RiskTableArtifact] = {}
    for name in names:
        values = rows[name]
        present = values.notna().to_numpy()
        keys = values[present].astype(str).to_numpy()
        stats = target[present].groupby(keys, sort=True).agg(["sum", "count"])
        count = stats["count"].to_numpy(dtype=np.float64)
        risk = stats["sum"].to_numpy(dtype=np.float64) / count
        # The reference's operations in its order, so the floats are identical.
        smoothed = (count * risk + smooth * default) / (count + smooth)
        binned = np.where(count >= count_threshold, smoothed, default)
        tables[name] = {
            "bins": dict(zip(map(str, stats.index), map(float, binned.tolist()), strict=True)),
            "default_bin": default,
        }
    return tables


def fit_imputation(frame: Any, columns: Sequence[str]) -> dict[str, float]:
    """Fit ``{column: mean}`` over the non-missing values of each numeric column (``impute_dict.pkl``).

    This is what the reference's inline training writes (one float mean per numeric column). A
    column that is not of a numeric (or bool) dtype raises ``ValueError`` naming it (convert it
    with ``pd.to_numeric`` or risk-map it instead); so does a column with no non-missing value
    or whose mean is not finite. Returns Python floats, in the order of ``columns``.
    """
    import pandas as pd

    _require_frame(frame)
    names = column_names(columns, "columns")
    _require_columns(frame, names, "imputation columns")
    for name in names:
        dtype = frame[name].dtype
        if not (pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype)) \
                or pd.api.types.is_complex_dtype(dtype):
            raise ValueError(
                f"column {name!r} has dtype {dtype}, not numeric: imputation needs numbers "
                "(convert it with pd.to_numeric, or list it as a categorical column to risk-map it)"
            )
    if not names:
        return {}
    means = frame[names].astype(np.float64).mean(skipna=True)
    result: dict[str, float] = {}
    for name in names:
        value = float(means[name])
        if math.isnan(value):
            raise ValueError(f"column {name!r} has no non-missing value to take a mean of")
        if not math.isfinite(value):
            raise ValueError(f"column {name!r} has a non-finite mean ({value}): it holds infinities")
        result[name] = value
    return result


def transform_features(
    frame: Any,
    feature_columns: Sequence[str],
    risk_tables: Mapping[str, Mapping[str, Any]] | None = None,
    impute_values: Mapping[str, float] | None = None,
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The ``(N, len(feature_columns))`` float32 matrix the served model sees for ``frame``.

    Applies the artifacts with the tabular handler's own batch rule
    (``TabularPreprocessor.transform_frame``): risk-mapped columns by ``str(value)`` with the
    default bin for anything unseen; other columns as numbers (text that is not a number -> 0.0);
    then missing values take their imputation value. Train on this matrix and the model sees the
    same numbers in training as behind the endpoint. Raises ``ValueError`` for absent columns or
    a malformed table.
    """
    _require_frame(frame)
    names = column_names(feature_columns, "feature_columns")
    _require_columns(frame, names, "feature columns")
    try:
        tables = {col: RiskTable.from_artifact(col, table) for col, table in dict(risk_tables or {}).items()}
    except ModelLoadError as exc:
        raise ValueError(exc.message) from None
    preprocessor = TabularPreprocessor(names, tables, dict(impute_values or {}))
    return preprocessor.transform_frame(frame)


def fit_percentile_table(scores: npt.ArrayLike, n_bins: int = 1000) -> list[tuple[float, float]]:
    """Fit a raw score -> percentile rank table on ``scores`` (1-D, finite, within [0, 1]).

    Construction: sort the scores (``N`` of them); for ``j = 1 .. n_bins - 1`` take the threshold
    ``t_j = s[ceil(j * N / n_bins) - 1]`` (the ``j / n_bins`` quantile, an observed score: numpy's
    ``inverted_cdf``) and its rank ``p_j = #{scores <= t_j} / N``; keep the distinct thresholds
    strictly inside (0, 1); add ``(0.0, 0.0)`` first and ``(1.0, 1.0)`` last. The table is strictly
    increasing in raw score, non-decreasing in rank, has at most ``n_bins + 1`` points and never
    holds NaN (unlike the reference's ROC-curve construction under scikit-learn >= 1.3).
    Raises ``ValueError`` for an empty, non-finite or out-of-range input, or ``n_bins < 1``.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    values = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if values.size == 0:
        raise ValueError("fit_percentile_table needs at least one score")
    if not np.all(np.isfinite(values)) or values[0] < 0.0 or values[-1] > 1.0:
        raise ValueError("scores must be finite probabilities within [0, 1]")
    n = values.size
    j = np.arange(1, n_bins, dtype=np.int64)
    thresholds = np.unique(values[(j * n + n_bins - 1) // n_bins - 1])
    thresholds = thresholds[(thresholds > 0.0) & (thresholds < 1.0)]
    ranks = np.searchsorted(values, thresholds, side="right") / n
    inner = [(float(t), float(p)) for t, p in zip(thresholds.tolist(), ranks.tolist(), strict=True)]
    return [(0.0, 0.0), *inner, (1.0, 1.0)]


def fit_isotonic_table(
    scores: npt.ArrayLike, labels: npt.ArrayLike, n_points: int = 1000
) -> list[tuple[float, float]]:
    """Fit isotonic calibration and sample it as the reference calibration step does.

    ``IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)`` is fitted on ``(scores,
    labels)`` (1-D, same length) and evaluated at ``np.linspace(0, 1, n_points)``; returns those
    ``(x, y)`` pairs, ready for ``write_table``. Needs scikit-learn (the ``tabular`` extra).
    """
    from sklearn.isotonic import IsotonicRegression

    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an int >= 2, got {n_points!r}")
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(x, y)
    grid = np.linspace(0.0, 1.0, n_points)
    fitted = np.asarray(model.predict(grid), dtype=np.float64)
    return [(float(a), float(b)) for a, b in zip(grid.tolist(), fitted.tolist(), strict=True)]


def write_table(path: Path, points: Sequence[tuple[float, float]]) -> None:
    """Write ``points`` as the reference step writes ``calibration_model.pkl``.

    The file is a default-protocol pickle of a ``list`` of ``(numpy.float64, numpy.float64)``
    tuples. Parent directories are created. The points are validated first (``ValueError`` as
    in ``LookupTable.from_points``), so nothing unreadable is written.
    """
    table = LookupTable.from_points(points)
    data = [(np.float64(a), np.float64(b)) for a, b in zip(table.x.tolist(), table.y.tolist(), strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(data, fh)
