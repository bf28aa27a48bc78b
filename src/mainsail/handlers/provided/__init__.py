"""Modules SageMaker's framework containers ship that mainsail provides itself, where the original
cannot be installed here: each top-level package in this folder imports under its original name.

The folder is appended to ``sys.path`` before a user script is imported (:data:`PATH`), after every
installed package, so the original wins wherever it is installed. Provided:
``sagemaker_xgboost_container`` ``encoder`` (the XGBoost container's decoders, which scripts call from
their own ``input_fn``), ``data_utils`` and ``distributed`` (imported at the top of script-mode files
that train and serve); ``sagemaker_containers.beta.framework``'s ``content_types``, ``encoders``,
``errors`` and ``worker.Response`` (what scikit-learn and XGBoost scripts import) and
``sagemaker_containers.entry_point``; ``sagemaker_sklearn_container.serving``'s default functions;
``sagemaker_pytorch_serving_container``'s ``DefaultPytorchInferenceHandler``.
Their modules import each other relatively, so they work under either name.
"""

from __future__ import annotations

from pathlib import Path

PATH = str(Path(__file__).resolve().parent)
