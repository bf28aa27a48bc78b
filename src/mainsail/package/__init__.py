"""Packaging a trained classifier as a model directory the built-in tabular handler serves, no code needed.

``package_model`` writes the reference training pipeline's layout (ARTIFACTS.md sections 2 to 5):
the model file (``xgboost_model.bst``, LightGBM ``model.txt`` or scikit-learn ``model.joblib``),
``feature_columns.txt``, ``risk_table_map.pkl``, ``impute_dict.pkl``, ``hyperparameters.json`` and,
when given, the ``calibration/`` lookup tables. ``fit_and_package`` first fits those artifacts
(and, if asked, the model and its calibration) from a training DataFrame.

This package only re-exports: the model libraries are :mod:`mainsail.package.models`, the validated
artifacts :mod:`mainsail.package.artifacts`, the writing (validated first, moved into place at the
end) :mod:`mainsail.package.write`.
"""

from __future__ import annotations

from mainsail.package.models import FEATURE_IMPORTANCE, LIGHTGBM_MODEL, SKLEARN_MODEL, XGBOOST_MODEL, ModelClass
from mainsail.package.write import CalibrateMethod, fit_and_package, package_model

__all__ = ["FEATURE_IMPORTANCE", "LIGHTGBM_MODEL", "SKLEARN_MODEL", "XGBOOST_MODEL", "CalibrateMethod", "ModelClass",
           "fit_and_package", "package_model"]
