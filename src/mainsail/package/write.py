"""``package_model`` and ``fit_and_package``: a model and its artifacts written as a model directory.

Everything is validated before anything is written; the directory is built beside its destination
and moved into place at the end (then, if asked, archived as ``<out_dir>.tar.gz``), so a failure
never leaves a half-written model.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mainsail.features.artifacts import (
    FEATURE_COLUMNS,
    HYPERPARAMETERS,
    IMPUTE_DICT,
    RISK_TABLES,
    write_feature_columns,
)
from mainsail.features.calibration import Calibrator
from mainsail.features.fitting import (
    fit_imputation,
    fit_isotonic_table,
    fit_percentile_table,
    fit_risk_tables,
    labelled_rows,
    transform_features,
    write_table,
)
from mainsail.package.artifacts import (
    Points,
    calibration_files,
    cat_names,
    checked_impute_values,
    checked_risk_tables,
    feature_names,
    hyperparameters_json,
)
from mainsail.package.models import ResolvedModel, is_unfitted, resolve_model

CalibrateMethod = Literal["none", "percentile", "isotonic"]


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


def _package(out: Path, tar: Path | None, model: ResolvedModel, features: list[str], cats: list[str],
             risk_tables: dict[str, dict[str, Any]], impute_values: dict[str, float],
             calibration: dict[str, Points], hyperparameters: str) -> Path:
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
    features = feature_names(feature_columns)
    cats = cat_names(cat_columns, features)
    resolved = resolve_model(model, features)
    return _package(out, tar, resolved, features, cats, checked_risk_tables(risk_tables, features, cats),
                    checked_impute_values(impute_values, features, cats),
                    calibration_files(calibration, resolved.num_classes),
                    hyperparameters_json(hyperparameters, features, cats, resolved))


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

    out, tar = _destination(out_dir, archive, overwrite)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    if calibrate not in ("none", "percentile", "isotonic"):
        raise ValueError(f"calibrate must be 'none', 'percentile' or 'isotonic', got {calibrate!r}")
    features = feature_names(feature_columns)
    cats = cat_names(cat_columns, features)
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
    if is_unfitted(model) and hasattr(model, "fit"):
        model.fit(pd.DataFrame(matrix[keep], columns=features), labels)
    resolved = resolve_model(model, features)

    calibration: dict[str, Any] | None = None
    if calibrate != "none":
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
    return _package(out, tar, resolved, features, cats, checked_risk_tables(risk_tables, features, cats),
                    checked_impute_values(impute_values, features, cats),
                    calibration_files(calibration, resolved.num_classes),
                    hyperparameters_json(params, features, cats, resolved))
