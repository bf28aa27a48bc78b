"""One metric's values over one period: the unit both the recorders (the router, the instance sampler,
``PutMetricData``) and the store (:mod:`mainsail.aws.cloudwatch.store`) exchange.

A :class:`Datapoint` is what CloudWatch keeps per metric and period: SampleCount, Sum, Minimum, Maximum
and, when the values themselves were seen, their :class:`Distribution` (for percentiles). Periods are
one minute (``PERIOD_S``); ``MAINSAIL_METRICS_TIME_SCALE`` (:class:`TimeScale`) makes a minute last fewer real
seconds in tests and demos, and divides alarm periods and cooldowns the same way.

:class:`Distribution` is a log-bucketed histogram (the scheme of DDSketch): a value ``v > 0`` falls in bucket
``ceil(log(v) / log(GAMMA))``, and any percentile read back is within ``RELATIVE_ERROR`` (1 %) of a value
actually recorded at that rank. Buckets merge by adding counts, so minutes merge into longer periods and
instances into a variant without losing that bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PERIOD_S = 60
RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(GAMMA)
#: values whose magnitude is below this count as zero (CloudWatch's own floor is 2^-360)
MIN_MAGNITUDE = 1e-9

Dimensions = tuple[tuple[str, str], ...]
"""A metric's dimensions as (name, value) pairs, sorted by name: the form every key is built from."""


def dimensions_of(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> Dimensions:
    """``{"EndpointName": "e", "VariantName": "v"}`` (or pairs) as sorted :data:`Dimensions`."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return tuple(sorted((str(k), str(v)) for k, v in items))


@dataclass
class Distribution:
    """Counts of values per log bucket, positive and negative apart, and of zeros."""

    positive: dict[int, float] = field(default_factory=dict)
    negative: dict[int, float] = field(default_factory=dict)
    zeros: float = 0.0

    @property
    def count(self) -> float:
        return self.zeros + sum(self.positive.values()) + sum(self.negative.values())

    def add(self, value: float, count: float = 1.0) -> None:
        if abs(value) < MIN_MAGNITUDE:
            self.zeros += count
            return
        buckets = self.positive if value > 0 else self.negative
        key = math.ceil(math.log(abs(value)) / _LOG_GAMMA)
        buckets[key] = buckets.get(key, 0.0) + count

    def merge(self, other: Distribution) -> None:
        for mine, theirs in ((self.positive, other.positive), (self.negative, other.negative)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0.0) + n
        self.zeros += other.zeros

    def quantile(self, q: float) -> float | None:
        """The value at rank ``q`` (0..1) within ``RELATIVE_ERROR``; None when empty. The rank is the nearest
        rank: the smallest value with at least ``q`` of all values at or below it."""
        total = self.count
        if total <= 0:
            return None
        rank = max(math.ceil(q * total - 1e-9) - 1, 0)  # 0-based rank of the wanted value
        seen = 0.0
        # ascending order: most negative first (largest negative key), then zeros, then positives
        for key in sorted(self.negative, reverse=True):
            seen += self.negative[key]
            if seen > rank:
                return -bucket_value(key)
        seen += self.zeros
        if seen > rank:
            return 0.0
        for key in sorted(self.positive):
            seen += self.positive[key]
            if seen > rank:
                return bucket_value(key)
        return bucket_value(max(self.positive)) if self.positive else 0.0

    def to_json(self) -> dict[str, object]:
        return {"p": {str(k): v for k, v in self.positive.items()},
                "n": {str(k): v for k, v in self.negative.items()}, "z": self.zeros}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Distribution:
        positive, negative = data.get("p") or {}, data.get("n") or {}
        assert isinstance(positive, dict) and isinstance(negative, dict)
        zeros = data.get("z") or 0.0
        return cls({int(k): float(v) for k, v in positive.items()}, {int(k): float(v) for k, v in negative.items()},
                   float(zeros))  # type: ignore[arg-type]


def bucket_value(key: int) -> float:
    """The value that stands for bucket ``key``: within ``RELATIVE_ERROR`` of every value in it."""
    return 2 * GAMMA ** key / (GAMMA + 1)


@dataclass
class Datapoint:
    """One metric over one period (``timestamp``: the period's start, real epoch seconds, a multiple of
    :meth:`TimeScale.period_s`)."""

    namespace: str
    metric_name: str
    dimensions: Dimensions
    timestamp: float
    unit: str = "None"
    sample_count: float = 0.0
    sum: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    distribution: Distribution | None = None
    """The values themselves, bucketed (None when only statistic sets were put: no percentiles then)."""

    def add(self, value: float, count: float = 1.0) -> None:
        """Record ``value`` (``count`` times). After a statistic set (no distribution, values already counted)
        the period has no percentiles any more: one started now would know only the later values."""
        if self.distribution is None and not self.sample_count:
            self.distribution = Distribution()
        self.sample_count += count
        self.sum += value * count
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        if self.distribution is not None:
            self.distribution.add(value, count)

    def add_statistics(self, sample_count: float, total: float, minimum: float, maximum: float) -> None:
        """Merge a statistic set (``PutMetricData``'s StatisticValues): percentiles are lost for this period."""
        self.sample_count += sample_count
        self.sum += total
        self.minimum = min(self.minimum, minimum)
        self.maximum = max(self.maximum, maximum)
        self.distribution = None if sample_count else self.distribution

    def merge(self, other: Datapoint) -> None:
        """Fold another datapoint of the same metric into this one (a longer period, more instances).
        Percentiles survive only when both sides kept their values (or one side is empty)."""
        keep = ((self.distribution is not None or not self.sample_count)
                and (other.distribution is not None or not other.sample_count))
        self.sample_count += other.sample_count
        self.sum += other.sum
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        if not keep:
            self.distribution = None
        elif other.distribution is not None:
            if self.distribution is None:
                self.distribution = Distribution()
            self.distribution.merge(other.distribution)

    @property
    def average(self) -> float | None:
        return self.sum / self.sample_count if self.sample_count else None


@dataclass(frozen=True)
class TimeScale:
    """How fast metric time runs against real time. Timestamps stay real (a client's ``StartTime`` and
    ``EndTime`` mean what they say); durations shrink: with ``factor`` 60 a metric minute (one period, an
    alarm period of 60, a 60 s cooldown) lasts one real second. 1 (the default) is AWS's."""

    factor: float = 1.0

    def real_seconds(self, metric_seconds: float) -> float:
        """How long ``metric_seconds`` (a period, an evaluation, a cooldown) lasts in real seconds."""
        return metric_seconds / self.factor

    @property
    def period_s(self) -> float:
        """The real length of one one-minute period."""
        return PERIOD_S / self.factor

    def period_start(self, at: float) -> float:
        """The start of the one-minute period holding real time ``at`` (epoch seconds)."""
        length = self.period_s
        return math.floor(at / length) * length
