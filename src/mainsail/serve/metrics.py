"""Prometheus metrics with SageMaker's names, correct across worker processes.

Latencies are histograms in microseconds, as CloudWatch reports ``ModelLatency`` and
``OverheadLatency``. With several workers, prometheus-client's multiprocess mode (a directory of
memory-mapped files named by ``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before the workers
start) lets any worker answer ``/metrics`` for all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from mainsail.prometheus import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_US


class Metrics:
    """The data plane's counters and histograms; one instance per app, never a module global."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.invocations = Counter(
            "Invocations", "Requests sent to /invocations", registry=self.registry
        )
        self.errors_4xx = Counter(
            "Invocation4XXErrors", "Invocations answered with a 4xx status", registry=self.registry
        )
        self.errors_5xx = Counter(
            "Invocation5XXErrors", "Invocations answered with a 5xx status", registry=self.registry
        )
        self.model_latency = Histogram(
            "ModelLatency", "Time spent in the model's handler, in microseconds",
            buckets=LATENCY_BUCKETS_US, registry=self.registry,
        )
        self.overhead_latency = Histogram(
            "OverheadLatency", "Time spent outside the handler (decode, queue, encode), in microseconds",
            buckets=LATENCY_BUCKETS_US, registry=self.registry,
        )

        self.batch_size = Histogram(
            "BatchSize", "Requests merged into one model call by adaptive batching",
            buckets=BATCH_SIZE_BUCKETS, registry=self.registry,
        )

    def record(self, status: int, model_us: float | None, total_us: float) -> None:
        self.invocations.inc()
        if 400 <= status < 500:
            self.errors_4xx.inc()
        elif status >= 500:
            self.errors_5xx.inc()
        if model_us is not None:
            self.model_latency.observe(model_us)
            self.overhead_latency.observe(max(total_us - model_us, 0.0))

    def render(self) -> bytes:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
