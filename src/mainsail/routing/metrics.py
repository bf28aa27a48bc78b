"""The runtime API's metrics, under CloudWatch's names, labelled by endpoint and variant.

:class:`RouterMetrics` is what every InvokeEndpoint (and asynchronous inference) counts;
:class:`TargetModelMetrics` what multi-model endpoints add, in the same registry (made when the
first target-model request comes). ``GET /metrics`` of the control port renders the registry.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.responses import Response

from mainsail.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mainsail.prometheus import LATENCY_BUCKETS_US

LABELS = ("EndpointName", "VariantName")


class RouterMetrics:
    """Per-endpoint CloudWatch-named metrics of the runtime API, labelled by endpoint and variant."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = LABELS
        self.invocations = Counter("Invocations", "InvokeEndpoint requests routed to a variant", labels,
                                   registry=self.registry)
        self.errors_4xx = Counter("Invocation4XXErrors", "Requests answered with a 4xx (model or client)",
                                  labels, registry=self.registry)
        self.errors_5xx = Counter("Invocation5XXErrors", "Requests answered with a 5xx", labels,
                                  registry=self.registry)
        self.model_setup_time = Histogram(
            "ModelSetupTime", "Cold starts of serverless variants: time until an instance answered, in microseconds",
            labels, buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.throttles = Counter("Throttles", "Requests refused over a serverless variant's MaxConcurrency", labels,
                                 registry=self.registry)
        self.per_instance = Counter("InvocationsPerInstance", "Requests routed to each instance",
                                    (*labels, "Instance"), registry=self.registry)
        self.model_latency = Histogram(
            "ModelLatency", "Time the instance took to answer, in microseconds", labels,
            buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.overhead_latency = Histogram(
            "OverheadLatency", "Time spent in the router outside the instance, in microseconds", labels,
            buckets=LATENCY_BUCKETS_US, registry=self.registry)

        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: looking a child up costs prometheus-client a few
        microseconds (validation and a lock), and InvokeEndpoint updates five per request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def response(self) -> Response:
        """The Prometheus text of the registry (``GET /metrics``)."""
        return Response(self.render(), media_type=METRICS_CONTENT_TYPE)


class TargetModelMetrics:
    """Multi-model endpoints' metrics, in the router's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = LABELS
        self.invocations = Counter("TargetModelInvocations", "InvokeEndpoint requests per target model",
                                   (*labels, "TargetModel"), registry=registry)
        self.cache_hits = Counter("ModelCacheHit", "Target-model requests whose model was loaded on the instance",
                                  labels, registry=registry)
        self.cache_misses = Counter("ModelCacheMiss", "Target-model requests that had to load the model first",
                                    labels, registry=registry)
        self.loading_wait = Histogram(
            "ModelLoadingWaitTime", "Time a request waited for its target model to be fetched and loaded, "
            "in microseconds", labels, buckets=LATENCY_BUCKETS_US, registry=registry)
        self.not_ready = Counter("ModelNotReady", "Target-model requests answered ModelNotReadyException "
                                 "while their model loaded", labels, registry=registry)
