"""Loading a reference (cursus bsm_pytorch) PyTorch model directory without unpickling code.

The directory holds ``model_artifacts.pth`` (a dict: ``config``, ``embedding_mat``, ``vocab``,
``model_class``, version strings, one of them a ``torch.torch_version.TorchVersion`` object),
``model.pth`` (the network's ``state_dict``) and the encoder's folder named by ``config["tokenizer"]``.
Both ``.pth`` files are read with ``torch.load(weights_only=True)``; the only class admitted beyond
torch's tensor allowlist is ``TorchVersion``. Every failure is a :class:`~mainsail.errors.ModelLoadError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.torch_version import TorchVersion
from transformers import AutoConfig, BertConfig

from mainsail.errors import ModelLoadError
from mainsail.handlers.pytorch.registry import ModelRegistry, default_model_registry

logger = logging.getLogger(__name__)

ARTIFACTS_FILE = "model_artifacts.pth"
WEIGHTS_FILE = "model.pth"
HYPERPARAMETERS_FILE = "hyperparameters.json"

_ARTIFACT_GLOBALS: list[Any] = [TorchVersion]  # read-only; a list because safe_globals wants one
_SHOWN_KEYS = 5
_WEIGHT_PREFIXES = (  # (state_dict key prefix, the reference class it betrays) for error hints
    ("primary_text_subnetwork.bert.", "trimodal_bert"),
    ("text_subnetwork.bert.", "bimodal_bert"),
    ("text_subnetwork.convs.", "bimodal_cnn"),
    ("bert.bert.", "bert (TextBertClassification)"),
)


def _torch_load(path: Path, what: str, map_location: str | torch.device) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(_ARTIFACT_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError for refused globals, RuntimeError/OSError for bad files
        raise ModelLoadError(f"cannot read {what} {path} safely (weights_only): {exc}") from exc


def load_model_artifacts(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict saved in ``model_artifacts.pth``, read with ``weights_only=True``.

    Admits ``TorchVersion`` (returned as a plain ``str``) and nothing else beyond torch's defaults, so a
    file with any other global (arbitrary code) is refused. Raises ModelLoadError when the file is
    missing, unreadable, refused, or not a dict whose ``config`` is a dict.
    """
    path = Path(path)
    artifacts = _torch_load(path, "model artifacts", map_location)
    if not isinstance(artifacts, dict) or not isinstance(artifacts.get("config"), dict):
        raise ModelLoadError(f"{path} is not a cursus model_artifacts file (a dict with a 'config' dict)")
    return {k: str(v) if isinstance(v, TorchVersion) else v for k, v in artifacts.items()}


def resolve_encoder_source(tokenizer: str, model_dir: Path) -> str:
    """Where the encoder named ``tokenizer`` lives: ``model_dir/<tokenizer>`` or the path itself when
    that folder exists (the reference resolves a bare name against its working directory, which is the
    model directory in the fixtures), else ``tokenizer`` unchanged (a Hugging Face name, looked up in
    the local cache only).
    """
    for candidate in (model_dir / tokenizer, Path(tokenizer)):
        if candidate.is_dir():
            return str(candidate)
    return tokenizer


def load_encoder_config(tokenizer: str, model_dir: Path) -> BertConfig:
    """The ``BertConfig`` of the encoder named ``tokenizer`` (never downloads); ModelLoadError otherwise."""
    source = resolve_encoder_source(tokenizer, model_dir)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read the encoder config for tokenizer {tokenizer!r} (looked in {model_dir / tokenizer} "
            f"and the local Hugging Face cache; nothing is downloaded): {exc}"
        ) from exc
    if not isinstance(config, BertConfig):
        raise ModelLoadError(f"encoder {source!r} is a {type(config).__name__}; only BERT encoders are supported")
    return config


def _model_class(artifacts: Mapping[str, Any], model_dir: Path) -> str:
    for value in (artifacts.get("model_class"), artifacts["config"].get("model_class")):
        if isinstance(value, str) and value:
            return value
    hyper = model_dir / HYPERPARAMETERS_FILE
    try:
        value = json.loads(hyper.read_text()).get("model_class")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"no model_class in {ARTIFACTS_FILE}, and {hyper} cannot be read: {exc}") from exc
    if not isinstance(value, str) or not value:
        raise ModelLoadError(f"no model_class in {ARTIFACTS_FILE} or {hyper}")
    return value


def _shown(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def _check_state_dict(model: nn.Module, state: Any, model_class: str, path: Path) -> None:
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} is not a state_dict (a mapping of names to tensors)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if not (missing or unexpected or shapes):
        return
    problems = [f"{label}: {_shown(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
    looks_like = next((cls for prefix, cls in _WEIGHT_PREFIXES if any(k.startswith(prefix) for k in state)), None)
    hint = f"; the weights look like a {looks_like} network" if looks_like else ""
    raise ModelLoadError(f"{path} does not fit model_class {model_class!r}: {'; '.join(problems)}{hint}")


def load_pytorch_model(
    model_dir: str | Path,
    registry: ModelRegistry | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Build and load the network of a reference model directory, ready for inference.

    Reads ``model_artifacts.pth`` (its ``config`` is the runtime config, as in the reference handler),
    picks the class named by the artifacts' ``model_class`` (then ``config["model_class"]``, then
    hyperparameters.json) from ``registry`` (default: :func:`default_model_registry`), builds it with
    the encoder config read from the tokenizer folder, loads ``model.pth`` strictly and returns the
    model on ``device`` in eval mode without gradients, with a copy of the config whose ``model_class``
    is the name used. Raises ModelLoadError for a missing or unsafe file, an unknown class, an
    unreadable encoder config, or weights that do not fit (naming a few missing/unexpected keys).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory not found: {model_dir}")
    registry = registry if registry is not None else default_model_registry()
    artifacts = load_model_artifacts(model_dir / ARTIFACTS_FILE, map_location=device)
    config = dict(artifacts["config"])
    model_class = _model_class(artifacts, model_dir)
    registry.resolve(model_class)  # an unknown class fails before anything else is read
    config["model_class"] = model_class
    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelLoadError(f"model weights not found: {weights_path}")

    encoder_problem: ModelLoadError | None = None
    build_config: dict[str, Any] = dict(config)
    if isinstance(artifacts.get("embedding_mat"), torch.Tensor):  # the CNN's initial word embeddings
        build_config["embedding_mat"] = artifacts["embedding_mat"]
    tokenizer = config.get("tokenizer")
    if isinstance(tokenizer, str) and tokenizer:
        try:
            build_config["bert_config"] = load_encoder_config(tokenizer, model_dir)
        except ModelLoadError as exc:  # fatal only if the class needs it (a user class may not)
            encoder_problem = exc
    try:
        model = registry.create(model_class, build_config)
    except ModelLoadError as exc:
        if encoder_problem is not None:
            raise ModelLoadError(f"{exc.message} ({encoder_problem.message})") from encoder_problem
        raise

    state = _torch_load(weights_path, "model weights", device)
    _check_state_dict(model, state, model_class, weights_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"cannot load {weights_path} into model_class {model_class!r}: {exc}") from exc
    model.to(device).eval().requires_grad_(False)
    logger.info("loaded %s (%s) from %s", type(model).__name__, model_class, model_dir)
    return model, config
