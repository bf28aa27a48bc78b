"""``GET /metrics`` of the control port: the router's :class:`~mainsail.routing.recorder.Recorder`
rendered as Prometheus text, under CloudWatch's names, labelled by endpoint and variant.

:class:`RecorderCollector` reads the recorder's totals at each scrape (a prometheus-client custom
collector), so ``/metrics`` and the CloudWatch datapoints are the same numbers: counters are the
sums of the datapoints, histograms (``LATENCY_BUCKETS_US``) count the same values.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.responses import Response

from mainsail.backends.base import LOOPBACK, Address
from mainsail.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mainsail.prometheus import LATENCY_BUCKETS_US
from mainsail.routing.recorder import Recorder, Timing, VariantSeries

LABELS = ["EndpointName", "VariantName"]
_BOUNDS = [*(floatToGoString(b) for b in LATENCY_BUCKETS_US), "+Inf"]  # type: ignore[no-untyped-call]

#: counters: name, help, the series' attribute
COUNTERS = (
    ("Invocations", "InvokeEndpoint requests routed to a variant", "invocations"),
    ("Invocation4XXErrors", "Requests answered with a 4xx (model or client)", "errors_4xx"),
    ("Invocation5XXErrors", "Requests answered with a 5xx", "errors_5xx"),
    ("Throttles", "Requests refused over a serverless variant's MaxConcurrency", "throttles"),
)
HISTOGRAMS = (
    ("ModelSetupTime", "Cold starts of serverless variants: time until an instance answered, in microseconds",
     "model_setup_time"),
    ("ModelLatency", "Time the instance took to answer, in microseconds", "model_latency"),
    ("OverheadLatency", "Time spent in the router outside the instance, in microseconds", "overhead_latency"),
)
#: multi-model endpoints' (shown once a request named a target model)
TARGET_MODEL_COUNTERS = (
    ("ModelCacheHit", "Target-model requests whose model was loaded on the instance", "cache_hits"),
    ("ModelCacheMiss", "Target-model requests that had to load the model first", "cache_misses"),
    ("ModelNotReady", "Target-model requests answered ModelNotReadyException while their model loaded",
     "not_ready"),
)
TARGET_MODEL_HISTOGRAMS = (
    ("ModelLoadingWaitTime", "Time a request waited for its target model to be fetched and loaded, "
     "in microseconds", "loading_wait"),
)


def instance_label(address: Address) -> str:
    """The ``Instance`` label of ``InvocationsPerInstance``: the port of an instance on this machine,
    else ``host:port``."""
    return str(address.port) if address.host == LOOPBACK else str(address)


def _histogram(name: str, help_text: str, series: list[VariantSeries], attribute: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=LABELS)
    for one in series:
        timing: Timing = getattr(one, attribute)
        if timing.count:
            cumulative = map(float, accumulate(timing.buckets))
            family.add_metric([one.endpoint, one.variant], list(zip(_BOUNDS, cumulative, strict=True)), timing.total)
    return family


def _counter(name: str, help_text: str, series: list[VariantSeries], attribute: str) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=LABELS)
    for one in series:
        value = getattr(one, attribute)
        if value:
            family.add_metric([one.endpoint, one.variant], float(value))
    return family


class RecorderCollector(Collector):
    """The recorder's totals as Prometheus metric families (read at each scrape)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def collect(self) -> Iterator[Metric]:
        series = list(self.recorder)
        for name, help_text, attribute in COUNTERS:
            yield _counter(name, help_text, series, attribute)
        for name, help_text, attribute in HISTOGRAMS:
            yield _histogram(name, help_text, series, attribute)
        per_instance = CounterMetricFamily("InvocationsPerInstance", "Requests routed to each instance",
                                           labels=[*LABELS, "Instance"])
        for one in series:
            for address, count in list(one.per_instance.items()):
                per_instance.add_metric([one.endpoint, one.variant, instance_label(address)], float(count))
        yield per_instance
        if not any(one.target_invocations for one in series):
            return
        targets = CounterMetricFamily("TargetModelInvocations", "InvokeEndpoint requests per target model",
                                      labels=[*LABELS, "TargetModel"])
        for one in series:
            for target, count in list(one.target_invocations.items()):
                targets.add_metric([one.endpoint, one.variant, target], float(count))
        yield targets
        for name, help_text, attribute in TARGET_MODEL_COUNTERS:
            yield _counter(name, help_text, series, attribute)
        for name, help_text, attribute in TARGET_MODEL_HISTOGRAMS:
            yield _histogram(name, help_text, series, attribute)


class RouterMetrics:
    """The registry ``GET /metrics`` renders: the router's recorder, collected at each scrape."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RecorderCollector(recorder))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def response(self) -> Response:
        """The Prometheus text of the registry (``GET /metrics``)."""
        return Response(self.render(), media_type=METRICS_CONTENT_TYPE)
