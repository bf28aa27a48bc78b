"""The multi-model container's memory accounting and metrics: the memory budget
(``--models-memory-mb`` / ``MAINSAIL_MULTI_MODEL_MEMORY_MB``; default half the machine's memory),
the process's resident memory, a model's files size, and ``MultiModelMetrics`` (the data plane's
metrics labelled by ``ModelName``, plus load/unload times and gauges).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from mainsail.errors import ModelLoadError
from mainsail.prometheus import LATENCY_BUCKETS_US

MEMORY_ENV = "MAINSAIL_MULTI_MODEL_MEMORY_MB"


def memory_budget_bytes(explicit_mb: float | None = None) -> int:
    """The budget: ``explicit_mb``, else ``MAINSAIL_MULTI_MODEL_MEMORY_MB``, else half the RAM."""
    raw: Any = explicit_mb if explicit_mb is not None else os.environ.get(MEMORY_ENV)
    if raw not in (None, ""):
        try:
            value = float(raw)
        except ValueError:
            raise ModelLoadError(f"{MEMORY_ENV}={raw!r} is not a number of megabytes") from None
        if value <= 0:
            raise ModelLoadError(f"the multi-model memory budget must be positive, got {value:g} MB")
        return int(value * 1024 * 1024)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 4 * 1024**3


def process_rss() -> int | None:
    """This process's resident memory in bytes (``None`` without ``/proc``)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def files_size(path: Path) -> int:
    """The bytes of the regular files under ``path``."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


class MultiModelMetrics:
    """The data plane's metrics, labelled by ``ModelName``, plus load/unload times and a gauge."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("ModelName",)
        self.invocations = Counter("Invocations", "Requests sent to /models/{name}/invoke", labels,
                                   registry=self.registry)
        self.errors_4xx = Counter("Invocation4XXErrors", "Invocations answered with a 4xx status", labels,
                                  registry=self.registry)
        self.errors_5xx = Counter("Invocation5XXErrors", "Invocations answered with a 5xx status", labels,
                                  registry=self.registry)
        self.model_latency = Histogram("ModelLatency", "Time spent in the model's handler, in microseconds",
                                       labels, buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.overhead_latency = Histogram(
            "OverheadLatency", "Time spent outside the handler, in microseconds", labels,
            buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.loading_time = Histogram("ModelLoadingTime", "Time to load a model, in microseconds", labels,
                                      buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.unloading_time = Histogram("ModelUnloadingTime", "Time to unload a model, in microseconds",
                                        labels, buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.evictions = Counter("ModelEvictions", "Models unloaded to make room for another", labels,
                                 registry=self.registry)
        self.loaded = Gauge("LoadedModelCount", "Models loaded in this worker", registry=self.registry,
                            multiprocess_mode="livesum")
        self.memory = Gauge("LoadedModelMemoryBytes", "Measured cost of the loaded models",
                            registry=self.registry, multiprocess_mode="livesum")

    def record(self, model: str, status: int, model_us: float | None, total_us: float) -> None:
        self.invocations.labels(model).inc()
        if 400 <= status < 500:
            self.errors_4xx.labels(model).inc()
        elif status >= 500:
            self.errors_5xx.labels(model).inc()
        if model_us is not None:
            self.model_latency.labels(model).observe(model_us)
            self.overhead_latency.labels(model).observe(max(total_us - model_us, 0.0))

    def render(self) -> bytes:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
