"""Which network class a model directory's ``model_class`` names.

A :class:`ModelRegistry` is an instance (no module-level registry): :func:`default_model_registry`
builds one with the classes mainsail implements, and callers may register their own. Unlike the
reference's ``load_model``, which silently builds a BimodalBert for any name it does not know (and
whose training-side ``model_select`` falls back to a text-only BERT instead), an unknown name is a
:class:`~mainsail.errors.ModelLoadError` that lists the names that are known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from mainsail.errors import ModelLoadError
from mainsail.handlers.pytorch.cnn import BimodalCNN
from mainsail.handlers.pytorch.models import BimodalBert, TextBertClassification, TrimodalBert

ModelFactory = Callable[[Mapping[str, Any]], nn.Module]
"""Builds an untrained network from a model config (see ``models.ModelConfig``)."""

_NOT_IMPLEMENTED_HINT = (
    "a cursus network mainsail does not implement in PyTorch; serve the directory's model.onnx instead"
)
REFERENCE_ONLY_CLASSES: Mapping[str, str] = MappingProxyType({
    name: _NOT_IMPLEMENTED_HINT
    for name in (
        "bimodal_gate_fusion", "multimodal_gate_fusion", "bimodal_moe", "multimodal_moe", "bimodal_cross_attn",
        "multimodal_cross_attn", "trimodal_cross_attn", "trimodal_cross_attn_bert", "trimodal_gate_fusion",
        "trimodal_gate_fusion_bert", "lstm",
    )
})
"""Names the reference knows but mainsail does not build, with the hint an error gives for them."""


def _normalise(name: str) -> str:
    return name.strip().lower()


class ModelRegistry:
    """Maps model-class names (and their aliases) to factories.

    Names are matched case-insensitively, ignoring surrounding blanks. Registering a name or alias
    that is already taken raises ``ValueError``, so a user class never silently replaces a built-in.
    """

    def __init__(self) -> None:
        self._factories: dict[str, ModelFactory] = {}
        self._canonical: dict[str, str] = {}

    def register(self, name: str, factory: ModelFactory, *, aliases: Iterable[str] = ()) -> None:
        """Make ``factory`` buildable as ``name`` and each alias; raises ValueError on a taken name."""
        if not callable(factory):
            raise TypeError(f"factory for {name!r} must be callable, got {type(factory).__name__}")
        canonical = _normalise(name)
        spellings = [canonical, *(_normalise(a) for a in aliases)]
        for spelling in spellings:
            if not spelling:
                raise ValueError("model class names must not be empty")
            if spelling in self._canonical:
                raise ValueError(f"model class name {spelling!r} is already registered "
                                 f"(for {self._canonical[spelling]!r})")
        if len(set(spellings)) != len(spellings):
            raise ValueError(f"duplicate spellings in {spellings}")
        self._factories[canonical] = factory
        for spelling in spellings:
            self._canonical[spelling] = canonical

    def resolve(self, name: str) -> str:
        """The canonical name ``name`` stands for; ModelLoadError (listing the known names) if none."""
        canonical = self._canonical.get(_normalise(name))
        if canonical is None:
            hint = REFERENCE_ONLY_CLASSES.get(_normalise(name))
            detail = f" ({hint})" if hint else ""
            raise ModelLoadError(
                f"unknown model_class {name!r}{detail}; known model classes: {', '.join(self.names())}"
            )
        return canonical

    def create(self, name: str, config: Mapping[str, Any]) -> nn.Module:
        """An untrained network of class ``name`` built from ``config``.

        Raises ModelLoadError for an unknown name, and for a config the class rejects (a missing or
        invalid key), chained to the original error.
        """
        canonical = self.resolve(name)
        try:
            return self._factories[canonical](config)
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"cannot build model_class {canonical!r} from its config: {exc}") from exc

    def names(self) -> list[str]:
        """Every accepted spelling (canonical names and aliases), sorted."""
        return sorted(self._canonical)

    def aliases(self, name: str) -> list[str]:
        """The other spellings of ``name``'s class, sorted (ModelLoadError if unknown)."""
        canonical = self.resolve(name)
        return sorted(s for s, c in self._canonical.items() if c == canonical and s != canonical)


def default_model_registry() -> ModelRegistry:
    """A new registry holding the reference networks mainsail implements.

    ``bimodal_bert`` (aliases ``bimodal``, ``multimodal_bert``), ``trimodal_bert`` (alias ``trimodal``),
    ``bimodal_cnn`` (alias ``multimodal_cnn``) and the text-only ``bert``: the spellings under which BOTH the
    reference's training (``model_select``) and its loader (``load_model``) build these classes. The other
    trimodal spellings are deliberately not aliases: training's
    ``trimodal_cross_attn``/``trimodal_gate_fusion`` are different architectures, and ``trimodal_*_bert``
    trains a text-only BERT (model_select's fallback) but loads as another class.
    """
    registry = ModelRegistry()
    registry.register("bimodal_bert", BimodalBert, aliases=("bimodal", "multimodal_bert"))
    registry.register("trimodal_bert", TrimodalBert, aliases=("trimodal",))
    registry.register("bimodal_cnn", BimodalCNN, aliases=("multimodal_cnn",))
    registry.register("bert", TextBertClassification)
    return registry
