"""The built-in PyTorch handler's networks and loader for reference (cursus bsm_pytorch) model directories.

``models`` (BERT-based) and ``cnn`` re-implement the reference networks in plain torch (strict-loadable
from ``model.pth``), ``registry`` maps ``model_class`` names to them, and ``loading`` reads a model
directory safely (``weights_only``). Importing this package imports torch and transformers.
"""

from __future__ import annotations

from mainsail.handlers.pytorch.loading import (
    load_encoder_config,
    load_model_artifacts,
    load_pytorch_model,
    resolve_encoder_source,
)
from mainsail.handlers.pytorch.models import BimodalBert, TabularSubnetwork, TextBertSubnetwork, TrimodalBert
from mainsail.handlers.pytorch.registry import ModelFactory, ModelRegistry, default_model_registry

__all__ = [
    "BimodalBert",
    "ModelFactory",
    "ModelRegistry",
    "TabularSubnetwork",
    "TextBertSubnetwork",
    "TrimodalBert",
    "default_model_registry",
    "load_encoder_config",
    "load_model_artifacts",
    "load_pytorch_model",
    "resolve_encoder_source",
]
