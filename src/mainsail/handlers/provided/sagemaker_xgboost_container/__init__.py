"""The part of the XGBoost container's ``sagemaker_xgboost_container`` package that scripts import
(:mod:`.encoder`, :mod:`.data_utils`, :mod:`.distributed`), provided by mainsail (see
:mod:`mainsail.handlers.provided`)."""
