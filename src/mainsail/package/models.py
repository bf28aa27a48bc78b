"""The model libraries ``mainsail.package`` accepts: XGBoost, LightGBM and scikit-learn classifiers.

``resolve_model`` checks a model (fitted, its features matching ``feature_columns``, a probability
objective) and returns a :class:`ResolvedModel`: its library, class count, how to write its file(s)
and how to predict class probabilities. xgboost, lightgbm and sklearn are imported only to recognise
a model of theirs, and only when installed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

ModelClass = Literal["xgboost", "lightgbm", "sklearn"]

XGBOOST_MODEL = "xgboost_model.bst"
LIGHTGBM_MODEL = "model.txt"
SKLEARN_MODEL = "model.joblib"
FEATURE_IMPORTANCE = "feature_importance.json"
_SUPPORTED = ("an xgboost.Booster or XGBModel (XGBClassifier), a lightgbm.Booster or LGBMModel (LGBMClassifier), "
              "or a fitted scikit-learn classifier with predict_proba")


@dataclass(frozen=True)
class ResolvedModel:
    library: ModelClass
    num_classes: int
    write: Callable[[Path], None]  # writes the model file(s) into a directory
    predict: Callable[[np.ndarray], np.ndarray]  # (N, n) float32 -> (N, C) probabilities


def _two_columns(scores: Any) -> np.ndarray:
    values = np.asarray(scores)
    return np.column_stack([1 - values, values]) if values.ndim == 1 else values


def _xgboost_model(model: Any, columns: list[str]) -> ResolvedModel | None:
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

    return ResolvedModel("xgboost", num_classes, write, predict)


def _lightgbm_model(model: Any, columns: list[str]) -> ResolvedModel | None:
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

    return ResolvedModel("lightgbm", num_classes, write, predict)


def _sklearn_model(model: Any, columns: list[str]) -> ResolvedModel | None:
    if not (hasattr(model, "predict_proba") and hasattr(model, "fit")):
        return None
    if is_unfitted(model):
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

    return ResolvedModel("sklearn", len(classes), write, predict)


def is_unfitted(model: Any) -> bool:
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


def resolve_model(model: Any, columns: list[str]) -> ResolvedModel:
    for resolve in (_xgboost_model, _lightgbm_model, _sklearn_model):
        found = resolve(model, columns)
        if found is not None:
            return found
    raise TypeError(f"cannot package a {type(model).__module__}.{type(model).__qualname__}: pass {_SUPPORTED}")
