"""What the runtime API records per request, kept per endpoint variant: the numbers behind both the
one-minute CloudWatch datapoints SageMaker publishes and ``GET /metrics``.

The hot path (:class:`mainsail.routing.forwarding.Exchange`, :class:`~mainsail.routing.traffic.Traffic`,
target-model routing) finds its variant's :class:`VariantSeries` once per request
(:meth:`Recorder.variant`) and adds to plain attributes: counters are integers, times a :class:`Timing`.
Counters only ever grow (Prometheus reads them as they are); :meth:`Recorder.take` turns what was added
since the last take into :class:`~mainsail.aws.cloudwatch.datapoints.Datapoint`\\ s for a finished period
(its caller, :mod:`mainsail.gateway.publisher`, decides the period and stores them), so the recorder itself
knows no clock. Everything runs on the event loop that serves the runtime API: no locks.

What SageMaker publishes (namespace ``AWS/SageMaker``, dimensions ``EndpointName`` and ``VariantName``):

- ``Invocations``: 1 per request routed to a variant (Sum: the requests);
- ``InvocationsPerInstance``: 1/n per request, n the variant's instances then (Sum: requests per instance);
- ``Invocation4XXErrors`` / ``Invocation5XXErrors``: 1 for a request the model (or the way to it) answered
  with a 4xx / 5xx, 0 for every other request (Sum: the errors, Average: the error rate);
- ``InvocationModelErrors``: 1 for a request whose model did not answer 2xx (an error status, or no
  answer at all), 0 otherwise;
- ``ModelLatency`` / ``OverheadLatency`` (Microseconds): the instance's time and the router's own;
- ``ModelSetupTime`` (Microseconds): a serverless cold start, from the request to an instance ready;
- multi-model endpoints: ``ModelLoadingWaitTime`` (Microseconds) and ``ModelCacheHit`` (1 for a target
  model found loaded, 0 for one that had to be loaded first; Average: the hit rate). SageMaker has no
  per-model metrics, so no ``TargetModel`` dimension: ``TargetModelInvocations`` (labelled by it),
  ``Throttles`` and ``ModelNotReady`` are ``/metrics`` only.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator

from mainsail.aws.cloudwatch.datapoints import MIN_MAGNITUDE, Datapoint, Distribution, dimensions_of
from mainsail.backends.base import Address
from mainsail.prometheus import LATENCY_BUCKETS_US

NAMESPACE = "AWS/SageMaker"
#: the units SageMaker gives its metrics (AWS's tables: counts and 0/1 flags are "None", not "Count")
NONE, MICROSECONDS = "None", "Microseconds"
_LOG_GAMMA = math.log((1 + 0.01) / (1 - 0.01))  # Distribution's buckets (datapoints.GAMMA), inlined below


class Timing:
    """One metric's values (microseconds): the Prometheus histogram since start (``count``, ``total``,
    ``buckets`` per bound of ``LATENCY_BUCKETS_US`` and +Inf, not cumulative), and this period's
    minimum, maximum and log-bucketed distribution (reset by :meth:`take`)."""

    __slots__ = ("count", "total", "buckets", "minimum", "maximum", "sketch", "zeros", "_taken_count",
                 "_taken_total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self.minimum = math.inf
        self.maximum = -math.inf
        self.sketch: dict[int, float] = {}
        self.zeros = 0.0
        self._taken_count = 0
        self._taken_total = 0.0

    def add(self, value: float) -> None:
        """Record one value (never negative: a time)."""
        self.count += 1
        self.total += value
        self.buckets[bisect_left(LATENCY_BUCKETS_US, value)] += 1
        if value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value
        if value < MIN_MAGNITUDE:
            self.zeros += 1
        else:  # Distribution.add, inlined: this runs on every request
            key = math.ceil(math.log(value) / _LOG_GAMMA)
            sketch = self.sketch
            sketch[key] = sketch.get(key, 0.0) + 1

    def take(self, name: str, dimensions: tuple[tuple[str, str], ...], timestamp: float) -> Datapoint | None:
        """This period's values as a datapoint (``None`` when there were none); the period starts anew."""
        count = self.count - self._taken_count
        if count <= 0:
            return None
        point = Datapoint(NAMESPACE, name, dimensions, timestamp, MICROSECONDS, float(count),
                          self.total - self._taken_total, self.minimum, self.maximum,
                          Distribution(self.sketch, {}, self.zeros))
        self._taken_count, self._taken_total = self.count, self.total
        self.minimum, self.maximum, self.sketch, self.zeros = math.inf, -math.inf, {}, 0.0
        return point


def _flags(name: str, dimensions: tuple[tuple[str, str], ...], timestamp: float, requests: int,
           ones: int) -> Datapoint:
    """A metric that is 1 for ``ones`` of ``requests`` requests and 0 for the rest."""
    requests = max(requests, ones)  # a request counted in the last period and failing in this one
    zeros = requests - ones
    distribution = Distribution({0: float(ones)} if ones else {}, {}, float(zeros))  # log(1) is bucket 0
    return Datapoint(NAMESPACE, name, dimensions, timestamp, NONE, float(requests), float(ones),
                     0.0 if zeros else 1.0, 1.0 if ones else 0.0, distribution)


class VariantSeries:
    """One endpoint variant's metrics (see the module docstring): the hot path adds to these attributes
    directly. Counters grow for ever; ``instance_counts`` (requests by the variant's instance count
    then, for ``InvocationsPerInstance``) is this period's."""

    __slots__ = ("endpoint", "variant", "dimensions", "invocations", "per_instance", "instance_counts",
                 "errors_4xx", "errors_5xx", "model_errors", "model_latency", "overhead_latency",
                 "model_setup_time", "throttles", "target_invocations", "cache_hits", "cache_misses",
                 "loading_wait", "not_ready", "asynchronous", "_taken")

    def __init__(self, endpoint: str, variant: str) -> None:
        self.endpoint = endpoint
        self.variant = variant
        self.dimensions = dimensions_of({"EndpointName": endpoint, "VariantName": variant})
        self.invocations = 0
        #: requests by instance (``/metrics``' ``InvocationsPerInstance``, labelled ``Instance``)
        self.per_instance: dict[Address, int] = {}
        self.instance_counts: dict[int, int] = {}
        self.errors_4xx = 0
        self.errors_5xx = 0
        self.model_errors = 0
        self.model_latency = Timing()
        self.overhead_latency = Timing()
        self.model_setup_time = Timing()
        self.throttles = 0
        self.target_invocations: dict[str, int] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.loading_wait = Timing()
        self.not_ready = 0
        #: an asynchronous endpoint's variant: SageMaker publishes no ``Invocations``,
        #: ``InvocationsPerInstance``, ``InvocationModelErrors`` or ``OverheadLatency`` for those
        self.asynchronous = False
        self._taken = (0, 0, 0, 0, 0, 0)

    def invoked(self, address: Address, instances: int) -> None:
        """Count a request sent to the instance at ``address``, one of ``instances`` of the variant."""
        self.invocations += 1
        per_instance = self.per_instance
        per_instance[address] = per_instance.get(address, 0) + 1
        counts = self.instance_counts
        counts[instances] = counts.get(instances, 0) + 1

    def failed(self, status: int, *, model: bool = True) -> None:
        """Count a request answered with an error ``status``: by the ``model`` (or for want of an answer
        from it), else by the router (a target model that could not be fetched, or is still loading)."""
        if status < 500:
            self.errors_4xx += 1
        else:
            self.errors_5xx += 1
        if model:
            self.model_errors += 1

    def take(self, timestamp: float) -> list[Datapoint]:
        """This period's datapoints (stamped ``timestamp``), and the next period starts."""
        dims = self.dimensions
        now = (self.invocations, self.errors_4xx, self.errors_5xx, self.model_errors, self.cache_hits,
               self.cache_misses)
        deltas = (a - b for a, b in zip(now, self._taken, strict=True))
        invocations, errors_4xx, errors_5xx, model_errors, hits, misses = deltas
        self._taken = now
        points: list[Datapoint] = []
        synchronous = not self.asynchronous
        if invocations or errors_4xx or errors_5xx or model_errors:
            if synchronous and invocations:
                points.append(Datapoint(NAMESPACE, "Invocations", dims, timestamp, NONE, float(invocations),
                                        float(invocations), 1.0, 1.0, Distribution({0: float(invocations)})))
            points.append(_flags("Invocation4XXErrors", dims, timestamp, invocations, errors_4xx))
            points.append(_flags("Invocation5XXErrors", dims, timestamp, invocations, errors_5xx))
            if synchronous:
                points.append(_flags("InvocationModelErrors", dims, timestamp, invocations, model_errors))
        if self.instance_counts and synchronous:
            per_instance = Datapoint(NAMESPACE, "InvocationsPerInstance", dims, timestamp, NONE)
            for instances, requests in sorted(self.instance_counts.items()):
                per_instance.add(1.0 / max(instances, 1), requests)
            points.append(per_instance)
        self.instance_counts = {}
        if hits or misses:
            points.append(_flags("ModelCacheHit", dims, timestamp, hits + misses, hits))
        for name, timing in (("ModelLatency", self.model_latency), ("OverheadLatency", self.overhead_latency),
                             ("ModelSetupTime", self.model_setup_time),
                             ("ModelLoadingWaitTime", self.loading_wait)):
            point = timing.take(name, dims, timestamp)
            if point is not None:
                points.append(point)
        return points


class Recorder:
    """Every variant's :class:`VariantSeries`, made on first use."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], VariantSeries] = {}

    def variant(self, endpoint: str, variant: str) -> VariantSeries:
        """The series of ``variant`` of ``endpoint`` (the hot path's one lookup per request)."""
        series = self._series.get((endpoint, variant))
        if series is None:
            series = self._series[(endpoint, variant)] = VariantSeries(endpoint, variant)
        return series

    def __iter__(self) -> Iterator[VariantSeries]:
        return iter(list(self._series.values()))

    def take(self, timestamp: float) -> list[Datapoint]:
        """Every variant's datapoints since the last take, stamped ``timestamp`` (a period's start)."""
        return [point for series in self for point in series.take(timestamp)]
