"""``sagemaker_sklearn_container.serving``'s default functions as scripts call them (provided by
mainsail): the same decoders, the ``float32`` cast and the ``worker.Response`` answer as the
scikit-learn container, on the provided ``sagemaker_containers`` modules. The container's server
(``main``, ``serving_entrypoint``) is mainsail itself and is not provided."""

from __future__ import annotations

from typing import Any

import numpy as np
from sagemaker_containers import _content_types as content_types
from sagemaker_containers import _encoders as encoders
from sagemaker_containers import _worker as worker

from .exceptions import UserError


def default_model_fn(model_dir: str) -> Any:
    """There is none for scikit-learn: the script must define ``model_fn``."""
    raise NotImplementedError("Please provide a model_fn implementation. See documentation for model_fn at "
                              "https://sagemaker.readthedocs.io/en/stable/frameworks/sklearn/using_sklearn.html")


def default_input_fn(input_data: Any, content_type: str) -> Any:
    """The body decoded for ``content_type`` (matched exactly), cast to ``float32`` for JSON and CSV."""
    np_array = encoders.decode(input_data, content_type)
    return np_array.astype(np.float32) if content_type in content_types.UTF8_TYPES else np_array


def default_predict_fn(input_data: Any, model: Any) -> Any:
    """``model.predict(input_data)``."""
    return model.predict(input_data)


def default_output_fn(prediction: Any, accept: str) -> Any:
    """The prediction encoded for ``accept``, as the HTTP response (a ``worker.Response``)."""
    return worker.Response(encoders.encode(prediction, accept), accept, mimetype=accept)


__all__ = ["UserError", "default_input_fn", "default_model_fn", "default_output_fn", "default_predict_fn"]
