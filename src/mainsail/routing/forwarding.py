"""Forwarding one request to an instance, the same way for the router, target-model routing and the
asynchronous inference worker (each over the backend's :class:`~mainsail.backends.base.Transport`).

:class:`Exchange` is one request's trip to an instance of a variant:
``Invocations`` / ``InvocationsPerInstance``, the in-flight count (:meth:`Traffic.busy`), a second
try on a replacement when the instance was gone before the request reached it or died before
answering a byte of it (at least once, then: a request that itself kills its instance fails on its
second), ``ModelLatency``,
an unreachable instance as the runtime's 424 ``ModelError`` (``Invocation5XXErrors``), and the
instance's answer as the runtime's answer (a 4xx/5xx as ``ModelError``, counted; a 2xx with the
invoked variant, ``OverheadLatency`` observed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.datastructures import Headers
from starlette.responses import Response

from mainsail.backends.base import Address, ForwardError, Upstream
from mainsail.routing.metrics import instance_label as instance_label  # re-exported: its home before
from mainsail.routing.responses import InstanceUnreachable, ModelError, model_error
from mainsail.routing.table import Variant
from mainsail.routing.traffic import Traffic

#: the request headers an instance sees
FORWARDED_HEADERS = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes",
                     "x-amzn-sagemaker-inference-id")
T = TypeVar("T")


def forwarded(headers: Headers, names: tuple[str, ...] = FORWARDED_HEADERS) -> list[tuple[str, str]]:
    """The headers of a request that go on to the instance."""
    return [(k, v) for k in names if (v := headers.get(k)) is not None]


class Exchange:
    """One request's trip to an instance of ``variant`` of ``endpoint`` (see the module docstring)."""

    def __init__(self, traffic: Traffic, endpoint: str, variant: Variant, log_arn: str, *,
                 asynchronous: bool = False) -> None:
        self.traffic = traffic
        #: the variant's metrics (:mod:`mainsail.routing.recorder`): what SageMaker publishes of them
        #: depends on whether the endpoint is ``asynchronous``, which its last request says
        self.series = series = traffic.recorder.variant(endpoint, variant.name)
        series.asynchronous = asynchronous
        self.endpoint = endpoint
        self.variant = variant
        self.log_arn = log_arn
        #: the instance's time, in microseconds (set by :meth:`send` or :meth:`observe`)
        self.model_us = 0.0

    def count(self, address: Address) -> None:
        """Count the request (``Invocations``, ``InvocationsPerInstance``)."""
        self.series.invoked(address, len(self.variant.addresses))

    async def send(self, address: Address, attempt: Callable[[Address], Awaitable[T]]) -> T:
        """Counted, ``attempt(address)`` with the request in flight to the instance; when the instance
        is gone and the request never reached it, ``attempt`` again on its replacement. Observes
        ``ModelLatency``; an instance that cannot be reached raises the 424 :class:`ModelError`."""
        self.count(address)
        with self.traffic.busy(address):
            started = time.perf_counter()
            try:
                try:
                    result = await attempt(address)
                except ForwardError as exc:
                    if not (exc.unsent or exc.unanswered):
                        raise
                    # the instance is gone (crashed, or stopped over its memory) and the request never
                    # reached it, or died with it before answering a byte: send it (once more) to another
                    # instance, or to the replacement once it answers
                    other = await self.traffic.replacement(self.endpoint, self.variant, address)
                    if other is None:
                        raise
                    with self.traffic.busy(other):
                        result = await attempt(other)
            except ForwardError as exc:
                raise self.unreachable(exc, self.traffic.noted(address)) from exc
        self.observe((time.perf_counter() - started) * 1e6)
        return result

    def unreachable(self, exc: ForwardError, why: str | None = None) -> ModelError:
        """The 424 for an instance that could not be reached (``why``: what the reconciler noted of
        it), counted as a 5xx."""
        self.series.failed(502)
        message = f"{why} ({exc})" if why else f"Could not reach the instance of variant {self.variant.name}: {exc}"
        return InstanceUnreachable(message, OriginalStatusCode=502, OriginalMessage=why or str(exc),
                                   LogStreamArn=self.log_arn)

    def observe(self, model_us: float) -> None:
        """Record the instance's time (``ModelLatency``)."""
        self.model_us = model_us
        self.series.model_latency.add(model_us)

    def failed(self, status: int, *, model: bool = True) -> None:
        """Count an error answer (``Invocation4XXErrors`` / ``Invocation5XXErrors``; ``InvocationModelErrors``
        too when it is the ``model``'s, not the router's)."""
        self.series.failed(status, model=model)

    def check(self, status: int) -> bool:
        """Whether the instance's status is a success (an error is counted)."""
        if 200 <= status < 300:
            return True
        self.failed(status)
        return False

    def answer(self, upstream: Upstream, started: float, source: str = "primary") -> Response:
        """The instance's answer as the runtime's (``started``: when the request came, by
        ``time.perf_counter()``); a 4xx/5xx raises the 424 :class:`ModelError`."""
        if not self.check(upstream.status):
            raise model_error(upstream, self.log_arn, source)
        out_headers = {"x-Amzn-Invoked-Production-Variant": self.variant.name}
        custom = upstream.headers.get("x-amzn-sagemaker-custom-attributes")
        if custom is not None:
            out_headers["X-Amzn-SageMaker-Custom-Attributes"] = custom
        self.series.overhead_latency.add(max((time.perf_counter() - started) * 1e6 - self.model_us, 0.0))
        return Response(upstream.body, status_code=200, headers=out_headers,
                        media_type=upstream.headers.get("content-type", "application/octet-stream"))
