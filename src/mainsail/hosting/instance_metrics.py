"""The instance metrics SageMaker publishes in the ``/aws/sagemaker/Endpoints`` namespace, sampled once
a period from each serving instance's processes (:mod:`mainsail.backends.process_usage`).

Per variant (dimensions ``EndpointName`` and ``VariantName``) each instance gives one value a period, so
a datapoint's Average is over the variant's instances, as SageMaker's is:

- ``CPUUtilization``: the instance's CPU use over the period, summed over cores (two busy cores: 200 %);
  absent for an instance's first period here (no earlier sample to measure from);
- ``MemoryUtilization``: its processes' memory, as a percentage of its instance type's memory
  (:func:`mainsail.hosting.instance_types.memory_bytes`) or of a serverless variant's
  ``MemorySizeInMB``; absent for a type whose memory is not known;
- ``DiskUtilization``: how full the filesystem holding its model directory is.

Serverless variants publish only ``MemoryUtilization``, as on SageMaker. Only instances on this machine
(the local backend's, reached on loopback) are sampled; what cannot be measured is left out, never zero.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mainsail.aws.cloudwatch.datapoints import Datapoint, dimensions_of
from mainsail.backends.base import LOOPBACK, Instance
from mainsail.backends.process_usage import GroupUsage, cpu_percent, disk_percent, group_usage
from mainsail.hosting.endpoints import ENDPOINT, EndpointStatus
from mainsail.hosting.instance_types import memory_bytes
from mainsail.hosting.store import Record, StateStore

NAMESPACE = "/aws/sagemaker/Endpoints"
PERCENT = "Percent"
_SERVING = (EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING)


def _variant_memory(record: Record) -> dict[str, int | None]:
    """Each variant's memory per instance in bytes: its type's, or its serverless MemorySizeInMB."""
    out: dict[str, int | None] = {}
    specs: dict[str, Any] = record.get("Specs") or {}
    for pv in record.get("ProductionVariants", []):
        name = pv["VariantName"]
        serverless = pv.get("CurrentServerlessConfig") or {}
        if serverless.get("MemorySizeInMB"):
            out[name] = int(serverless["MemorySizeInMB"]) * 2**20
        else:
            instance_type = (specs.get(name) or {}).get("instance_type")
            out[name] = memory_bytes(instance_type) if instance_type else None
    return out


class InstanceSampler:
    """Samples every serving instance of ``store``'s endpoints; keeps each instance's last sample, to
    measure CPU over the period. :meth:`sample` blocks (SQLite, ``/proc``): run it off the event loop,
    one call at a time. ``usage`` and ``clock`` are what it reads (``/proc`` and ``time.monotonic``)."""

    def __init__(self, store: StateStore, *, usage: Callable[[set[int]], dict[int, GroupUsage] | None] = group_usage,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.usage = usage
        self.clock = clock
        self._last: dict[tuple[int, int], tuple[float, GroupUsage]] = {}

    def sample(self, timestamp: float) -> list[Datapoint]:
        """This period's datapoints (stamped ``timestamp``), one value per instance and metric."""
        serving: list[tuple[str, Instance, bool, int | None]] = []
        for record in self.store.list(ENDPOINT):
            if record.get("EndpointStatus") not in _SERVING:
                continue
            memories = _variant_memory(record)
            serverless_variants = {pv["VariantName"] for pv in record.get("ProductionVariants", [])
                          if pv.get("CurrentServerlessConfig")}
            for item in record.get("Instances", []):
                instance = Instance.from_record(item)
                if item.get("ready") and instance.host == LOOPBACK:
                    serving.append((record["EndpointName"], instance, instance.variant in serverless_variants,
                                    memories.get(instance.variant)))
        usage = self.usage({instance.pid for _, instance, _, _ in serving}) if serving else {}
        now = self.clock()
        if usage is None:  # no /proc here: nothing to say
            return []
        points: dict[tuple[str, str, str], Datapoint] = {}

        def add(endpoint: str, variant: str, metric: str, value: float | None) -> None:
            if value is None:
                return
            key = (endpoint, variant, metric)
            if key not in points:
                dims = dimensions_of({"EndpointName": endpoint, "VariantName": variant})
                points[key] = Datapoint(NAMESPACE, metric, dims, timestamp, PERCENT)
            points[key].add(value)

        last, self._last = self._last, {}
        for endpoint, instance, serverless, memory in serving:
            group = usage.get(instance.pid)
            if group is None:  # gone since the store said it serves
                continue
            key = (instance.pid, instance.port)  # a pid the system reused is another instance
            self._last[key] = (now, group)
            if memory:
                add(endpoint, instance.variant, "MemoryUtilization", group.memory_bytes / memory * 100.0)
            if serverless:
                continue
            before = last.get(key)
            if before is not None:
                add(endpoint, instance.variant, "CPUUtilization", cpu_percent(before[1], group, now - before[0]))
            if instance.model_dir:
                add(endpoint, instance.variant, "DiskUtilization", disk_percent(instance.model_dir))
        return list(points.values())
