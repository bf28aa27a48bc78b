"""The older name of :mod:`.default_pytorch_inference_handler` (provided by mainsail)."""

from .default_pytorch_inference_handler import (
    DEFAULT_MODEL_FILENAME,
    DefaultPytorchInferenceHandler,
    ModelLoadError,
)

__all__ = ["DEFAULT_MODEL_FILENAME", "DefaultPytorchInferenceHandler", "ModelLoadError"]
