"""The seam between the serving runtime and whatever turns a request into a response."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from mainsail.errors import MainsailError, ModelError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Invocation:
    """One ``POST /invocations`` request, as the handler sees it."""

    body: bytes
    content_type: str | None
    """The Content-Type header exactly as sent (``None`` when absent)."""
    accept: str
    """The Accept header, with a missing or ``*/*`` value already resolved to the default."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """All request headers, names lowercased."""
    request_id: str | None = None


@dataclass(slots=True)
class Reply:
    """What a handler answers: an encoded body, its type, and optionally a status and headers.

    A streamed answer has ``chunks`` instead of a body: an iterator (or async iterator) of
    ``(bytes, content type or None)`` pairs, each sent as it is produced; the first pair's content type
    (else ``content_type``) is the response's. The server iterates it off the event loop and closes it
    (``close()`` / ``aclose()``) when the client goes away."""

    body: bytes
    content_type: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunks: Any = None


class Handler(Protocol):
    """Loads one model and answers invocations for it.

    ``load`` is called once per process before any ``invoke``; it raises ``ModelLoadError`` (or
    any exception) when the model cannot serve. ``invoke`` runs in a worker thread, never on the
    event loop; it raises ``MainsailError`` subclasses for request problems (4xx) and ``ModelError``
    for failures inside model code.
    """

    name: str

    def load(self) -> None: ...

    def invoke(self, invocation: Invocation) -> Reply: ...


Outcome = Reply | MainsailError
"""One request's answer within a batch: its reply, or the error that fails it alone."""


class BatchHandler(Handler, Protocol):
    """A handler that can answer several invocations with one model call (adaptive batching).

    ``invoke_batch`` returns one outcome per invocation, in order, each exactly what ``invoke``
    would have answered for that invocation alone: a request that fails decoding fails alone, and
    each request is encoded with its own Accept. ``batchable`` is read after ``load`` (a user
    script batches only when it defines ``predict_batch_fn``).
    """

    @property
    def batchable(self) -> bool: ...

    def invoke_batch(self, invocations: Sequence[Invocation]) -> list[Outcome]: ...


def as_error(exc: Exception) -> MainsailError:
    """An exception raised while answering a request, as the error that request gets."""
    if isinstance(exc, MainsailError):
        return exc
    error = ModelError(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def attempt(fn: Callable[[], T]) -> T | MainsailError:
    """``fn()``, or the error it raised (as :func:`as_error` names it)."""
    try:
        return fn()
    except Exception as exc:
        return as_error(exc)


def predict_in_batch(inputs: Sequence[T], predict: Callable[[Sequence[T]], Sequence[R]]
                     ) -> list[R | MainsailError]:
    """One model call over ``inputs`` (``predict`` returns one result per input, in order).

    When the call over several inputs fails, each input is run again alone, so that the input that
    broke the model fails alone and its batch mates still get their answers.
    """
    if len(inputs) > 1:
        try:
            results = list(predict(inputs))
        except Exception:
            pass
        else:
            if len(results) == len(inputs):
                return list(results)
            return [ModelError(f"the batch call returned {len(results)} results for {len(inputs)} inputs")
                    for _ in inputs]
    return [attempt(partial(_alone, predict, item)) for item in inputs]


def _alone(predict: Callable[[Sequence[T]], Sequence[R]], item: T) -> R:
    results = list(predict([item]))
    if len(results) != 1:
        raise ModelError(f"the batch call returned {len(results)} results for 1 input")
    return results[0]


def invoke_each(invocations: Sequence[Invocation], decode: Callable[[Invocation], T],
                predict: Callable[[Sequence[T]], Sequence[R]],
                encode: Callable[[R, Invocation], Reply]) -> list[Outcome]:
    """The batch path of a handler: decode each invocation alone, one model call over those that
    decoded (:func:`predict_in_batch`), and each answer encoded for its own request."""
    decoded = [attempt(partial(decode, invocation)) for invocation in invocations]
    good: list[tuple[int, T]] = [(i, item) for i, item in enumerate(decoded) if not isinstance(item, MainsailError)]
    predicted = predict_in_batch([item for _, item in good], predict)
    answers = {i: result for (i, _), result in zip(good, predicted, strict=True)}
    outcomes: list[Outcome] = []
    for i, item in enumerate(decoded):
        if isinstance(item, MainsailError):
            outcomes.append(item)
            continue
        result = answers[i]
        outcomes.append(result if isinstance(result, MainsailError)
                        else attempt(partial(encode, result, invocations[i])))
    return outcomes
