"""Default handler functions, per framework, for scripts that leave some out.

They reproduce the SageMaker framework containers' defaults: the inference toolkit's decoders and
encoders, the scikit-learn container's ``float32`` cast and 2-D reshape with ``model.predict``, the
XGBoost container's CSV / LIBSVM decoder (:mod:`mainsail.codecs.xgboost_inputs`) and
``predict(..., validate_features=False)``, and the PyTorch toolkit's tensor conversion with
``model(data)`` under ``no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mainsail.codecs import huggingface, toolkit, xgboost_inputs
from mainsail.errors import BadRequest, HandlerError, ModelLoadError
from mainsail.handlers.gpus import torch_device, worker_gpu


@dataclass(frozen=True)
class Defaults:
    """The fallbacks for one framework: each takes the toolkit's arguments, never a context."""

    framework: str
    input_fn: Callable[[Any, str], Any]
    predict_fn: Callable[[Any, Any], Any]
    output_fn: Callable[[Any, str], Any]
    stacks: bool = False
    """Whether ``predict_fn`` is one model call over rows, so requests' rows may share one call."""
    rows_input_fn: Callable[[Any, str], Any] | None = None
    """For stacking: ``input_fn`` stopping at the rows (before a wrapper that does not stack)."""
    rows_predict_fn: Callable[[Any, Any], Any] | None = None
    """For stacking: ``predict_fn`` over what ``rows_input_fn`` returns (stacked or not)."""


def _generic_input(data: Any, content_type: str) -> Any:
    return toolkit.decode(data, content_type)


def _generic_predict(data: Any, model: Any) -> Any:
    predict = getattr(model, "predict", None)
    if callable(predict):
        return predict(data)
    if callable(model):
        return model(data)
    raise HandlerError(
        "Please provide a predict_fn implementation: the model has no predict() and is not callable"
    )


def _generic_output(prediction: Any, accept: str) -> tuple[bytes, str]:
    return toolkit.encode(prediction, accept)


def _sklearn_input(data: Any, content_type: str) -> Any:
    # CSV as floats (an empty field or a word NaN): the float32 cast below would make a filled integer
    # of an empty field otherwise
    array = toolkit.decode(data, content_type, numeric=True)
    if toolkit.media_type_of(content_type) in toolkit.UTF8_TYPES:
        if array.ndim == 1:
            array = array.reshape(1, -1)
        try:
            return array.astype(np.float32)
        except ValueError as exc:  # words in a JSON body: a 500 in the container, the client's error here
            raise BadRequest(f"{toolkit.media_type_of(content_type)} body cannot be read as numbers: {exc}") from None
    return array


def _sklearn_predict(data: Any, model: Any) -> Any:
    return model.predict(data)


def _xgboost_input(data: Any, content_type: str) -> Any:
    import xgboost

    return xgboost.DMatrix(xgboost_inputs.rows(data, content_type))


def _xgboost_predict(data: Any, model: Any) -> Any:
    # The XGBoost container's default: feature names are not checked (a booster trained on a
    # DataFrame answers a CSV request, whose DMatrix has none).
    return model.predict(data, validate_features=False)


def _xgboost_predict_rows(rows: Any, model: Any) -> Any:
    import xgboost

    return model.predict(xgboost.DMatrix(rows), validate_features=False)


def _pytorch_defaults() -> Defaults:
    import torch

    device = torch_device(torch)

    def input_fn(data: Any, content_type: str) -> Any:
        array = toolkit.decode(data, content_type)
        if toolkit.media_type_of(content_type) in toolkit.UTF8_TYPES:
            return torch.FloatTensor(array).to(device)
        return torch.from_numpy(array).to(device)

    def predict_fn(data: Any, model: Any) -> Any:
        with torch.no_grad():
            return model(data.to(device))

    def output_fn(prediction: Any, accept: str) -> Any:
        if isinstance(prediction, torch.Tensor):
            prediction = prediction.detach().cpu().numpy().tolist()
        body, _ = toolkit.encode(prediction, accept)
        # The PyTorch toolkit returns the body alone, so the response type is the Accept as sent.
        return body

    return Defaults("pytorch", input_fn, predict_fn, output_fn, stacks=True)


def prepare_pytorch_model(model: Any) -> Any:
    """Once at load (the toolkit does it on every request): move to the device, eval mode."""
    import torch

    device = torch_device(torch)
    model = model.to(device)
    model.eval()
    return model


def _transformers_object(obj: Any) -> bool:
    return (type(obj).__module__ or "").split(".", 1)[0] == "transformers"


def detect_framework(model: Any) -> str:
    """Which container's defaults fit a loaded model, judged by the model's own type: a ``transformers``
    pipeline, or a tuple / list / dict holding ``transformers`` objects (``(model, tokenizer)``), is the
    Hugging Face container's."""
    import sys

    parts = list(model.values()) if isinstance(model, dict) else list(model) if isinstance(model, tuple | list) else []
    pipelines = sys.modules.get("transformers.pipelines")
    if (pipelines is not None and isinstance(model, pipelines.Pipeline)) or any(
            _transformers_object(p) for p in parts[:8]):
        return "huggingface"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "pytorch"
    sklearn_base = sys.modules.get("sklearn.base")
    if sklearn_base is not None and isinstance(model, sklearn_base.BaseEstimator):
        return "sklearn"
    module = type(model).__module__ or ""
    top = module.split(".", 1)[0]
    if top == "torch":
        return "pytorch"
    if top == "xgboost" and type(model).__name__ == "Booster":
        return "xgboost"
    if top in ("sklearn", "lightgbm", "xgboost", "catboost", "imblearn"):
        return "sklearn"
    return "generic"


def _huggingface_predict(data: Any, model: Any) -> Any:
    """The Hugging Face container's ``predict``: ``model(inputs, **parameters)`` from the decoded dict
    (anything else is the inputs themselves)."""
    if isinstance(data, dict):
        inputs = data.pop("inputs", data)
        parameters = data.pop("parameters", None)
    else:
        inputs, parameters = data, None
    return model(inputs, **parameters) if parameters is not None else model(inputs)


HF_TASK_BY_HEAD = {
    "ForSequenceClassification": "text-classification", "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering", "ForMaskedLM": "fill-mask", "ForCausalLM": "text-generation",
    "ForConditionalGeneration": "text2text-generation", "Model": "feature-extraction",
}


def huggingface_model_fn(model_dir: str, architecture: str | None) -> Any:
    """The Hugging Face container's model loading: a ``transformers`` pipeline of ``HF_TASK``, else of the
    task the ``architectures`` in ``config.json`` name (``...ForSequenceClassification`` →
    ``text-classification`` ...), on this worker's GPU when there is one."""
    import os

    task = os.environ.get("HF_TASK")
    if not task and architecture:
        task = next((name for head, name in HF_TASK_BY_HEAD.items() if architecture.endswith(head)), None)
    if not task:
        raise HandlerError("set HF_TASK to the pipeline task (e.g. text-classification): no config.json architecture "
                           f"in {model_dir} names one")
    from transformers import pipeline

    gpu = worker_gpu()
    return pipeline(task, model=model_dir, tokenizer=model_dir,  # type: ignore[call-overload]
                    device=-1 if gpu is None else gpu)


def defaults_for(framework: str) -> Defaults:
    if framework == "huggingface":
        return Defaults("huggingface", huggingface.decode, _huggingface_predict, huggingface.encode)
    if framework == "pytorch":
        return _pytorch_defaults()
    if framework == "sklearn":
        return Defaults("sklearn", _sklearn_input, _sklearn_predict, _generic_output, stacks=True)
    if framework == "xgboost":
        return Defaults("xgboost", _xgboost_input, _xgboost_predict, _generic_output, stacks=True,
                        rows_input_fn=xgboost_inputs.rows, rows_predict_fn=_xgboost_predict_rows)
    return Defaults("generic", _generic_input, _generic_predict, _generic_output)


def _hf_architecture(model_dir: str) -> str | None:
    """The first architecture ``config.json`` names (a ``transformers`` checkpoint), if any."""
    import json
    import os

    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            architectures = json.load(f).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None
    return str(architectures[0]) if architectures else None


def default_model_fn(model_dir: str, framework: str) -> Any:
    """The containers' ``model_fn`` fallback. The PyTorch container loads TorchScript: ``model.pt``,
    else the one ``*.pt`` / ``*.pth`` file of the model directory, whatever its name (more than one
    is its ``ValueError``, one that is not TorchScript its ``ModelLoadError``); the others refuse."""
    import os

    architecture = _hf_architecture(model_dir)
    if framework == "huggingface" or (framework == "auto" and (os.environ.get("HF_TASK") or architecture)):
        return huggingface_model_fn(model_dir, architecture)
    path = os.path.join(model_dir, "model.pt")
    candidates = [path] if os.path.isfile(path) else sorted(
        os.path.join(model_dir, name) for name in os.listdir(model_dir)
        if os.path.splitext(name)[1] in (".pt", ".pth") and os.path.isfile(os.path.join(model_dir, name)))
    if framework in ("pytorch", "auto") and (candidates or framework == "pytorch"):
        if len(candidates) != 1:
            raise HandlerError("Exactly one .pth or .pt file is required for PyTorch models: "
                               f"{[os.path.basename(c) for c in candidates]}")
        import torch

        try:
            return torch.jit.load(candidates[0], map_location="cpu")  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ModelLoadError(f"Failed to load {candidates[0]}. Please ensure model is saved using "
                                 "torchscript.") from exc
    raise HandlerError(
        "Please provide a model_fn implementation: the script defines no model_fn "
        f"and no default applies to {model_dir}"
    )
