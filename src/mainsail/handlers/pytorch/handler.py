"""The built-in multimodal PyTorch handler: reference (cursus bsm_pytorch) model directories, no user code.

Per record: tab fields imputed and made floats, text fields run through the pipelines rebuilt from
``hyperparameters.json``, then the network (``model.onnx`` through ONNX Runtime when present, else
``model.pth``), softmax probabilities, calibration, and the reference response layout.

A record's scores never depend on its batch mates: records are grouped by their chunk counts and
each group runs as one batch with no padding chunks (so the ONNX graph's chunk mean, which counts
every chunk, sees only real ones), and the PyTorch networks average valid chunks only.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from mainsail.codecs import default_registry
from mainsail.codecs.toolkit import media_type_of
from mainsail.errors import BadRequest, MissingColumns, ModelError, ModelLoadError, UnsupportedContentType
from mainsail.features.artifacts import (
    FEATURE_COLUMNS,
    HYPERPARAMETERS,
    IMPUTE_DICT,
    load_mapping_artifact,
    read_feature_columns,
    read_hyperparameters,
)
from mainsail.features.calibration import Calibrator, calibrate, load_calibrator
from mainsail.features.output import encode_scores
from mainsail.features.tabular import TabularPreprocessor
from mainsail.features.text import TextPipeline, pipelines_from_hyperparameters, resolve_tokenizer
from mainsail.handlers.base import Invocation, Outcome, Reply, invoke_each
from mainsail.handlers.gpus import worker_gpu
from mainsail.handlers.pytorch.loading import load_model_artifacts, load_pytorch_model
from mainsail.handlers.pytorch.registry import default_model_registry
from mainsail.handlers.script import import_script

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ARTIFACTS_FILE = "model_artifacts.pth"
# One record's text fields as chunk encodings, and its tab row.
Encoded = tuple[dict[str, list[dict[str, list[int]]]], np.ndarray]
INPUT_TYPES = ("application/json", "application/jsonlines", "text/csv", "application/x-parquet")
MAX_SEQUENCES = 512
"""Most chunk sequences (records x chunks, all text fields) in one forward pass."""


class Network(Protocol):
    """Runs one group of records with equal chunk counts: named inputs -> (B, classes) probabilities."""

    kind: str

    def probabilities(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray: ...


class OnnxNetwork:
    kind = "onnx"
    # Thread counts default to ONNX Runtime's own (None); the settings' ONNX_INTRA_OP_THREADS and
    # ONNX_INTER_OP_THREADS override them, as in the reference handler.

    def __init__(self, path: Path, intra_op_threads: int | None, inter_op_threads: int | None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if inter_op_threads:
            options.inter_op_num_threads = inter_op_threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"{path.name} cannot be loaded by ONNX Runtime: {exc}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]

    def probabilities(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        feed: dict[str, np.ndarray] = {}
        for name in self.input_names:
            value = inputs[name]
            if "input_ids" in name or "attention_mask" in name:
                feed[name] = value.astype(np.int64, copy=False)
            else:
                feed[name] = value.reshape(-1, 1).astype(np.float32, copy=False)
        return np.asarray(self.session.run(None, feed)[0])


USER_MODELS_MODULE = "mainsail_models.py"
ENTRY_POINT_GROUP = "mainsail.models"


def model_registry(model_dir: Path) -> Any:
    """The default model classes, plus those registered by installed packages (entry points in the
    ``mainsail.models`` group) and by the model directory's ``code/mainsail_models.py``: each is a
    callable (or a module with ``register``) taking the registry and calling ``registry.register``."""
    from importlib.metadata import entry_points

    registry = default_model_registry()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()(registry)
        except Exception as exc:
            raise ModelLoadError(f"model classes from entry point {entry.name!r} failed: {exc}") from exc
    user = model_dir / "code" / USER_MODELS_MODULE
    if user.is_file():
        register = getattr(import_script(user), "register", None)
        if not callable(register):
            raise ModelLoadError(f"code/{USER_MODELS_MODULE} must define register(registry)")
        try:
            register(registry)
        except Exception as exc:
            raise ModelLoadError(f"code/{USER_MODELS_MODULE} register() failed: {type(exc).__name__}: {exc}") from exc
    return registry


class TorchNetwork:
    kind = "pytorch"

    def __init__(self, model_dir: Path, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model, _ = load_pytorch_model(model_dir, model_registry(model_dir), device=self.device)

    def probabilities(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            logits = self.model(batch)
            return np.asarray(torch.softmax(logits, dim=1).float().cpu().numpy())


def _resolve_device(device: str) -> str:
    if device not in ("auto", "cuda"):
        return device
    import torch

    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    gpu = worker_gpu()  # workers spread over the visible GPUs
    return "cuda" if gpu is None else f"cuda:{gpu}"


class PyTorchHandler:
    """Loads a reference PyTorch model directory and answers with its response layout."""

    name = "pytorch-multimodal"
    batchable = True

    def __init__(self, model_dir: Path, *, use_onnx: bool | None = None, device: str = "auto",
                 onnx_intra_op_threads: int | None = None, onnx_inter_op_threads: int | None = None) -> None:
        self.model_dir = model_dir
        self.use_onnx = use_onnx
        self.device = device
        self.onnx_threads = (onnx_intra_op_threads, onnx_inter_op_threads)
        self.codecs = default_registry()
        self.network: Network | None = None
        self.pipelines: dict[str, TextPipeline] = {}
        self.tabular: TabularPreprocessor | None = None
        self.feature_columns: list[str] = []
        self.calibrator: Calibrator | None = None
        self.input_keys: dict[str, tuple[str, str]] = {}
        # A fast tokenizer re-sets its backend's padding and truncation on every call, so two threads
        # tokenizing at once corrupt each other's chunks: text preprocessing runs one record at a time.
        self._text_lock = threading.Lock()

    # -- load ----------------------------------------------------------------------------------
    def load(self) -> None:
        config = dict(load_model_artifacts(self.model_dir / ARTIFACTS_FILE)["config"])
        hp_path = self.model_dir / HYPERPARAMETERS
        if hp_path.is_file():
            text_config = {**config, **read_hyperparameters(hp_path)}
        else:
            logger.warning("%s is missing: text pipelines take the default steps", HYPERPARAMETERS)
            text_config = {k: v for k, v in config.items() if not k.endswith("text_processing_steps")}
        tokenizer = resolve_tokenizer(str(text_config.get("tokenizer") or ""), self.model_dir)
        self.pipelines = pipelines_from_hyperparameters(text_config, tokenizer)
        ids_key = text_config.get("text_input_ids_key") or "input_ids"
        mask_key = text_config.get("text_attention_mask_key") or "attention_mask"
        self.input_keys = {f: (f"{f}_{ids_key}", f"{f}_{mask_key}") for f in self.pipelines}
        tab_fields = list(config.get("tab_field_list") or [])
        impute = load_mapping_artifact(self.model_dir / IMPUTE_DICT, "value")
        if impute is None:
            from_config = config.get("imputation_dict") or {}
            if not isinstance(from_config, Mapping):
                raise ModelLoadError("the config's imputation_dict must be a dict of column -> value")
            impute = dict(from_config)
        self.tabular = TabularPreprocessor(tab_fields, {}, {k: v for k, v in impute.items() if k in tab_fields}) \
            if tab_fields else None
        columns_file = self.model_dir / FEATURE_COLUMNS
        if columns_file.is_file():
            self.feature_columns = read_feature_columns(columns_file)
        else:
            cat_fields = list(config.get("cat_field_list") or [])
            self.feature_columns = tab_fields + [c for c in cat_fields if c not in tab_fields]
        for field in self.pipelines:
            if field not in self.feature_columns:
                self.feature_columns.append(field)
        onnx_path = self.model_dir / ONNX_FILE
        use_onnx = onnx_path.is_file() if self.use_onnx is None else self.use_onnx
        if use_onnx:
            self.network = OnnxNetwork(onnx_path, *self.onnx_threads)
        else:
            self.network = TorchNetwork(self.model_dir, _resolve_device(self.device))
        try:
            self.calibrator = load_calibrator(self.model_dir)
        except ModelLoadError as exc:
            logger.error("calibration is broken, serving raw scores as calibrated: %s", exc.message)
            self.calibrator = None
        logger.info("pytorch handler: %s network, text fields %s, %d tab fields, calibration: %s",
                    self.network.kind, list(self.pipelines), len(tab_fields),
                    self.calibrator.kind if self.calibrator else "none")

    # -- request path --------------------------------------------------------------------------
    def invoke(self, invocation: Invocation) -> Reply:
        return self._reply(self.predict_records(self._decode(invocation)), invocation)

    def invoke_batch(self, invocations: Sequence[Invocation]) -> list[Outcome]:
        """Several requests' records scored in one pass (grouped by chunk count as always, so each
        record's scores are those it gets alone); each request answered with its own Accept."""
        return invoke_each(invocations, self._decode, self._predict_requests, self._reply)

    def _decode(self, invocation: Invocation) -> list[dict[str, Any]]:
        return self.records(invocation.body, invocation.content_type)

    def _predict_requests(self, requests: Sequence[list[dict[str, Any]]]) -> list[np.ndarray]:
        raw = self.predict_records([record for records in requests for record in records])
        return np.split(raw, np.cumsum([len(records) for records in requests])[:-1])

    def _reply(self, raw: np.ndarray, invocation: Invocation) -> Reply:
        body, content_type = encode_scores(raw, calibrate(raw, self.calibrator), invocation.accept,
                                           layout="pytorch", request_id=invocation.request_id)
        return Reply(body, content_type)

    def records(self, body: bytes, content_type: str | None) -> list[dict[str, Any]]:
        """The request body as records (column name -> raw value), every feature column present."""
        kind = media_type_of(content_type)
        if kind not in INPUT_TYPES and kind not in self.codecs.decoder_types():
            raise UnsupportedContentType(content_type, list(INPUT_TYPES))
        if kind == "application/json" and body.lstrip()[:1] == b"{":
            try:
                single = orjson.loads(body)
            except orjson.JSONDecodeError:
                single = None
            if isinstance(single, dict) and "instances" not in single:
                self._check_columns(single)
                return [single]
        frame = self.codecs.decode(body, content_type)
        if isinstance(frame, np.ndarray):
            raise UnsupportedContentType(content_type, list(INPUT_TYPES))
        if len(frame) == 0:
            raise BadRequest("the body holds no records")
        if all(isinstance(c, (int, np.integer)) for c in frame.columns):
            if frame.shape[1] != len(self.feature_columns):
                raise BadRequest(f"expected {len(self.feature_columns)} columns in {FEATURE_COLUMNS} order, "
                                 f"got {frame.shape[1]}")
            frame = frame.set_axis(self.feature_columns, axis=1)
        self._check_columns(frame.columns)
        records: list[dict[str, Any]] = frame.to_dict(orient="records")
        return records

    def _check_columns(self, present: Any) -> None:
        missing = [c for c in self.feature_columns if c not in present]
        if missing:
            raise MissingColumns(missing)

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """(N, classes) probabilities, each record scored exactly as it would be alone."""
        assert self.network is not None
        encoded = self.encode_records(records)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, (texts, _) in enumerate(encoded):
            groups[tuple(len(texts[f]) for f in self.pipelines)].append(index)
        out: np.ndarray | None = None
        slices = []
        for key, indices in groups.items():
            # Bounded forward passes: at most MAX_SEQUENCES chunk sequences each, so a large request
            # (or a large adaptive batch) never builds one giant activation tensor.
            step = max(1, MAX_SEQUENCES // max(1, sum(key)))
            slices += [indices[i:i + step] for i in range(0, len(indices), step)]
        for indices in slices:
            inputs = self.collate([encoded[i] for i in indices])
            try:
                probs = self.network.probabilities(inputs)
            except Exception as exc:
                raise ModelError(f"the {self.network.kind} network failed: {type(exc).__name__}: {exc}") from exc
            if out is None:
                out = np.empty((len(records), probs.shape[1]), dtype=probs.dtype)
            out[indices] = probs
        assert out is not None
        return out

    def encode_record(self, record: Mapping[str, Any]) -> Encoded:
        """One record's text fields as chunk encodings and its tab row, as the network is fed them."""
        return self.encode_records([record])[0]

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> list[Encoded]:
        """Each record's :meth:`encode_record`, with one tokenizer call per step for all of them."""
        with self._text_lock:
            texts = {field: pipeline.many([record.get(field) for record in records])
                     for field, pipeline in self.pipelines.items()}
        encoded: list[Encoded] = []
        for i, record in enumerate(records):
            fields = {field: texts[field][i] for field in self.pipelines}
            if self.tabular is None:
                encoded.append((fields, np.empty((1, 0), dtype=np.float32)))
                continue
            row = self.tabular.transform_record(record)
            # A missing value with no imputation value is 0.0 (the reference's single-record rule): a
            # NaN would poison every score of the network.
            encoded.append((fields, np.where(np.isnan(row), np.float32(0.0), row)))
        return encoded

    def collate(self, encoded: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """Encoded records with equal chunk counts -> the network's named input arrays (one batch)."""
        inputs: dict[str, np.ndarray] = {}
        for field, (ids_key, mask_key) in self.input_keys.items():
            suffix_ids = ids_key[len(field) + 1:]
            suffix_mask = mask_key[len(field) + 1:]
            inputs[ids_key] = np.array([[c[suffix_ids] for c in texts[field]] for texts, _ in encoded], dtype=np.int64)
            inputs[mask_key] = np.array([[c[suffix_mask] for c in texts[field]] for texts, _ in encoded],
                                        dtype=np.int64)
        if self.tabular is not None:
            tab = np.vstack([row for _, row in encoded])
            for i, name in enumerate(self.tabular.feature_columns):
                inputs[name] = tab[:, i]
        return inputs
