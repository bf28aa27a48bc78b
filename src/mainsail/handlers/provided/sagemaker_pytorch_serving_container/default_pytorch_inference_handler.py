"""``DefaultPytorchInferenceHandler`` (provided by mainsail): its four ``default_*`` methods are the
PyTorch defaults mainsail serves with (:mod:`mainsail.handlers.defaults`): ``model.pt`` or the one
``*.pt`` / ``*.pth`` file loaded with TorchScript and put on this worker's device; JSON / CSV / NPY
in as a float tensor; ``model(data)`` under ``no_grad``; the first encodable Accept out. The Elastic
Inference branch (``SAGEMAKER_INFERENCE_ACCELERATOR_PRESENT``, a retired service) is not provided."""

from __future__ import annotations

from typing import Any

from mainsail.errors import ModelLoadError as _Failed
from mainsail.handlers import defaults as _defaults

try:  # the real toolkit's base class where it is installed (mainsail[toolkit])
    from sagemaker_inference.default_inference_handler import DefaultInferenceHandler as _Base
except ImportError:  # pragma: no cover - the toolkit ships in the dev extra
    _Base = object  # type: ignore[assignment,misc,unused-ignore]

DEFAULT_MODEL_FILENAME = "model.pt"
INFERENCE_ACCELERATOR_PRESENT_ENV = "SAGEMAKER_INFERENCE_ACCELERATOR_PRESENT"


class ModelLoadError(Exception):
    """The model file is not TorchScript."""


class DefaultPytorchInferenceHandler(_Base):  # type: ignore[misc,valid-type,unused-ignore]
    """The PyTorch container's default handler, whose methods scripts call from their own functions."""

    VALID_CONTENT_TYPES = ("application/json", "application/x-npy")

    def default_model_fn(self, model_dir: str, context: Any = None) -> Any:
        try:
            model = _defaults.default_model_fn(model_dir, "pytorch")
        except _Failed as exc:
            raise ModelLoadError(exc.message) from exc
        return _defaults.prepare_pytorch_model(model)

    def default_input_fn(self, input_data: Any, content_type: str, context: Any = None) -> Any:
        return _defaults.defaults_for("pytorch").input_fn(input_data, content_type)

    def default_predict_fn(self, data: Any, model: Any, context: Any = None) -> Any:
        return _defaults.defaults_for("pytorch").predict_fn(data, model)

    def default_output_fn(self, prediction: Any, accept: str, context: Any = None) -> Any:
        return _defaults.defaults_for("pytorch").output_fn(prediction, accept)
