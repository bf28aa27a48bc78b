"""A user's ``inference.py``, run with the SageMaker inference toolkit's rules.

``model_fn`` loads the model (a framework default applies when it is missing); ``transform_fn``
replaces ``input_fn`` / ``predict_fn`` / ``output_fn`` and may not be combined with them; each of
those three falls back to the framework's default when absent; every function may take one extra
trailing ``context`` argument. Unlike the toolkit, signatures are checked once at load, not on every
request, and a bad signature fails the load instead of every request.

mainsail adds one optional function, ``predict_batch_fn(inputs, model)``: given the list of what
``input_fn`` returned for several requests, it returns one prediction per input, in order. A script
that defines it opts into adaptive batching (concurrent requests share one call); ``predict_fn``,
when also defined, is still what a request arriving alone uses. A script that leaves ``predict_fn``
to the scikit-learn, XGBoost or PyTorch container's default batches without asking: the rows of
requests queued together share one call of that default (:mod:`mainsail.handlers.stacking`).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mainsail.codecs import toolkit
from mainsail.errors import (
    BadRequest,
    HandlerError,
    MainsailError,
    ModelError,
    ModelLoadError,
    UnsupportedContentType,
)
from mainsail.handlers import defaults as fw
from mainsail.handlers import provided
from mainsail.handlers.base import Invocation, Outcome, Reply, invoke_each
from mainsail.handlers.context import Context
from mainsail.handlers.gpus import worker_gpu
from mainsail.handlers.replies import reply_for, streamed
from mainsail.handlers.stacking import Stacker
from mainsail.handlers.streaming import chunks_of, is_stream

logger = logging.getLogger(__name__)

HANDLER_NAMES = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn", "pre_model_fn",
                 "model_warmup_fn", "predict_batch_fn")
_ARITY = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2, "transform_fn": 4,
          "pre_model_fn": 1, "model_warmup_fn": 2, "predict_batch_fn": 2}


@dataclass(frozen=True)
class Bound:
    """A handler function with its context-arity resolved once."""

    fn: Callable[..., Any]
    takes_context: bool

    def __call__(self, context: Context | None, *args: Any) -> Any:
        if self.takes_context:
            return self.fn(*args, context)
        return self.fn(*args)


def bind(name: str, fn: Callable[..., Any]) -> Bound:
    """Check ``fn`` takes the toolkit's arguments, or those plus a trailing context."""
    expected = _ARITY[name]
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return Bound(fn, False)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return Bound(fn, False)
    count = len(params)
    if count == expected:
        return Bound(fn, False)
    if count == expected + 1:
        return Bound(fn, True)
    raise HandlerError(
        f"{name} takes {count} arguments but the toolkit passes {expected} "
        f"(or {expected + 1} with a trailing context)"
    )


#: modules the SageMaker framework containers ship, which scripts import: where each comes from here
CONTAINER_MODULES = {
    "sagemaker_inference": "the SageMaker inference toolkit ships in the framework containers: install it "
                           "beside mainsail with pip install 'mainsail[toolkit]' (sagemaker-inference)",
    "sagemaker_containers": "sagemaker-containers ships in the scikit-learn and XGBoost containers and does not "
                            "install on Python 3.11; mainsail provides beta.framework's content_types, encoders, "
                            "errors and worker.Response, and entry_point, and no other part (its training side)",
    "sagemaker_xgboost_container": "ships only in the XGBoost container; mainsail provides its encoder, data_utils "
                                   "and distributed modules, and no other (its training and serving internals)",
    "sagemaker_pytorch_serving_container": "ships only in the PyTorch container; mainsail provides its default "
                                           "inference handler (default_pytorch_inference_handler), and no other part "
                                           "(TorchServe's)",
    "sagemaker_sklearn_container": "ships only in the scikit-learn container; mainsail provides serving's default "
                                   "functions and exceptions, and no other part",
}


def container_module_hint(exc: BaseException) -> str | None:
    """Where the module an import failed on comes from, when a SageMaker container ships it."""
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    return CONTAINER_MODULES.get((name or "").split(".", 1)[0])


def import_script(path: Path) -> Any:
    """Import the user script by file path, registered under its module name (so pickles find it).
    The container modules mainsail provides come after every installed package on the path."""
    if provided.PATH not in sys.path:
        sys.path.append(provided.PATH)
    name = path.stem
    code_dir = str(path.parent)
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import the inference script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        hint = container_module_hint(exc)
        raise ModelLoadError(f"importing {path.name} failed: {type(exc).__name__}: {exc}"
                             + (f" ({hint})" if hint else "")) from exc
    return module


class ScriptHandler:
    """Serves a model through a user script's ``model_fn`` / ``input_fn`` / ... functions."""

    name = "script"

    def __init__(self, script: Path, model_dir: Path, *, framework: str = "auto",
                 model_name: str = "model") -> None:
        if not script.is_file():
            raise ValueError(f"inference script {script} does not exist")
        self.script = script
        self.model_dir = model_dir
        self.framework = framework
        self.model_name = model_name
        self.model: Any = None
        self._transform: Bound | None = None
        self._input: Bound | None = None
        self._predict: Bound | None = None
        self._output: Bound | None = None
        self._predict_batch: Bound | None = None
        self._stacker: Stacker | None = None
        self._wants_context = False

    @property
    def batchable(self) -> bool:
        """A script batches when it defines ``predict_batch_fn``, or when it leaves ``predict_fn`` to
        a framework default that predicts rows (the requests' rows are then stacked)."""
        return self._predict_batch is not None or self._stacker is not None

    @property
    def concurrent_batches(self) -> bool:
        """Batches of stacked rows run the script's own ``input_fn`` / ``output_fn``, which may wait
        on I/O: they run as many at once as unbatched calls would (the predict threads), so stacking
        takes no concurrency away from the script."""
        return self._stacker is not None

    def load(self) -> None:
        module = import_script(self.script)
        found = {n: getattr(module, n) for n in HANDLER_NAMES if callable(getattr(module, n, None))}
        if "transform_fn" in found and found.keys() & {"input_fn", "predict_fn", "output_fn"}:
            raise HandlerError(
                "Cannot use transform_fn implementation in conjunction with input_fn, predict_fn, "
                "and/or output_fn implementation"
            )
        if "transform_fn" in found and "predict_batch_fn" in found:
            raise HandlerError("predict_batch_fn batches input_fn's results: it cannot be used with transform_fn")
        bound = {n: bind(n, fn) for n, fn in found.items()}
        context = Context(self.model_name, str(self.model_dir), gpu_id=worker_gpu())
        model_dir = str(self.model_dir)
        if "pre_model_fn" in bound:
            bound["pre_model_fn"](context, model_dir)
        if "model_fn" in bound:
            self.model = bound["model_fn"](context, model_dir)
        else:
            self.model = fw.default_model_fn(model_dir, self.framework)
        framework = fw.detect_framework(self.model) if self.framework == "auto" else self.framework
        if framework == "pytorch" and "predict_fn" not in bound and "transform_fn" not in bound:
            self.model = fw.prepare_pytorch_model(self.model)
        if "model_warmup_fn" in bound:
            bound["model_warmup_fn"](context, model_dir, self.model)
        chosen = fw.defaults_for(framework)
        self._transform = bound.get("transform_fn")
        self._input = bound.get("input_fn") or Bound(chosen.input_fn, False)
        self._predict = bound.get("predict_fn") or Bound(chosen.predict_fn, False)
        self._output = bound.get("output_fn") or Bound(chosen.output_fn, False)
        self._predict_batch = bound.get("predict_batch_fn")
        if self._predict_batch is not None and "predict_fn" not in bound:
            self._predict = Bound(partial(_predict_one, self._predict_batch.fn), self._predict_batch.takes_context)
        self._wants_context = any(b.takes_context for b in bound.values())
        if chosen.stacks and not bound.keys() & {"predict_fn", "transform_fn", "predict_batch_fn"}:
            self._stacker = self._default_stacker(chosen, bound.get("input_fn"))
        logger.info(
            "loaded %s: user functions %s; defaults of the %s container for the rest",
            self.script.name, ", ".join(sorted(found)) or "none", chosen.framework,
        )

    def invoke(self, invocation: Invocation) -> Reply:
        context, data, content_type = self._prepare(invocation)
        accept = invocation.accept
        if self._transform is not None:
            result = _guard(self._transform, context, self.model, data, content_type, accept)
        else:
            assert self._input and self._predict and self._output
            features = _guard(self._input, context, data, content_type)
            prediction = _guard(self._predict, context, features, self.model)
            if is_stream(prediction):  # each item through output_fn as it comes
                output = self._output
                return streamed(chunks_of(prediction, _translate, lambda item: output(context, item, accept)),
                                 accept, context)
            result = _guard(self._output, context, prediction, accept)
        if isinstance(result, tuple) and len(result) == 2 and is_stream(result[0]):  # (stream, content type)
            return streamed(chunks_of(result[0], _translate), str(result[1]), context)
        if is_stream(result):
            return streamed(chunks_of(result, _translate), accept, context)
        return reply_for(result, accept, context)

    def invoke_batch(self, invocations: Sequence[Invocation]) -> list[Outcome]:
        """``input_fn`` per request, one ``predict_batch_fn`` call (or one stacked call of the
        default ``predict_fn``), ``output_fn`` per request."""
        if self._stacker is not None:
            return self._stacker.answer(invocations)
        return invoke_each(invocations, self._decode, self._predict_many, self._encode)

    def _default_stacker(self, chosen: fw.Defaults, script_input: Bound | None) -> Stacker:
        """Stacked calls of the framework's default ``predict_fn`` (the XGBoost default builds its
        DMatrix over the stacked rows when ``input_fn`` is the default too)."""
        if script_input is None and chosen.rows_input_fn is not None and chosen.rows_predict_fn is not None:
            rows_input, rows_predict = Bound(chosen.rows_input_fn, False), Bound(chosen.rows_predict_fn, False)
        else:
            rows_input, rows_predict = script_input or Bound(chosen.input_fn, False), Bound(chosen.predict_fn, False)

        def decode(invocation: Invocation) -> tuple[Context | None, Any]:
            context, data, content_type = self._prepare(invocation)
            return context, _guard(rows_input, context, data, content_type)

        def predict(features: Any) -> Any:
            return _guard(rows_predict, None, features, self.model)

        return Stacker(decode, predict, self._encode, self.invoke, name=self.script.name)

    def _prepare(self, invocation: Invocation) -> tuple[Context | None, str | bytes, str]:
        context = self._request_context(invocation) if self._wants_context else None
        data: str | bytes = invocation.body
        content_type = invocation.content_type or ""
        if toolkit.media_type_of(content_type) in toolkit.UTF8_TYPES:
            data = _decode_text(invocation.body, content_type)
        return context, data, content_type

    def _decode(self, invocation: Invocation) -> tuple[Context | None, Any]:
        assert self._input is not None
        context, data, content_type = self._prepare(invocation)
        return context, _guard(self._input, context, data, content_type)

    def _predict_many(self, items: Sequence[tuple[Context | None, Any]]) -> list[tuple[Context | None, Any]]:
        assert self._predict_batch is not None
        contexts = [context for context, _ in items]
        predictions = _guard(self._predict_batch, contexts, [features for _, features in items], self.model)
        try:
            predictions = list(predictions)
        except TypeError:
            raise ModelError(f"predict_batch_fn must return a list, got {type(predictions).__name__}") from None
        if len(predictions) != len(items):
            raise ModelError(f"predict_batch_fn returned {len(predictions)} predictions for {len(items)} inputs")
        return list(zip(contexts, predictions, strict=True))

    def _encode(self, predicted: tuple[Context | None, Any], invocation: Invocation) -> Reply:
        assert self._output is not None
        context, prediction = predicted
        result = _guard(self._output, context, prediction, invocation.accept)
        if is_stream(result):
            return streamed(chunks_of(result, _translate), invocation.accept, context)
        return reply_for(result, invocation.accept, context)

    def _request_context(self, invocation: Invocation) -> Context:
        return Context(self.model_name, str(self.model_dir), gpu_id=worker_gpu(), request_id=invocation.request_id,
                       request_header=invocation.headers)


def _guard(fn: Bound, context: Any, *args: Any) -> Any:
    """Call a user function; its exceptions become ours (:func:`_translate`)."""
    try:
        return fn(context, *args)
    except MainsailError:
        raise
    except Exception as exc:
        raise _translate(exc) from exc


def _predict_one(predict_batch: Callable[..., Any], features: Any, model: Any, *context: Any) -> Any:
    """``predict_fn`` for a script that defines only ``predict_batch_fn``: a batch of one."""
    results = predict_batch([features], model, *([list(context)] if context else []))
    return list(results)[0]


def _decode_text(body: bytes, content_type: str) -> str:
    charset = "utf-8"
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        return body.decode(charset)
    except LookupError:
        raise UnsupportedContentType(content_type) from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid {charset}: byte offset {exc.start}: {exc.reason}") from None


_NATIVE_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] [^\s:]+:\d+: ")


def _clean(message: str) -> str:
    """A native library's error message without its clock time, source line and stack trace (as
    XGBoost's: ``[13:23:10] .../learner.cc:1289: Check failed: ...\nStack trace: ...``)."""
    message = message.split("\nStack trace:", 1)[0]
    return _NATIVE_PREFIX.sub("", message.strip()).strip()


def _translate(exc: Exception) -> MainsailError:
    """A user exception -> ours. A toolkit-style error carrying ``status_code`` keeps its status."""
    status = getattr(exc, "status_code", None)
    if type(exc).__name__ == "UnsupportedFormatError":
        unsupported = UnsupportedContentType(None)
        unsupported.message = " ".join(str(exc).split())
        return unsupported
    message = _clean(getattr(exc, "message", None) or str(exc))
    error = ModelError(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
    if isinstance(status, int) and 400 <= status <= 599:
        error.status_code = status
    return error


#: headers of a response object that the server writes itself
