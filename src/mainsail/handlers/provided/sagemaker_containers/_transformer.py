"""``sagemaker_containers`` ``transformer`` (provided by mainsail): the default functions of the
scikit-learn / XGBoost containers' serving and the ``Transformer`` that chains a script's functions.
``Transformer.transform`` (which reads Flask's current request) is mainsail's server itself; the
default transform, ``_default_transform_fn(model, content, content_type, accept)``, is provided."""

from __future__ import annotations

import json
import textwrap
import traceback
from collections.abc import Callable
from typing import Any

from . import _content_types, _encoders, _env, _errors, _functions, _worker


def default_model_fn(model_dir: str) -> Any:
    raise NotImplementedError(textwrap.dedent("""
    Please provide a model_fn implementation.
    See documentation for model_fn at https://github.com/aws/sagemaker-python-sdk
    """))


def default_input_fn(input_data: Any, content_type: str) -> Any:
    return _encoders.decode(input_data, content_type)


def default_predict_fn(data: Any, model: Any) -> Any:
    raise NotImplementedError(textwrap.dedent("""
    Please provide a predict_fn implementation.
    See documentation for predict_fn at https://github.com/aws/sagemaker-python-sdk
    """))


def default_output_fn(prediction: Any, accept: str) -> _worker.Response:
    return _worker.Response(response=_encoders.encode(prediction, accept), mimetype=accept)


class Transformer:
    """A script's functions (or the defaults) chained, each user function's errors wrapped in
    ``error_class``; ``initialize()`` loads the model from ``env.model_dir``."""

    def __init__(self, model_fn: Callable[..., Any] | None = None, input_fn: Callable[..., Any] | None = None,
                 predict_fn: Callable[..., Any] | None = None, output_fn: Callable[..., Any] | None = None,
                 transform_fn: Callable[..., Any] | None = None,
                 error_class: type[Exception] = _errors.ClientError) -> None:
        if transform_fn and (input_fn or predict_fn or output_fn):
            raise ValueError("Cannot use transform_fn implementation with input_fn, predict_fn, and/or output_fn")
        wrap = _functions.error_wrapper
        self._model: Any = None
        self._model_fn = wrap(model_fn, error_class) if model_fn else default_model_fn
        self._transform_fn = wrap(transform_fn, error_class) if transform_fn else self._default_transform_fn
        self._input_fn = wrap(input_fn, error_class) if input_fn else default_input_fn
        self._predict_fn = wrap(predict_fn, error_class) if predict_fn else default_predict_fn
        self._output_fn = wrap(output_fn, error_class) if output_fn else default_output_fn
        self._error_class = error_class

    def initialize(self) -> None:
        self._model = self._model_fn(_env.model_dir)

    def _default_transform_fn(self, model: Any, content: Any, content_type: str, accept: str) -> Any:
        try:
            data = self._input_fn(content, content_type)
        except _errors.UnsupportedFormatError as exc:
            return self._error_response(exc, 415)
        prediction = self._predict_fn(data, model)
        try:
            return self._output_fn(prediction, accept)
        except _errors.UnsupportedFormatError as exc:
            return self._error_response(exc, 406)

    def _error_response(self, error: Exception, status_code: int) -> _worker.Response:
        body = json.dumps({"error": error.__class__.__name__, "error-message": str(error),
                           "stack-trace": traceback.format_exc()})
        return _worker.Response(response=body, status=status_code, mimetype=_content_types.JSON)
