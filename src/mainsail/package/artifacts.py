"""The artifacts ``mainsail.package`` writes beside the model, validated: feature names, risk tables,
imputation values, calibration tables and ``hyperparameters.json``.

Each function checks what the caller gave against the feature columns and the model and returns
what is written (``ValueError`` / ``TypeError`` otherwise); nothing here writes a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mainsail.features import calibration as cal
from mainsail.features.artifacts import FEATURE_COLUMNS
from mainsail.features.calibration import LookupTable
from mainsail.features.fitting import column_names
from mainsail.package.models import ResolvedModel

Points = list[tuple[float, float]]


def feature_names(feature_columns: Sequence[str]) -> list[str]:
    names = column_names(feature_columns, "feature_columns")
    if not names:
        raise ValueError("feature_columns must name at least one column")
    for name in names:
        if not name or name != name.strip() or "," in name or "\n" in name or "\r" in name:
            raise ValueError(f"feature column {name!r} cannot round-trip through {FEATURE_COLUMNS}: names must be "
                             "non-empty, without commas, line breaks or surrounding spaces (rename the column)")
    return names


def cat_names(cat_columns: Sequence[str], features: list[str]) -> list[str]:
    cats = column_names(cat_columns, "cat_columns")
    unknown = [c for c in cats if c not in features]
    if unknown:
        raise ValueError(f"cat_columns {unknown} are not in feature_columns: every risk-mapped column is a model input")
    return [c for c in features if c in cats]  # feature order


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{what} must be a real number, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number}")
    return number


def checked_risk_tables(risk_tables: Mapping[str, Any] | None, features: list[str],
                        cats: list[str]) -> dict[str, dict[str, Any]]:
    tables = dict(risk_tables or {})
    unknown = [c for c in tables if c not in features]
    if unknown:
        raise ValueError(f"risk tables for unknown column(s) {unknown}: they are not in feature_columns")
    not_cat = [c for c in tables if c not in cats]
    if not_cat:
        raise ValueError(f"risk tables for {not_cat}, which are not in cat_columns: add them to cat_columns")
    missing = [c for c in cats if c not in tables]
    if missing:
        raise ValueError(f"cat_columns {missing} have no risk table: fit them with "
                         "mainsail.features.fitting.fit_risk_tables")
    out: dict[str, dict[str, Any]] = {}
    for column, table in tables.items():
        if not isinstance(table, Mapping) or not isinstance(table.get("bins"), Mapping) or "default_bin" not in table:
            raise ValueError(f"risk table for {column!r} must be a dict with 'bins' (a dict) and 'default_bin'")
        bins: dict[str, float] = {}
        for key, value in table["bins"].items():
            risk = _real(value, f"risk table {column!r} bin {key!r}")
            if bins.setdefault(str(key), risk) != risk:
                raise ValueError(f"risk table {column!r} has two bins spelled {str(key)!r} with different risks")
        out[column] = {"bins": bins, "default_bin": _real(table["default_bin"], f"risk table {column!r} default_bin")}
    return out


def checked_impute_values(impute_values: Mapping[str, Any] | None, features: list[str],
                          cats: list[str]) -> dict[str, float]:
    values = dict(impute_values or {})
    unknown = [c for c in values if c not in features]
    if unknown:
        raise ValueError(f"impute values for unknown column(s) {unknown}: they are not in feature_columns")
    mapped = [c for c in values if c in cats]
    if mapped:
        raise ValueError(f"impute values for risk-mapped column(s) {mapped}: a missing category already maps to "
                         "default_bin; drop them")
    return {column: _real(value, f"impute value for {column!r}") for column, value in values.items()}


def _as_points(raw: Any, what: str) -> Points:
    if isinstance(raw, np.ndarray):
        raw = [tuple(row) for row in raw.tolist()]
    try:
        return LookupTable.from_points(raw).points()
    except ValueError as exc:
        raise ValueError(f"calibration {what}: {exc}") from None


def _class_index(key: Any) -> int:
    if isinstance(key, bool | np.bool_):
        raise ValueError(f"multiclass calibration keys are class indices, got {key!r}")
    if isinstance(key, int | np.integer) and key >= 0:
        return int(key)
    if isinstance(key, str) and key.isdigit():
        return int(key)
    raise ValueError(f"multiclass calibration keys are class indices (int >= 0), got {key!r}")


def calibration_files(calibration: Any, num_classes: int) -> dict[str, Points]:
    """Relative path under the model directory -> the points of the table written there."""
    if calibration is None:
        return {}
    if isinstance(calibration, cal.Calibrator):
        kind: Any = calibration.kind
        raw: Any = ({k: t.points() for k, t in calibration.tables.items()} if kind == "multiclass"
                    else calibration.tables[1].points())
    elif isinstance(calibration, Mapping):
        if set(calibration) != {"kind", "points"}:
            raise ValueError("calibration must be {'kind': ..., 'points': ...}, "
                             f"got keys {sorted(map(str, calibration))}")
        kind, raw = calibration["kind"], calibration["points"]
    else:
        raise TypeError("calibration must be a dict {'kind': ..., 'points': ...} or a Calibrator, "
                        f"got {type(calibration).__name__}")
    if kind in ("percentile", "binary"):
        if num_classes != 2:
            raise ValueError(f"{kind} calibration needs a binary model, this one has {num_classes} classes: "
                             "use kind 'multiclass' with one table per class index")
        name = cal.PERCENTILE_FILE if kind == "percentile" else cal.BINARY_FILE
        return {f"{cal.CALIBRATION_DIR}/{name}": _as_points(raw, kind)}
    if kind != "multiclass":
        raise ValueError(f"calibration kind must be 'percentile', 'binary' or 'multiclass', got {kind!r}")
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError("multiclass calibration points must be a non-empty dict {class_index: points}")
    files: dict[str, Points] = {}
    for key, points in raw.items():
        k = _class_index(key)
        if k >= num_classes:
            raise ValueError(f"multiclass calibration for class {k}, but the model has {num_classes} classes")
        path = f"{cal.CALIBRATION_DIR}/{cal.MULTICLASS_DIR}/calibration_model_class_{k}.pkl"
        if path in files:
            raise ValueError(f"multiclass calibration gives class {k} twice")
        files[path] = _as_points(points, f"class {k}")
    return files


def hyperparameters_json(user: Mapping[str, Any] | None, features: list[str], cats: list[str],
                         model: ResolvedModel) -> str:
    if user is not None and not isinstance(user, Mapping):
        raise TypeError(f"hyperparameters must be a dict, got {type(user).__name__}")
    merged = dict(user or {})
    for key in merged:
        if not isinstance(key, str):
            raise TypeError(f"hyperparameters keys must be str, got {key!r}")
    tab = [c for c in features if c not in cats]
    derived: dict[str, Any] = {"tab_field_list": tab, "cat_field_list": cats, "is_binary": model.num_classes == 2,
                               "num_classes": model.num_classes, "model_class": model.library}
    for key, value in derived.items():
        given = merged.get(key, value)
        if (list(given) if isinstance(given, tuple) else given) != value:
            raise ValueError(f"hyperparameters[{key!r}] = {given!r} contradicts the model and columns ({value!r}): "
                             "drop it, package_model derives it")
    categories = merged.get("multiclass_categories", list(range(model.num_classes)))
    if not isinstance(categories, list | tuple) or len(categories) != model.num_classes:
        raise ValueError(f"hyperparameters['multiclass_categories'] must list the model's {model.num_classes} classes")
    full = merged.get("full_field_list")
    if full is None:
        extra = [merged.get(k) for k in ("id_name", "label_name")]
        full = tab + cats + [e for e in extra if isinstance(e, str) and e not in features]
    elif not isinstance(full, list | tuple) or not set(features) <= set(full):
        raise ValueError("hyperparameters['full_field_list'] must list every feature column (or leave it out)")
    merged.update(derived, multiclass_categories=list(categories), full_field_list=list(full))
    try:
        return json.dumps(merged, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"hyperparameters must be JSON-serializable: {exc}") from None
