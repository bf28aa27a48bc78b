"""Text preprocessing that reproduces the reference (cursus bsm_pytorch) pipelines step for step.

A model trained by the reference pipeline saw its text fields through a list of named steps stored in
``hyperparameters.json`` (``text_processing_steps`` for bimodal models, ``primary_``/``secondary_``
for trimodal ones). Serving must apply the same steps with the same quirks, or the model sees other
inputs than it was trained on. The quirks are copied on purpose:

- ``emoji_remover`` deletes everything from U+24C2 to U+1F251, CJK, Hangul and kana included;
- text without ``[bom]``/``[eom]`` markers splits into no messages and is served as the chunk ``"."``;
- chunks are packed to ``max_sen_len`` tokens *without* special tokens, so the final tokenizer step
  cuts the last two tokens of a full chunk to make room for ``[CLS]``/``[SEP]``;
- a single message longer than ``max_sen_len`` tokens is cut and decoded back to text.

Steps are plain callables with a ``name`` (the reference's live in :mod:`mainsail.features.text_steps`).
A :class:`StepRegistry` instance maps step names to factories ``factory(settings, tokenizer) -> step``;
:func:`default_registry` holds the reference's steps, and users may register their own. This module
owns the settings, pipelines, the registry and the tokenizer lookup.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from mainsail.errors import ModelLoadError
from mainsail.features.text_steps import (
    CsAdapter,
    CsChatSplitter,
    DialogueChunker,
    DialogueSplitter,
    EmojiRemover,
    HtmlNormalizer,
    TextNormalizer,
    TextUpper,
    Tokenize,
)

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "bert-base-multilingual-cased"
"""The reference handler's tokenizer when the model config names none."""

DEFAULT_STEPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        # The reference handler leaves html_normalizer out of its defaults (it is slow).
        "bimodal": ("dialogue_splitter", "emoji_remover", "text_normalizer", "dialogue_chunker", "tokenizer"),
        "primary": ("dialogue_splitter", "emoji_remover", "text_normalizer", "dialogue_chunker", "tokenizer"),
        "secondary": ("dialogue_splitter", "text_normalizer", "dialogue_chunker", "tokenizer"),
    }
)
"""The reference handler's step lists for hyperparameters that name none (read-only)."""

_UNBUILDABLE_STEPS = frozenset(
    {"fasttext_embedding", "sequence_ordering", "sequence_padding", "temporal_mask", "time_delta"}
)


class TextStep(Protocol):
    """One text processing step: takes the previous step's output, returns the next step's input.

    Inputs and outputs are ``str``, ``list[str]``, ``list[dict[str, str]]`` (cs_chat_splitter) or,
    for the final tokenizer step, ``list[dict[str, list[int]]]``. Steps must not keep per-call state:
    one instance serves concurrent requests.
    """

    @property
    def name(self) -> str: ...

    def __call__(self, value: Any) -> Any: ...


def run_many(step: TextStep, values: list[Any]) -> list[Any]:
    """``[step(v) for v in values]``, through the step's own ``many`` when it has one (the steps
    that call the tokenizer make one call for all values; each value's result is unchanged)."""
    many = getattr(step, "many", None)
    if many is not None:
        results: list[Any] = many(values)
        return results
    return [step(value) for value in values]


@dataclass(frozen=True)
class TextSettings:
    """The hyperparameters the steps read (the reference ``Config`` fields and defaults)."""

    max_sen_len: int
    chunk_trancate: bool  # (sic) the reference's spelling
    max_total_chunks: int
    input_ids_key: str = "input_ids"
    attention_mask_key: str = "attention_mask"

    def __post_init__(self) -> None:
        for field in ("max_sen_len", "max_total_chunks"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field} must be an int, got {value!r}")
        if self.max_sen_len < 2:
            raise ValueError(f"max_sen_len must be at least 2 (room for [CLS] and [SEP]), got {self.max_sen_len}")
        if self.max_total_chunks < 1:
            raise ValueError(f"max_total_chunks must be at least 1, got {self.max_total_chunks}")
        if not isinstance(self.chunk_trancate, bool):
            raise TypeError(f"chunk_trancate must be a bool, got {self.chunk_trancate!r}")
        if not self.input_ids_key or not self.attention_mask_key or self.input_ids_key == self.attention_mask_key:
            raise ValueError("input_ids_key and attention_mask_key must be two different non-empty names")

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> TextSettings:
        """Read the settings from hyperparameters.json, with the reference ``Config`` defaults.

        Values are coerced the way the reference's pydantic ``Config`` does ("32" -> 32,
        "true" -> True); a value that cannot be coerced raises ``ValueError`` naming the key.
        """
        return cls(
            max_sen_len=_as_int(hp, "max_sen_len", 512),
            chunk_trancate=_as_bool(hp, "chunk_trancate", False),
            max_total_chunks=_as_int(hp, "max_total_chunks", 5),
            input_ids_key=str(hp.get("text_input_ids_key", "input_ids")),
            attention_mask_key=str(hp.get("text_attention_mask_key", "attention_mask")),
        )


def _as_int(hp: Mapping[str, Any], key: str, default: int) -> int:
    value = hp.get(key, default)
    if isinstance(value, bool):
        raise ValueError(f"hyperparameter {key!r} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"hyperparameter {key!r} must be an integer, got {value!r}")


def _as_bool(hp: Mapping[str, Any], key: str, default: bool) -> bool:
    value = hp.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "true", "t", "yes", "y", "on"):
            return True
        if word in ("0", "false", "f", "no", "n", "off"):
            return False
    raise ValueError(f"hyperparameter {key!r} must be a boolean, got {value!r}")


# ---------------------------------------------------------------------------------------- pipelines

StepFactory = Callable[[TextSettings, Any], TextStep]
"""``factory(settings, tokenizer) -> step``; called once per pipeline build."""


@dataclass(frozen=True)
class TextPipeline:
    """Steps applied in order to one raw field value, ending in chunk encodings."""

    steps: tuple[TextStep, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a text pipeline needs at least one step")

    @property
    def names(self) -> tuple[str, ...]:
        """The step names, in order."""
        return tuple(step.name for step in self.steps)

    def __call__(self, text: Any) -> list[dict[str, list[int]]]:
        """Run the steps on a raw field value and return its chunk encodings.

        ``None`` and NaN become ``""`` and anything else its ``str()``, as in the reference handler.
        A single dict from the last step is wrapped in a list (as the reference handler does); any
        other result that is not a list of dicts raises ``TypeError``.
        """
        return self.many([text])[0]

    def many(self, texts: Sequence[Any]) -> list[list[dict[str, list[int]]]]:
        """``[self(text) for text in texts]``, each step run over all texts at once (one tokenizer
        call per step instead of one per text); every text's encodings are those it gets alone."""
        values: list[Any] = [
            "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text) for text in texts
        ]
        for step in self.steps:
            values = run_many(step, values)
        return [self._encodings(value) for value in values]

    def _encodings(self, value: Any) -> list[dict[str, list[int]]]:
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(chunk, dict) for chunk in value):
            raise TypeError(
                f"text pipeline {list(self.names)} must end in chunk encodings (a list of dicts), "
                f"got {type(value).__name__}; end it with the 'tokenizer' step"
            )
        return value


class StepRegistry:
    """Named step factories; users can register their own.

    One instance is built per application (see :func:`default_registry`) and passed down.
    """

    def __init__(self) -> None:
        self._factories: dict[str, StepFactory] = {}

    def register(self, name: str, factory: StepFactory, *, replace: bool = False) -> None:
        """Register ``factory`` under ``name``; a taken name raises ``ValueError`` unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a step name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise TypeError(f"the factory for step {name!r} must be callable, got {factory!r}")
        if name in self._factories and not replace:
            raise ValueError(f"text step {name!r} is already registered; pass replace=True to replace it")
        self._factories[name] = factory

    def names(self) -> list[str]:
        """The registered step names, in registration order."""
        return list(self._factories)

    def build(self, names: Sequence[str], settings: TextSettings, tokenizer: Any) -> TextPipeline:
        """Build a pipeline of the named steps, in order.

        Raises ``ValueError`` for an empty list, an unknown name (listing the known ones) or a name the
        reference registers but cannot build from a step list (fasttext_embedding, temporal steps), and
        ``TypeError`` when ``names`` is a string or a factory returns something that is not a step.
        """
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"text processing steps must be a list of step names, got {names!r}")
        if not names:
            raise ValueError("text processing steps are empty; name at least the 'tokenizer' step")
        steps: list[TextStep] = []
        for name in names:
            factory = self._factories.get(name)
            if factory is None:
                if name in _UNBUILDABLE_STEPS:
                    raise ValueError(
                        f"text step {name!r} needs parameters a step list cannot carry (the reference cannot "
                        "build it from hyperparameters either); register a factory for it to use it"
                    )
                raise ValueError(f"unknown text step {name!r}; known steps: {', '.join(self._factories)}")
            step = factory(settings, tokenizer)
            if not callable(step) or not isinstance(getattr(step, "name", None), str):
                raise TypeError(f"the factory for text step {name!r} returned {step!r}, not a named callable")
            steps.append(step)
        return TextPipeline(tuple(steps))


def default_registry() -> StepRegistry:
    """A new registry holding the reference's list-buildable steps."""
    registry = StepRegistry()
    registry.register("dialogue_splitter", lambda settings, tokenizer: DialogueSplitter())
    registry.register("html_normalizer", lambda settings, tokenizer: HtmlNormalizer())
    registry.register("emoji_remover", lambda settings, tokenizer: EmojiRemover())
    registry.register("text_normalizer", lambda settings, tokenizer: TextNormalizer())
    registry.register("text_upper", lambda settings, tokenizer: TextUpper())
    registry.register("cs_chat_splitter", lambda settings, tokenizer: CsChatSplitter())
    registry.register("cs_adapter", lambda settings, tokenizer: CsAdapter())
    registry.register(
        "dialogue_chunker",
        lambda settings, tokenizer: DialogueChunker(
            tokenizer, settings.max_sen_len, settings.chunk_trancate, settings.max_total_chunks
        ),
    )
    registry.register(
        "tokenizer",
        lambda settings, tokenizer: Tokenize(
            tokenizer, settings.max_sen_len, settings.input_ids_key, settings.attention_mask_key
        ),
    )
    return registry


def _steps_for(hp: Mapping[str, Any], key: str, default: str, field: str) -> Sequence[str]:
    steps = hp.get(key)
    if steps is None:
        logger.warning(
            "hyperparameters have no %s; text field %r uses the reference handler's default steps %s",
            key,
            field,
            list(DEFAULT_STEPS[default]),
        )
        return DEFAULT_STEPS[default]
    return steps  # type: ignore[no-any-return]


def pipelines_from_hyperparameters(
    hp: Mapping[str, Any], tokenizer: Any, registry: StepRegistry | None = None
) -> dict[str, TextPipeline]:
    """Build the text pipelines a reference model was trained with, keyed by text field name.

    Trimodal (``primary_text_name`` set): pipelines for the primary and secondary fields from
    ``primary_``/``secondary_text_processing_steps``. Otherwise bimodal: one pipeline for
    ``text_name`` from ``text_processing_steps``, or none when the model has no text field. A
    missing (or null) step list takes :data:`DEFAULT_STEPS` and logs a warning. Settings come from
    :meth:`TextSettings.from_hyperparameters`; steps from ``registry`` (default: a new
    :func:`default_registry`).
    """
    registry = registry if registry is not None else default_registry()
    settings = TextSettings.from_hyperparameters(hp)
    primary = hp.get("primary_text_name")
    if not primary:
        text_name = hp.get("text_name")
        if not text_name:
            return {}
        steps = _steps_for(hp, "text_processing_steps", "bimodal", text_name)
        return {text_name: registry.build(steps, settings, tokenizer)}
    secondary = hp.get("secondary_text_name")
    if not secondary:
        raise ValueError("hyperparameters name a primary_text_name but no secondary_text_name")
    if secondary == primary:
        raise ValueError(f"primary_text_name and secondary_text_name are both {primary!r}")
    return {
        primary: registry.build(
            _steps_for(hp, "primary_text_processing_steps", "primary", primary), settings, tokenizer
        ),
        secondary: registry.build(
            _steps_for(hp, "secondary_text_processing_steps", "secondary", secondary), settings, tokenizer
        ),
    }


def resolve_tokenizer(name_or_path: str, model_dir: Path) -> Any:
    """Load the fast tokenizer the model config names, never from the network.

    Tries, in order: the folder of that name inside ``model_dir``, a local folder at that path, then
    the local Hugging Face cache with ``local_files_only=True``. An empty name means
    :data:`DEFAULT_TOKENIZER`, as in the reference handler. Raises ``ModelLoadError`` naming every
    place tried (or the folder that failed to load).
    """
    from transformers import AutoTokenizer

    name = name_or_path or DEFAULT_TOKENIZER
    tried: list[str] = []
    for where, folder in (("model directory", Path(model_dir) / name), ("local path", Path(name).expanduser())):
        if folder.is_dir():
            try:
                return AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)
            except Exception as exc:  # transformers raises OSError, ValueError and tokenizers' bare Exception
                raise ModelLoadError(f"cannot load tokenizer {name!r} from {folder}: {exc}") from exc
        tried.append(f"{where} {folder} (no such folder)")
    try:
        return AutoTokenizer.from_pretrained(name, use_fast=True, local_files_only=True)
    except Exception as exc:  # same translation as above
        tried.append(f"local Hugging Face cache, offline ({type(exc).__name__}: {exc})")
        raise ModelLoadError(f"tokenizer {name!r} not found; tried: {'; '.join(tried)}") from exc
