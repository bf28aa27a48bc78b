"""Prometheus metrics with SageMaker's names, kept in each worker's memory and merged when scraped.

Latencies are histograms in microseconds, as CloudWatch reports ``ModelLatency`` and
``OverheadLatency``. A worker records into an array of doubles that only it writes: with several
workers, a file per worker process mapped into memory in the directory ``PROMETHEUS_MULTIPROC_DIR``
names (the supervisor sets it before the workers start), so any worker answers ``/metrics`` for all
of them by adding the files up; alone, plain memory. Recording a request is a few array updates
(prometheus-client's multiprocess mode, a locked file write per value, cost several times more per
request). Files of workers that died stay and count, as a counter's history should.
"""

from __future__ import annotations

import mmap
import os
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from mainsail.prometheus import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_US

FILE_PREFIX = "mainsail-worker-"
FILE_SUFFIX = ".metrics"
COUNTERS = (("Invocations", "Requests sent to /invocations"),
            ("Invocation4XXErrors", "Invocations answered with a 4xx status"),
            ("Invocation5XXErrors", "Invocations answered with a 5xx status"))
HISTOGRAMS = (
    ("ModelLatency", "Time spent in the model's handler, in microseconds", LATENCY_BUCKETS_US),
    ("OverheadLatency", "Time spent outside the handler (decode, queue, encode), in microseconds",
     LATENCY_BUCKETS_US),
    ("BatchSize", "Requests merged into one model call by adaptive batching", BATCH_SIZE_BUCKETS),
)
INVOCATIONS, ERRORS_4XX, ERRORS_5XX = range(3)
Slots = Any
"""A ``memoryview`` cast to doubles (typeshed types a memoryview's items as ``int`` only)."""


def _histogram_offsets() -> list[int]:
    offsets, at = [], len(COUNTERS)
    for _, _, bounds in HISTOGRAMS:
        offsets.append(at)
        at += len(bounds) + 2  # a count per bucket, +Inf, then the sum
    return [*offsets, at]


OFFSETS = _histogram_offsets()
SLOTS = OFFSETS[-1]


class Histogram:
    """One histogram's slots: a count per bucket (not cumulative), +Inf, then the sum."""

    def __init__(self, values: Slots, offset: int, bounds: Sequence[float]) -> None:
        self._values = values
        self._offset = offset
        self._bounds = tuple(float(b) for b in bounds)
        self._sum = offset + len(bounds) + 1

    def observe(self, value: float) -> None:
        values = self._values
        values[self._offset + bisect_left(self._bounds, value)] += 1.0
        values[self._sum] += value


class Metrics:
    """The data plane's counters and histograms; one instance per app, never a module global."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory if directory is not None else os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._mapped: mmap.mmap | None = None
        if self.directory:
            self._mapped = _map(Path(self.directory) / f"{FILE_PREFIX}{os.getpid()}{FILE_SUFFIX}")
            self.values: Slots = memoryview(self._mapped).cast("d")
        else:
            self.values = memoryview(bytearray(SLOTS * 8)).cast("d")
        self.model_latency, self.overhead_latency, self.batch_size = (
            Histogram(self.values, offset, bounds)
            for offset, (_, _, bounds) in zip(OFFSETS[:-1], HISTOGRAMS, strict=True))

    def record(self, status: int, model_us: float | None, total_us: float) -> None:
        values = self.values
        values[INVOCATIONS] += 1.0
        if status >= 400:
            values[ERRORS_4XX if status < 500 else ERRORS_5XX] += 1.0
        if model_us is not None:
            self.model_latency.observe(model_us)
            overhead = total_us - model_us
            self.overhead_latency.observe(overhead if overhead > 0.0 else 0.0)

    def totals(self) -> array[float]:
        """Every worker's slots added up (this one's alone without a directory)."""
        if not self.directory:
            return array("d", self.values.tobytes())
        total = array("d", bytes(SLOTS * 8))
        for path in Path(self.directory).glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"):
            data = path.read_bytes()[:SLOTS * 8]
            if len(data) != SLOTS * 8:
                continue  # a worker still creating its file
            for i, value in enumerate(array("d", data)):
                total[i] += value
        return total

    def render(self) -> bytes:
        registry = CollectorRegistry()
        registry.register(_Snapshot(self.totals()))
        if self.directory:  # what other parts of the worker record through prometheus-client
            MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


class _Snapshot:
    """The families of one set of totals, as prometheus-client exposes them."""

    def __init__(self, totals: array[float]) -> None:
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        for i, (name, documentation) in enumerate(COUNTERS):
            yield CounterMetricFamily(name, documentation, value=self.totals[i])
        for offset, (name, documentation, bounds) in zip(OFFSETS[:-1], HISTOGRAMS, strict=True):
            counts = self.totals[offset:offset + len(bounds) + 1]
            cumulative, buckets = 0.0, []
            for bound, count in zip([*(_label(b) for b in bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            yield HistogramMetricFamily(name, documentation, buckets=buckets,
                                        sum_value=self.totals[offset + len(bounds) + 1])


def _label(bound: float) -> str:
    return str(float(bound))  # as prometheus-client writes its own bucket bounds


def _map(path: Path) -> mmap.mmap:
    """``path`` mapped shared, at least ``SLOTS`` doubles long (an existing file keeps its values)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < SLOTS * 8:
            os.ftruncate(fd, SLOTS * 8)
        return mmap.mmap(fd, SLOTS * 8)
    finally:
        os.close(fd)
