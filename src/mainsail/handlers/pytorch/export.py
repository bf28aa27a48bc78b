"""Export a reference (cursus bsm_pytorch) model directory's network to ONNX, verified before it is written.

The file has the reference training's ONNX layout (ARTIFACTS.md section 8), so the reference handler and
mainsail's :class:`~mainsail.handlers.pytorch.handler.PyTorchHandler` both serve it:

* inputs, in order: ``<text>_input_ids`` and ``<text>_attention_mask`` int64 (batch, chunks, tokens) per
  text field (trimodal: the primary pair, then the secondary pair; ``bimodal_cnn``, which reads no mask,
  only ``<text>_input_ids``), then one float32 (batch, 1) input per ``tab_field_list`` name. The batch,
  chunk and token dimensions are dynamic (a CNN's token dimension is fixed at ``max_sen_len``). Unlike
  the reference, whose inputs all share the dimension names ``dim_1``/``dim_2`` (tab fields' second
  dimension included), the chunk and token dimensions are named per text field (``<text>_chunks``,
  ``<text>_tokens``) and a tab field's second dimension is fixed at 1: ONNX Runtime takes one name for
  one size, and this graph fails at run time (a buffer reuse error) when two text fields differ in chunk
  count under shared names;
* one output, ``probs``: softmax probabilities (batch, classes);
* opset 14 by default, written by the TorchScript exporter (``dynamo=False``).

The graph is the network's own ``forward`` traced as it is: the chunk mean over each record's VALID
chunks (models.py) traces into NonZero/GatherND/ScatterND ops, so padding chunks are skipped in the
exported graph exactly as in PyTorch, and a record's score does not depend on its batch mates. (The
reference's own export averages over every chunk, padding included; on records without padding chunks,
which is what the handler feeds, the two agree.) The single-sequence networks (``bert``, ``bimodal_cnn``)
take each record's first chunk inside the graph, so they are fed the same chunked inputs; the reference's
own exports of these classes take 2-D (batch, tokens) ids instead, and only ``probs`` (``bimodal_cnn``) or
``logits`` (``bert``) out. The tracer bakes in only shape checks (tensor rank,
empty batch), never a data-dependent branch.

Before anything is written the export is checked: ONNX Runtime and the PyTorch network score the same
sample batches (built from the model's own config: random token ids within the vocabulary, attention
masks with padded tokens, trailing padding chunks and a record without any valid chunk, batch sizes 1
and 3, chunk counts 1 to 3, text fields that differ in chunk count and length) and the largest absolute
difference of the probabilities must be within ``atol``. The file is written through a temporary file in
the target's folder and renamed into place, so a failed export leaves the folder as it was.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mainsail.errors import ModelLoadError
from mainsail.handlers.pytorch.cnn import TextCNNSubnetwork
from mainsail.handlers.pytorch.loading import load_pytorch_model
from mainsail.handlers.pytorch.models import TabularSubnetwork, TextBertClassification, TextBertSubnetwork
from mainsail.handlers.pytorch.registry import ModelRegistry

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OUTPUT_NAME = "probs"
DEFAULT_OPSET = 14
DEFAULT_ATOL = 1e-4
SAMPLE_BATCH_SIZES = (1, 3)
SAMPLE_CHUNK_COUNTS = (1, 2, 3)
_DEFAULT_TOKENS = 128  # sample chunk length when the config has no max_sen_len
_SHORT_TOKENS = 7  # a second, short chunk length, so the token dimension is checked as dynamic too


class OnnxExportError(ModelLoadError):
    """The network cannot be exported, or its export does not reproduce the PyTorch network."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote: the file, the verified largest probability difference, the
    graph's input names in order and the opset."""

    path: Path
    max_abs_diff: float
    inputs: tuple[str, ...]
    opset: int


@dataclass(frozen=True)
class _TextInput:
    field: str
    ids: str
    mask: str | None  # None: the network reads no attention mask (the CNN)
    vocab_size: int
    pad_token_id: int
    max_tokens: int
    fixed_tokens: bool = False  # every chunk must hold exactly max_tokens tokens (the CNN)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.ids,) if self.mask is None else (self.ids, self.mask)


class ProbabilitiesModule(nn.Module):
    """The exported module: the reference's positional inputs -> softmax probabilities.

    ``forward(*inputs)`` takes the tensors named ``input_names`` in that order (token ids and masks
    (B, C, T), tab fields (B, 1)), hands them to the network as its batch dict and returns
    ``softmax(logits, dim=1)``.
    """

    def __init__(self, network: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.network = network
        self.input_names = list(input_names)

    def forward(self, *inputs: Tensor) -> Tensor:
        batch = dict(zip(self.input_names, inputs, strict=True))
        return torch.softmax(self.network(batch), dim=1)


ModuleFactory = Callable[[nn.Module, Sequence[str]], nn.Module]
"""Builds the module to export from the loaded network and the input names (default ProbabilitiesModule)."""


def _text_inputs(network: nn.Module, config: Mapping[str, Any]) -> list[_TextInput]:
    # Registration order: TrimodalBert registers its primary subnetwork before the secondary one.
    suffix = "_" + str(config.get("text_input_ids_key") or "input_ids")

    def field_of(ids: str) -> str:
        return ids[: -len(suffix)] if ids.endswith(suffix) and len(ids) > len(suffix) else ids

    found: list[_TextInput] = []
    for module in network.modules():
        if isinstance(module, TextCNNSubnetwork):
            found.append(_TextInput(field_of(module.input_ids_key), module.input_ids_key, None,
                                    int(module.embeddings.num_embeddings), 0, module.max_sen_len, fixed_tokens=True))
        elif isinstance(module, (TextBertSubnetwork, TextBertClassification)):
            bert_config = module.bert.config
            max_positions = int(getattr(bert_config, "max_position_embeddings", 0) or _DEFAULT_TOKENS)
            tokens = min(int(config.get("max_sen_len") or _DEFAULT_TOKENS), max_positions)
            ids = module.input_ids_key
            found.append(_TextInput(field_of(ids), ids, module.attention_mask_key, int(bert_config.vocab_size),
                                    int(getattr(bert_config, "pad_token_id", 0) or 0), max(tokens, 1)))
    return found


def _tab_fields(network: nn.Module) -> list[str]:
    tab = getattr(network, "tab_subnetwork", None)
    return list(tab.tab_field_list) if isinstance(tab, TabularSubnetwork) else []


def _sample_batch(texts: Sequence[_TextInput], tab_fields: Sequence[str], batch: int,
                  sizes: Sequence[tuple[int, int]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One batch in the reference layout, text field i shaped (batch, *sizes[i]) (chunks, tokens).
    Record 0 has all its chunks valid (its first chunk has no padded token); record 1 has one valid
    chunk and trailing padding chunks; record 2 has one chunk fewer than the batch, except in the last
    text field, where it has no valid chunk at all."""
    out: dict[str, np.ndarray] = {}
    for index, (text, (chunks, tokens)) in enumerate(zip(texts, sizes, strict=True)):
        t = text.max_tokens if text.fixed_tokens else min(tokens, text.max_tokens)
        lengths = rng.integers(1, t + 1, size=(batch, chunks))
        lengths[0, 0] = t
        for record in range(1, batch):
            valid = 1 if record == 1 else chunks - 1
            if record >= 2 and index == len(texts) - 1:
                valid = 0
            lengths[record, valid:] = 0
        mask = (np.arange(t)[None, None, :] < lengths[:, :, None]).astype(np.int64)
        low = 1 if text.vocab_size > 1 else 0
        ids = rng.integers(low, text.vocab_size, size=(batch, chunks, t), dtype=np.int64)
        out[text.ids] = np.where(mask == 1, ids, np.int64(text.pad_token_id))
        if text.mask is not None:
            out[text.mask] = mask
    for field in tab_fields:
        out[field] = (rng.standard_normal((batch, 1)) * 3.0).astype(np.float32)
    return out


def _sample_batches(texts: Sequence[_TextInput], tab_fields: Sequence[str],
                    seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The verification batches: batch sizes 1 and 3 x chunk counts 1..3 at the config's chunk length,
    a batch of 2 x 2 chunks of a few tokens, and (with several text fields) batches whose fields differ
    in chunk count and chunk length."""
    rng = np.random.default_rng(seed)
    full = max(t.max_tokens for t in texts)
    short = min(full, _SHORT_TOKENS)
    n = len(texts)
    shapes: list[tuple[int, list[tuple[int, int]]]] = [
        (b, [(c, full)] * n) for b in SAMPLE_BATCH_SIZES for c in SAMPLE_CHUNK_COUNTS
    ]
    shapes.append((2, [(2, short)] * n))
    if n > 1:
        counts, lengths = list(SAMPLE_CHUNK_COUNTS), [full, short]
        for b in SAMPLE_BATCH_SIZES:
            shapes.append((b, [(counts[i % len(counts)], lengths[i % 2]) for i in range(n)]))
            shapes.append((b, [(counts[-1 - i % len(counts)], lengths[(i + 1) % 2]) for i in range(n)]))
    return [_sample_batch(texts, tab_fields, b, sizes, rng) for b, sizes in shapes]


def _prepared(batch: Mapping[str, Any], input_names: Sequence[str], tab_fields: Sequence[str]) -> dict[str, np.ndarray]:
    missing = [name for name in input_names if name not in batch]
    if missing:
        raise ValueError(f"a sample batch lacks inputs {missing}; it has {sorted(batch)}")
    out: dict[str, np.ndarray] = {}
    for name in input_names:
        value = np.asarray(batch[name])
        if name in tab_fields:
            out[name] = np.ascontiguousarray(value.reshape(-1, 1), dtype=np.float32)
        else:
            out[name] = np.ascontiguousarray(value, dtype=np.int64)
    return out


def _torch_probabilities(network: nn.Module, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        logits = network({k: torch.from_numpy(v.copy()) for k, v in batch.items()})
        return np.asarray(torch.softmax(logits, dim=1).float().numpy())


def _dynamic_axes(texts: Sequence[_TextInput], tab_fields: Sequence[str]) -> dict[str, dict[int, str]]:
    """``batch`` everywhere; chunks and tokens named per text field (ONNX Runtime takes one name for one
    size, and two text fields may differ in both); a tab field's second dimension is 1."""
    axes: dict[str, dict[int, str]] = {}
    for text in texts:
        per_field = {0: "batch", 1: f"{text.field}_chunks"}
        if not text.fixed_tokens:
            per_field[2] = f"{text.field}_tokens"
        for name in text.names:
            axes[name] = dict(per_field)
    for field in tab_fields:
        axes[field] = {0: "batch"}
    axes[OUTPUT_NAME] = {0: "batch"}
    return axes


def _export(module: nn.Module, example: tuple[Tensor, ...], path: Path, input_names: Sequence[str],
            dynamic_axes: dict[str, dict[int, str]], opset: int) -> None:
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.onnx.export(
            module, example, str(path), input_names=list(input_names), output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    seen: set[str] = set()
    for warning in caught:  # tracer notes on baked-in shape checks, the exporter's deprecation notice
        text = f"{warning.category.__name__}: {warning.message}"
        if text not in seen:
            seen.add(text)
            logger.debug("onnx export: %s", text)


def _verify(path: Path, network: nn.Module, batches: Iterable[Mapping[str, np.ndarray]],
            input_names: Sequence[str], ids_names: Sequence[str], atol: float) -> float:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxExportError(f"the exported graph cannot be loaded by ONNX Runtime: {exc}") from exc
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    if graph_inputs != list(input_names) or graph_outputs != [OUTPUT_NAME]:
        raise OnnxExportError(f"the exported graph has inputs {graph_inputs} and outputs {graph_outputs}; "
                              f"expected {list(input_names)} and {[OUTPUT_NAME]}")
    worst = 0.0
    for batch in batches:
        shapes = ", ".join(f"{k} {tuple(batch[k].shape)}" for k in ids_names)
        try:
            expected = _torch_probabilities(network, batch)
        except Exception as exc:
            raise OnnxExportError(f"the PyTorch network failed on a sample batch ({shapes}): "
                                  f"{type(exc).__name__}: {exc}") from exc
        try:
            got = np.asarray(session.run([OUTPUT_NAME], dict(batch))[0])
        except Exception as exc:
            raise OnnxExportError(f"ONNX Runtime failed on a sample batch ({shapes}): {exc}") from exc
        if got.shape != expected.shape:
            raise OnnxExportError(f"the exported graph gives probs of shape {got.shape} for a sample batch "
                                  f"({shapes}); PyTorch gives {expected.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))) if got.size else 0.0
        if not diff <= atol:  # NaN fails too
            raise OnnxExportError(
                f"the exported graph does not reproduce the PyTorch network: max abs difference of the "
                f"probabilities {diff:.3g} > atol {atol:g} on a sample batch ({shapes}); nothing was written"
            )
        worst = max(worst, diff)
    return worst


def export_onnx(
    model_dir: str | Path,
    *,
    output: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    sample_records: Iterable[Mapping[str, Any]] | None = None,
    registry: ModelRegistry | None = None,
    module_factory: ModuleFactory | None = None,
) -> ExportReport:
    """Export ``model_dir``'s network to ``output`` (default ``<model_dir>/model.onnx``), verified first.

    ``sample_records``: extra sample batches to verify on, each a mapping from the graph's input names
    to arrays in the reference layout (ids and masks (B, C, T), tab fields (B,) or (B, 1)), checked in
    addition to the generated ones. ``registry`` is passed to :func:`load_pytorch_model` (for user model
    classes). ``module_factory(network, input_names)`` builds the module that is exported (default
    :class:`ProbabilitiesModule`); the verification always compares with the network itself.

    Raises ModelLoadError when the directory cannot be loaded, OnnxExportError (a ModelLoadError) when the
    export fails or differs from PyTorch by more than ``atol`` (nothing is written then), ValueError for a
    negative ``atol``, an opset below 14 or a sample batch without every input.
    """
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset must be >= {DEFAULT_OPSET} (scaled_dot_product_attention needs it), got {opset}")
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory not found: {model_dir}")
    target = Path(output) if output is not None else model_dir / ONNX_FILE
    if not target.parent.is_dir():
        raise OnnxExportError(f"the output folder does not exist: {target.parent}")

    network, config = load_pytorch_model(model_dir, registry, device="cpu")
    texts = _text_inputs(network, config)
    if not texts:
        raise OnnxExportError(f"{type(network).__name__} has no BERT or CNN text subnetwork; only the "
                              "reference's networks with a text field can be exported")
    tab_fields = _tab_fields(network)
    input_names = [name for text in texts for name in text.names] + tab_fields
    batches = _sample_batches(texts, tab_fields)
    if sample_records is not None:
        batches.extend(_prepared(batch, input_names, tab_fields) for batch in sample_records)
    example_arrays = next(b for b in batches if next(iter(b.values())).shape[0] > 1 and
                          b[texts[0].ids].shape[1] > 1)
    example = tuple(torch.from_numpy(example_arrays[name].copy()) for name in input_names)
    module = (module_factory or ProbabilitiesModule)(network, input_names)
    module.eval()

    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OnnxExportError(f"cannot write in {target.parent}: {exc}") from exc
    os.close(fd)
    temp = Path(temp_name)
    try:
        try:
            _export(module, example, temp, input_names, _dynamic_axes(texts, tab_fields), opset)
        except Exception as exc:
            raise OnnxExportError(f"torch.onnx.export failed for {type(network).__name__}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        max_abs_diff = _verify(temp, network, batches, input_names, [t.ids for t in texts], atol)
        try:
            temp.chmod(0o644)  # mkstemp made it 0600
            os.replace(temp, target)
        except OSError as exc:
            raise OnnxExportError(f"cannot write {target}: {exc}") from exc
    finally:
        temp.unlink(missing_ok=True)
    logger.info("exported %s to %s (opset %d, max abs diff %.3g)", type(network).__name__, target, opset,
                max_abs_diff)
    return ExportReport(path=target, max_abs_diff=max_abs_diff, inputs=tuple(input_names), opset=opset)
