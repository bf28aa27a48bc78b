"""Adaptive batching for a script that leaves ``predict_fn`` to the framework container's default.

The default ``predict_fn`` of the scikit-learn, XGBoost and PyTorch containers is one model call over
rows: ``model.predict(X)`` or ``model(X)``. When requests queued together decode (each with
``input_fn``, the script's or the default) to rows of one kind, their rows are stacked into one call
and the result is split back into each request's rows, which the request's own ``output_fn``
encodes. Rows of one kind are:

* numpy arrays of two or more dimensions with the same dtype and the same shape past the first
  (a block of rows each), or 1-D arrays of the same dtype and length (a row each);
* torch tensors likewise (dtype, device and shape);
* pandas DataFrames with the same columns and dtypes (a block of rows each).

Anything else (a DMatrix the script built, a dict, an empty block) is predicted alone, in the same
batch. The stacked call's answer must hold one entry per stacked row (an array or tensor whose first
dimension, or a list whose length, is the row count); when it does not, the model does not answer
row by row, and stacking stops for it. A stacked call that raises sends the batch's requests to the
model one at a time; when each of them then succeeds, the model does not take stacked rows, and
stacking stops too.

That rows come out of a stacked call as they would alone is the model's to guarantee. Trees do;
most layers do; but a matrix product over more rows may take another BLAS kernel and differ in the
last bit, and a model may mix rows. So each stacked call of a row count not seen before (at most
:data:`VERIFY_LIMIT` of them) is also answered one request at a time, and the two answers are
compared byte for byte; on the first difference stacking stops for this model (a warning says
why) and every request gets the answer it gets alone.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any

import numpy as np

from mainsail.errors import MainsailError, ModelError
from mainsail.handlers.base import Invocation, Outcome, Reply, attempt, invoke_each

logger = logging.getLogger(__name__)

VERIFY_LIMIT = 64
"""Stacked row counts checked against the one-at-a-time answers before stacking is trusted."""

BLOCK = "block"
"""A request's features are a block of rows (stacked by concatenation, split by slices)."""
ROW = "row"
"""A request's features are one row (stacked along a new first axis, split by index)."""


def stack_key(features: Any) -> tuple[Hashable, ...] | None:
    """What rows ``features`` hold, as a key equal for features that stack; ``None`` for none."""
    if isinstance(features, np.ndarray):
        if features.ndim == 0 or features.dtype.hasobject:
            return None
        if features.ndim == 1:
            return ("numpy", ROW, features.dtype.str, features.shape)
        if features.shape[0] == 0:
            return None
        return ("numpy", BLOCK, features.dtype.str, features.shape[1:])
    module = type(features).__module__ or ""
    if module.startswith("torch"):
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(features, torch.Tensor) or features.dim() == 0:
            return None
        if features.requires_grad or features.is_sparse:
            return None
        shape = tuple(features.shape)
        if len(shape) == 1:
            return ("torch", ROW, str(features.dtype), str(features.device), shape)
        if shape[0] == 0:
            return None
        return ("torch", BLOCK, str(features.dtype), str(features.device), shape[1:])
    if module.startswith("pandas"):
        pandas = sys.modules.get("pandas")
        if pandas is None or not isinstance(features, pandas.DataFrame) or len(features) == 0:
            return None
        try:
            columns = tuple(features.columns)
            hash(columns)
        except TypeError:
            return None
        return ("pandas", BLOCK, columns, tuple(str(d) for d in features.dtypes))
    return None


def row_count(key: tuple[Hashable, ...], features: Any) -> int:
    return 1 if key[1] == ROW else len(features)


def stack(key: tuple[Hashable, ...], items: Sequence[Any]) -> Any:
    """One model input holding the rows of ``items`` (all of ``key``), in order."""
    library, shape = key[0], key[1]
    if library == "numpy":
        return np.stack(items) if shape == ROW else np.concatenate(items, axis=0)
    if library == "torch":
        torch = sys.modules["torch"]
        return torch.stack(list(items)) if shape == ROW else torch.cat(list(items), dim=0)
    pandas = sys.modules["pandas"]
    return pandas.concat(list(items), ignore_index=True)


class NotRowWise(ModelError):
    """The stacked call's answer does not hold one entry per stacked row."""


def split(key: tuple[Hashable, ...], prediction: Any, counts: Sequence[int]) -> list[Any]:
    """``prediction`` of stacked rows, back into one part per request (``counts`` rows each)."""
    total = sum(counts)
    try:
        size = prediction.shape[0] if hasattr(prediction, "shape") else len(prediction)
    except (TypeError, IndexError):
        size = None
    if isinstance(prediction, (str, bytes, dict)) or size != total:
        kind = type(prediction).__name__
        raise NotRowWise(f"the default predict_fn answered {total} stacked rows with a {kind}"
                         + (f" of {size} entries" if size is not None else ""))
    parts: list[Any] = []
    start = 0
    for count in counts:
        parts.append(prediction[start] if key[1] == ROW else prediction[start:start + count])
        start += count
    return parts


def same_outcome(a: Outcome, b: Outcome) -> bool:
    if isinstance(a, Reply) and isinstance(b, Reply):
        return (a.status, a.content_type, a.headers, a.body) == (b.status, b.content_type, b.headers, b.body)
    if isinstance(a, MainsailError) and isinstance(b, MainsailError):
        # A failed request was answered alone in the batch too (the batch is predicted again one
        # request at a time when its stacked call fails); messages may differ where a library puts
        # the time in them.
        return (type(a), a.status_code) == (type(b), b.status_code)
    return False


class Stacker:
    """Answers a batch of requests with stacked calls of a default ``predict_fn``.

    ``decode`` turns an invocation into ``(context, features)``; ``predict`` is the model call over
    features (one request's or stacked); ``encode`` turns ``(context, prediction part)`` into the
    request's reply; ``alone`` answers one invocation exactly as without batching.
    """

    def __init__(self, decode: Callable[[Invocation], tuple[Any, Any]], predict: Callable[[Any], Any],
                 encode: Callable[[tuple[Any, Any], Invocation], Reply], alone: Callable[[Invocation], Reply],
                 *, name: str) -> None:
        self.decode = decode
        self.predict = predict
        self.encode = encode
        self.alone = alone
        self.name = name
        self.enabled = True
        self.verify_limit = VERIFY_LIMIT
        self.verified: set[int] = set()
        self._lock = threading.Lock()

    def answer(self, invocations: Sequence[Invocation]) -> list[Outcome]:
        if len(invocations) == 1 or not self.enabled:
            return [attempt(partial(self.alone, invocation)) for invocation in invocations]
        stacked: list[int] = []
        failed: list[int] = []
        outcomes = invoke_each(invocations, self.decode, partial(self._predict, stacked, failed), self.encode)
        if failed and all(isinstance(outcome, Reply) for outcome in outcomes):
            # Each request answered alone where their stacked rows broke the model: it does not
            # take stacked rows, and trying again would cost every batch a failed call.
            self._stop(f"a call over {failed[0]} stacked rows failed where each request alone succeeded")
            return outcomes
        with self._lock:
            unverified = [rows for rows in stacked if rows not in self.verified]
            check = bool(unverified) and len(self.verified) < self.verify_limit
        if not check:
            return outcomes
        alone = [attempt(partial(self.alone, invocation)) for invocation in invocations]
        for i, (got, want) in enumerate(zip(outcomes, alone, strict=True)):
            if not same_outcome(got, want):
                self._stop(f"request {i + 1} of a batch of {len(invocations)} was answered differently "
                           f"when its rows were stacked ({sum(stacked)} rows in one call) than alone")
                return alone
        with self._lock:
            self.verified.update(unverified)
        return outcomes

    def _predict(self, stacked: list[int], failed: list[int],
                 items: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        """The predictions of ``items`` (one per item, in order), stacking the rows that stack.
        Appends to ``stacked`` the rows of each stacked call made, to ``failed`` those of one that
        raised (the batch is then predicted again one request at a time)."""
        groups: dict[Hashable, list[int]] = {}
        keys: list[tuple[Hashable, ...] | None] = []
        for i, (_, features) in enumerate(items):
            key = stack_key(features) if self.enabled else None
            keys.append(key)
            groups.setdefault(key if key is not None else ("alone", i), []).append(i)
        results: list[Any] = [None] * len(items)
        for indexes in groups.values():
            key = keys[indexes[0]]
            if key is None or len(indexes) == 1:
                for i in indexes:
                    results[i] = self.predict(items[i][1])
                continue
            counts = [row_count(key, items[i][1]) for i in indexes]
            try:
                prediction = self.predict(stack(key, [items[i][1] for i in indexes]))
            except Exception:
                failed.append(sum(counts))
                raise
            try:
                parts = split(key, prediction, counts)
            except NotRowWise as exc:
                self._stop(exc.message)
                raise
            stacked.append(sum(counts))
            for i, part in zip(indexes, parts, strict=True):
                results[i] = part
        return [(context, result) for (context, _), result in zip(items, results, strict=True)]

    def _stop(self, reason: str) -> None:
        with self._lock:
            if not self.enabled:
                return
            self.enabled = False
        logger.warning("adaptive batching stops stacking rows for %s: %s; each request is answered alone "
                       "from now on", self.name, reason)
