"""Handlers turn an invocation into a reply: user scripts and the built-in model handlers."""

from __future__ import annotations

from pathlib import Path

from mainsail.errors import ModelLoadError
from mainsail.handlers.base import Handler, Invocation, Reply
from mainsail.handlers.script import ScriptHandler
from mainsail.handlers.tabular import TabularHandler, find_model_file
from mainsail.handlers.xgboost_algorithm import MODEL_FILE, XGBoostAlgorithmHandler
from mainsail.settings import ServeSettings

__all__ = ["Handler", "Invocation", "Reply", "ScriptHandler", "build_handler"]


def build_handler(model_path: Path, script: Path | None, *, framework: str = "auto",
                  model_name: str = "model", settings: ServeSettings | None = None) -> Handler:
    """The handler for a prepared model: its script if it has one, else a built-in handler."""
    if script is not None:
        return ScriptHandler(script, model_path, framework=framework, model_name=model_name)
    if (model_path / "model_artifacts.pth").is_file() and (
            (model_path / "model.pth").is_file() or (model_path / "model.onnx").is_file()):
        # Here, not at the top: the PyTorch handler imports torch and transformers.
        from mainsail.handlers.pytorch.handler import PyTorchHandler

        if settings is None:
            return PyTorchHandler(model_path)
        return PyTorchHandler(model_path, use_onnx=settings.use_onnx, device=settings.device,
                              onnx_intra_op_threads=settings.onnx_intra_op_threads,
                              onnx_inter_op_threads=settings.onnx_inter_op_threads)
    if model_path.is_dir() and find_model_file(model_path) is not None:
        return TabularHandler(model_path)
    if (model_path / MODEL_FILE).is_file():
        return XGBoostAlgorithmHandler(model_path)
    files = sorted(p.name for p in model_path.iterdir())[:20] if model_path.is_dir() else []
    raise ModelLoadError(
        f"no inference script (looked for code/inference.py in {model_path}; set --entry-point "
        f"or SAGEMAKER_PROGRAM) and no built-in handler recognises the files there: {files}"
    )
