"""Packaging a trained classifier as a model directory the built-in tabular handler serves, no code needed.

``package_model`` writes the reference training pipeline's layout (ARTIFACTS.md sections 2 to 5):
the model file (``xgboost_model.bst``, LightGBM ``model.txt`` or scikit-learn ``model.joblib``),
``feature_columns.txt``, ``risk_table_map.pkl``, ``impute_dict.pkl``, ``hyperparameters.json`` and,
when given, the ``calibration/`` lookup tables. ``fit_and_package`` first fits those artifacts
(and, if asked, the model and its calibration) from a training DataFrame.

Everything is validated before anything is written; the directory is built beside its
destination and moved into place at the end, so a failure never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mainsail.features.artifacts import (
    FEATURE_COLUMNS,
    HYPERPARAMETERS,
    IMPUTE_DICT,
    RISK_TABLES,
    write_feature_columns,
)
from mainsail.features.fitting import column_names

if TYPE_CHECKING:
    from mainsail.features.calibration import Calibrator

ModelClass = Literal["xgboost", "lightgbm", "sklearn"]
CalibrateMethod = Literal["none", "percentile", "isotonic"]
Points = list[tuple[float, float]]

XGBOOST_MODEL = "xgboost_model.bst"
LIGHTGBM_MODEL = "model.txt"
SKLEARN_MODEL = "model.joblib"
FEATURE_IMPORTANCE = "feature_importance.json"
_SUPPORTED = ("an xgboost.Booster or XGBModel (XGBClassifier), a lightgbm.Booster or LGBMModel (LGBMClassifier), "
              "or a fitted scikit-learn classifier with predict_proba")


@dataclass(frozen=True)
class _Model:
    library: ModelClass
    num_classes: int
    write: Callable[[Path], None]  # writes the model file(s) into a directory
    predict: Callable[[np.ndarray], np.ndarray]  # (N, n) float32 -> (N, C) probabilities


def _two_columns(scores: Any) -> np.ndarray:
    values = np.asarray(scores)
    return np.column_stack([1 - values, values]) if values.ndim == 1 else values


def _xgboost_model(model: Any, columns: list[str]) -> _Model | None:
    try:
        import xgboost
    except ImportError:
        return None
    if isinstance(model, xgboost.XGBModel):
        if not model.__sklearn_is_fitted__():
            raise ValueError(f"the {type(model).__name__} is not fitted: call .fit first (fit_and_package can fit it)")
        try:
            best: int | None = model.best_iteration
        except AttributeError:  # defined only after early stopping
            best = None
        # Keep what model.predict_proba uses: only the trees up to the best iteration.
        booster = model.get_booster()[: best + 1] if best is not None else model.get_booster().copy()
    elif isinstance(model, xgboost.Booster):
        booster = model.copy()  # never mutate the caller's booster when setting feature names
    else:
        return None
    if booster.num_features() != len(columns):
        raise ValueError(f"the booster takes {booster.num_features()} features, "
                         f"but feature_columns names {len(columns)}")
    if "c" in (booster.feature_types or ()):
        raise ValueError("the booster was trained on native categorical features (enable_categorical): the tabular "
                         "handler feeds numbers, so risk-map categorical columns (fit_risk_tables) and retrain")
    if booster.feature_names is None:
        booster.feature_names = list(columns)
    elif list(booster.feature_names) != columns:
        raise ValueError(f"the booster's feature names {list(booster.feature_names)} differ from feature_columns "
                         f"{columns}: pass the columns the model was trained on, in training order")
    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    if objective.startswith("binary:"):
        num_classes = 2
    elif objective == "multi:softprob":
        num_classes = int(learner["learner_model_param"]["num_class"])
    else:
        raise ValueError(f"objective {objective!r} does not give class probabilities: the tabular handler serves "
                         "binary:* and multi:softprob XGBoost models")
    raw = bytes(booster.save_raw("ubj"))  # what save_model writes to a .bst, without its format warning
    importance = json.dumps(booster.get_fscore(), indent=2)

    def write(directory: Path) -> None:
        (directory / XGBOOST_MODEL).write_bytes(raw)
        (directory / FEATURE_IMPORTANCE).write_text(importance, encoding="utf-8")

    def predict(features: np.ndarray) -> np.ndarray:
        return _two_columns(booster.inplace_predict(features, validate_features=False))

    return _Model("xgboost", num_classes, write, predict)


def _lightgbm_model(model: Any, columns: list[str]) -> _Model | None:
    try:
        import lightgbm
    except ImportError:
        return None
    if isinstance(model, lightgbm.LGBMModel):
        if not model.__sklearn_is_fitted__():
            raise ValueError(f"the {type(model).__name__} is not fitted: call .fit first (fit_and_package can fit it)")
        booster = model.booster_
    elif isinstance(model, lightgbm.Booster):
        booster = model
    else:
        return None
    text = booster.model_to_string()  # the best iteration when there is one, as save_model and predict use
    header: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("Tree="):
            break
        key, sep, value = line.partition("=")
        if sep:
            header.setdefault(key, value)
    if booster.num_feature() != len(columns):
        raise ValueError(f"the booster takes {booster.num_feature()} features but feature_columns names {len(columns)}")
    names = header.get("feature_names", "").split()
    if names and not all(n == f"Column_{i}" for i, n in enumerate(names)) and names != columns:
        raise ValueError(f"the booster's feature names {names} differ from feature_columns {columns}: pass the "
                         "columns the model was trained on, in training order")
    objective = header.get("objective", "").split(" ")[0]
    if objective == "binary":
        num_classes = 2
    elif objective in ("multiclass", "multiclassova"):
        num_classes = int(header["num_class"])
    else:
        raise ValueError(f"objective {objective!r} does not give class probabilities: the tabular handler serves "
                         "binary and multiclass LightGBM models")

    def write(directory: Path) -> None:
        (directory / LIGHTGBM_MODEL).write_text(text, encoding="utf-8")

    def predict(features: np.ndarray) -> np.ndarray:
        return _two_columns(booster.predict(features))

    return _Model("lightgbm", num_classes, write, predict)


def _sklearn_model(model: Any, columns: list[str]) -> _Model | None:
    if not (hasattr(model, "predict_proba") and hasattr(model, "fit")):
        return None
    if _is_unfitted(model):
        raise ValueError(f"the {type(model).__name__} is not fitted: call .fit first (fit_and_package can fit it)")
    classes = getattr(model, "classes_", None)
    if classes is None:
        raise ValueError(f"the {type(model).__name__} has no classes_: a fitted classifier is needed")
    n_in = getattr(model, "n_features_in_", None)
    if n_in is not None and n_in != len(columns):
        raise ValueError(f"the estimator takes {n_in} features but feature_columns names {len(columns)}")
    fitted_names = getattr(model, "feature_names_in_", None)
    if fitted_names is not None and [str(n) for n in fitted_names] != columns:
        raise ValueError(f"the estimator's feature_names_in_ {list(fitted_names)} differ from feature_columns "
                         f"{columns}: pass the columns the model was trained on, in training order")

    def write(directory: Path) -> None:
        import joblib

        joblib.dump(model, directory / SKLEARN_MODEL)

    def predict(features: np.ndarray) -> np.ndarray:
        if fitted_names is None:
            return np.asarray(model.predict_proba(features))
        import pandas as pd

        return np.asarray(model.predict_proba(pd.DataFrame(features, columns=columns)))

    return _Model("sklearn", len(classes), write, predict)


def _is_unfitted(model: Any) -> bool:
    try:
        from sklearn.base import BaseEstimator
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted
    except ImportError:
        return False
    if not isinstance(model, BaseEstimator):  # a duck-typed classifier: taken as fitted
        return False
    try:
        check_is_fitted(model)
    except NotFittedError:
        return True
    return False


def _resolve_model(model: Any, columns: list[str]) -> _Model:
    for resolve in (_xgboost_model, _lightgbm_model, _sklearn_model):
        found = resolve(model, columns)
        if found is not None:
            return found
    raise TypeError(f"cannot package a {type(model).__module__}.{type(model).__qualname__}: pass {_SUPPORTED}")


def _feature_names(feature_columns: Sequence[str]) -> list[str]:
    names = column_names(feature_columns, "feature_columns")
    if not names:
        raise ValueError("feature_columns must name at least one column")
    for name in names:
        if not name or name != name.strip() or "," in name or "\n" in name or "\r" in name:
            raise ValueError(f"feature column {name!r} cannot round-trip through {FEATURE_COLUMNS}: names must be "
                             "non-empty, without commas, line breaks or surrounding spaces (rename the column)")
    return names


def _cat_names(cat_columns: Sequence[str], features: list[str]) -> list[str]:
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


def _risk_tables(risk_tables: Mapping[str, Any] | None, features: list[str],
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


def _impute_values(impute_values: Mapping[str, Any] | None, features: list[str], cats: list[str]) -> dict[str, float]:
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
    from mainsail.features.calibration import LookupTable

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


def _calibration_files(calibration: Any, num_classes: int) -> dict[str, Points]:
    """Relative path under the model directory -> the points of the table written there."""
    from mainsail.features import calibration as cal

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


def _hyperparameters(user: Mapping[str, Any] | None, features: list[str], cats: list[str], model: _Model) -> str:
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


def _destination(out_dir: str | os.PathLike[str], archive: bool, overwrite: bool) -> tuple[Path, Path | None]:
    out = Path(os.fspath(out_dir)).absolute()
    if not out.name:
        raise ValueError(f"out_dir {out} has no name: give a directory to create, such as ./model")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"{out} exists and is not a directory: choose another out_dir")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: choose a new directory or pass overwrite=True to replace it")
        if not (out / FEATURE_COLUMNS).is_file():
            raise FileExistsError(f"{out} holds files but no {FEATURE_COLUMNS}: overwrite=True only replaces a model "
                                  "directory; empty or remove it yourself")
    tar = out.with_name(out.name + ".tar.gz") if archive else None
    if tar is not None and tar.exists() and not overwrite:
        raise FileExistsError(f"{tar} exists: pass overwrite=True to replace it")
    return out, tar


def _write_directory(out: Path, write: Callable[[Path], None]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write(staging)
        staging.chmod(0o755)
        if out.is_dir() and any(out.iterdir()):
            old = out.with_name(f".{out.name}.{uuid.uuid4().hex}.old")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if out.is_dir():
                out.rmdir()
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_archive(source: Path, tar_path: Path) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{tar_path.name}.", suffix=".tmp", dir=tar_path.parent)
    os.close(fd)
    try:
        with tarfile.open(name, "w:gz") as tar:
            for path in sorted(source.rglob("*")):
                tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False, filter=_anonymous)
        os.chmod(name, 0o644)
        os.replace(name, tar_path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _package(out: Path, tar: Path | None, model: _Model, features: list[str], cats: list[str],
             risk_tables: dict[str, dict[str, Any]], impute_values: dict[str, float],
             calibration: dict[str, Points], hyperparameters: str) -> Path:
    from mainsail.features.calibration import write_table

    def write(directory: Path) -> None:
        model.write(directory)
        write_feature_columns(directory / FEATURE_COLUMNS, features)
        (directory / RISK_TABLES).write_bytes(pickle.dumps(risk_tables))
        (directory / IMPUTE_DICT).write_bytes(pickle.dumps(impute_values))
        (directory / HYPERPARAMETERS).write_text(hyperparameters + "\n", encoding="utf-8")
        for relative, points in calibration.items():
            write_table(directory / relative, points)

    _write_directory(out, write)
    if tar is None:
        return out
    _write_archive(out, tar)
    return tar


def package_model(
    out_dir: str | os.PathLike[str],
    model: Any,
    *,
    feature_columns: Sequence[str],
    cat_columns: Sequence[str] = (),
    risk_tables: Mapping[str, Mapping[str, Any]] | None = None,
    impute_values: Mapping[str, float] | None = None,
    calibration: Mapping[str, Any] | Calibrator | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    archive: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and its artifacts as a model directory the tabular handler serves as it stands.

    ``model``: an ``xgboost.Booster``/``XGBModel`` (written as ``xgboost_model.bst``, UBJSON, with
    ``feature_names`` set to ``feature_columns`` when it has none; an early-stopped XGBClassifier
    keeps only the trees its ``predict_proba`` uses; plus ``feature_importance.json``), a
    ``lightgbm.Booster``/``LGBMModel`` (``model.txt``) or any other fitted scikit-learn classifier
    with ``predict_proba`` (``model.joblib``). Binary and multiclass probability objectives only.

    ``feature_columns``: the model's inputs in training order (``feature_columns.txt``).
    ``cat_columns``: the risk-mapped ones; each needs a table in ``risk_tables`` (the output of
    ``fit_risk_tables``) and no other column may have one. ``impute_values``: ``{column: float}``
    for non-categorical feature columns (``fit_imputation``). Both pickles are always written (the
    handler requires them), empty when not given. ``calibration``: ``{"kind": "percentile" |
    "binary", "points": [(raw, calibrated), ...]}`` (the output of ``fit_percentile_table`` /
    ``fit_isotonic_table``), ``{"kind": "multiclass", "points": {class_index: points}}``, or a
    loaded ``Calibrator``; written under ``calibration/`` with ``write_table``. ``hyperparameters``:
    merged into ``hyperparameters.json`` (sorted keys), which always holds ``tab_field_list``,
    ``cat_field_list``, ``full_field_list`` (features, then ``id_name``/``label_name`` when given),
    ``is_binary``, ``num_classes``, ``multiclass_categories`` and ``model_class``; a user value that
    contradicts a derived one is an error.

    ``out_dir`` must not exist or be empty; ``overwrite=True`` replaces a previous model directory
    (one holding ``feature_columns.txt``) and a previous archive. ``archive=True`` also writes
    ``<out_dir>.tar.gz`` beside the directory (``model`` -> ``model.tar.gz``), its files at the top
    level as SageMaker expects, and returns that path; otherwise returns the directory (absolute).

    Everything is validated first: ``TypeError`` for an unsupported model or argument type,
    ``ValueError`` for inconsistent columns, tables, calibration or hyperparameters,
    ``FileExistsError`` for an occupied destination. Nothing is written unless all pass.
    """
    out, tar = _destination(out_dir, archive, overwrite)
    features = _feature_names(feature_columns)
    cats = _cat_names(cat_columns, features)
    resolved = _resolve_model(model, features)
    return _package(out, tar, resolved, features, cats, _risk_tables(risk_tables, features, cats),
                    _impute_values(impute_values, features, cats),
                    _calibration_files(calibration, resolved.num_classes),
                    _hyperparameters(hyperparameters, features, cats, resolved))


def fit_and_package(
    out_dir: str | os.PathLike[str],
    model: Any,
    frame: Any,
    *,
    label: str,
    feature_columns: Sequence[str],
    cat_columns: Sequence[str] = (),
    calibrate: CalibrateMethod = "none",
    scores: Any = None,
    smooth_factor: float = 0.0,
    count_threshold: int = 0,
    calibration_bins: int = 1000,
    hyperparameters: Mapping[str, Any] | None = None,
    archive: bool = False,
    overwrite: bool = False,
) -> Path:
    """Fit the preprocessing artifacts on ``frame``, then ``package_model`` (same return and errors).

    ``frame`` holds the feature columns and the binary ``label`` (0/1; rows with -1 or NaN are
    unlabelled: left out of every fit). Fitted here:

    * risk tables for ``cat_columns`` (``fit_risk_tables`` with ``smooth_factor``/``count_threshold``);
    * imputation means for EVERY other feature column, as the reference's inline training does (a
      column never missing in training may be missing in a request); each must be numeric;
    * the model, only when ``model`` is an unfitted scikit-learn-API classifier (XGBClassifier,
      LGBMClassifier, any sklearn classifier): ``model.fit`` on the labelled rows of
      ``transform_features(frame, ...)``, a DataFrame named by ``feature_columns``. A fitted model
      is used as it is and MUST have been trained on that same transform (fitting the artifacts is
      deterministic, so calling ``fit_risk_tables``/``fit_imputation`` with the same arguments and
      ``transform_features`` reproduces it); otherwise fit and package separately;
    * with ``calibrate="percentile"`` a ``fit_percentile_table`` on the class-1 scores of every
      row, with ``"isotonic"`` a ``fit_isotonic_table`` on the labelled rows' scores and labels
      (``calibration_bins`` bins/points). ``scores`` (one class-1 probability per row of ``frame``)
      default to the packaged model's own on the transformed frame. Scores of the training frame
      are in-sample: for held-out calibration fit the table on validation scores yourself and pass
      it to ``package_model``. Calibration needs a binary model.

    ``label_name`` is added to ``hyperparameters``.
    """
    import pandas as pd

    from mainsail.features.fitting import fit_imputation, fit_risk_tables, labelled_rows, transform_features

    out, tar = _destination(out_dir, archive, overwrite)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    if calibrate not in ("none", "percentile", "isotonic"):
        raise ValueError(f"calibrate must be 'none', 'percentile' or 'isotonic', got {calibrate!r}")
    features = _feature_names(feature_columns)
    cats = _cat_names(cat_columns, features)
    if label in features:
        raise ValueError(f"the label column {label!r} cannot be a feature column")
    if hyperparameters is not None and hyperparameters.get("label_name", label) != label:
        raise ValueError(f"hyperparameters['label_name'] contradicts label={label!r}: drop it")
    keep = labelled_rows(frame, label).to_numpy()
    labels = frame[label].to_numpy()[keep].astype(np.float64).astype(np.int64)
    risk_tables = dict(fit_risk_tables(frame, label, cats, smooth_factor=smooth_factor,
                                       count_threshold=count_threshold)) if cats else {}
    impute_values = fit_imputation(frame, [c for c in features if c not in cats])
    matrix = transform_features(frame, features, risk_tables, impute_values)
    if _is_unfitted(model) and hasattr(model, "fit"):
        model.fit(pd.DataFrame(matrix[keep], columns=features), labels)
    resolved = _resolve_model(model, features)

    calibration: dict[str, Any] | None = None
    if calibrate != "none":
        from mainsail.features.calibration import fit_isotonic_table, fit_percentile_table

        if resolved.num_classes != 2:
            raise ValueError(f"calibrate={calibrate!r} needs a binary model, this one has {resolved.num_classes} "
                             "classes: fit per-class tables and pass calibration= to package_model")
        if scores is None:
            values = np.asarray(resolved.predict(matrix), dtype=np.float64)[:, 1]
        else:
            values = np.asarray(scores, dtype=np.float64)
            if values.shape != (len(frame),):
                raise ValueError(f"scores must hold one class-1 probability per row of frame ({len(frame)}), "
                                 f"got shape {values.shape}")
        if calibrate == "percentile":
            calibration = {"kind": "percentile", "points": fit_percentile_table(values, n_bins=calibration_bins)}
        else:
            calibration = {"kind": "binary",
                           "points": fit_isotonic_table(values[keep], labels, n_points=calibration_bins)}
    params = {**(hyperparameters or {}), "label_name": label}
    return _package(out, tar, resolved, features, cats, _risk_tables(risk_tables, features, cats),
                    _impute_values(impute_values, features, cats),
                    _calibration_files(calibration, resolved.num_classes),
                    _hyperparameters(params, features, cats, resolved))
