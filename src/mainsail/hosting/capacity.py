"""How many instances a variant runs now, and what the reconciler learns from the router to decide it.

``Traffic`` is the router's side (in-flight counts, last use, a way to wake the reconciler).
``Capacity.desired`` is a variant's instance count at this moment: its DesiredInstanceCount, except
that a serverless variant (and an async one with ``MAINSAIL_ASYNC_IDLE_SECONDS`` set) scales to zero
once idle and back to one on use. Application Auto Scaling's desired counts will land here.
``ready_counts`` / ``all_ready`` tell whether a serving set has reached those counts. ``Clock`` is
the time the reconciler reads (the system's, or a test's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from mainsail.backends.base import Address
from mainsail.hosting.endpoints import EndpointStatus
from mainsail.hosting.store import Record

logger = logging.getLogger(__name__)


class Traffic(Protocol):
    """What the reconciler learns from the router (``mainsail.routing.router.Router``)."""

    wake: Callable[[], None]

    def in_flight(self, address: Address) -> int: ...

    def last_used(self, endpoint: str, variant: str) -> float | None: ...

    def variant_in_flight(self, endpoint: str, variant: str) -> int: ...

    def note(self, address: Address, reason: str) -> None: ...


class Clock(Protocol):
    """The time the reconciler reads: ``time()`` for what it records (instances' start, drain, a
    record's LastModifiedTime) and the startup deadlines; ``monotonic()`` for idle clocks (the
    router's ``last_used`` is on the same clock)."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The system's clocks (``time.time``, ``time.monotonic``)."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class Capacity:
    """Instances each variant should run now, from its config and the router's idle clocks
    (``last_used``, ``variant_in_flight``: a ``Traffic``'s, or none in use without a router), read on
    ``clock``'s monotonic time."""

    def __init__(self, *, serverless_idle: float, async_idle: float | None,
                 last_used: Callable[[str, str], float | None],
                 variant_in_flight: Callable[[str, str], int], clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.serverless_idle = serverless_idle
        self.async_idle = async_idle
        self.last_used = last_used
        self.variant_in_flight = variant_in_flight
        self._idle_since: dict[tuple[str, str], float] = {}
        self._scaled_to_zero: dict[tuple[str, str], float] = {}

    def desired(self, record: Record, pv: dict[str, Any]) -> int:
        """Instances a variant should run now. A serverless variant runs one while in use (or while
        the endpoint is created, to check the model loads, or with ProvisionedConcurrency) and none
        once idle for ``serverless_idle`` seconds."""
        serverless = pv.get("CurrentServerlessConfig")
        idle_after = self.serverless_idle
        count = 1
        if not serverless:
            count = int(pv.get("DesiredInstanceCount", 1))
            if not record.get("AsyncInferenceConfig") or self.async_idle is None:
                return count
            idle_after = self.async_idle  # an async endpoint that scales to zero while its queue is empty
        if record["EndpointStatus"] == EndpointStatus.CREATING or (serverless or {}).get("ProvisionedConcurrency"):
            return count
        key = (record["EndpointName"], pv["VariantName"])
        now = self.clock.monotonic()
        if self.variant_in_flight(*key) > 0:
            return count
        last = self.last_used(*key)
        recent = max(last or 0.0, self._idle_since.setdefault(key, now))
        running = any(i["variant"] == pv["VariantName"] for i in record.get("Instances", []))
        if now - recent < idle_after:
            if running:
                return count
            return count if last is not None and last > self._scaled_to_zero.get(key, 0.0) else 0
        if running:
            logger.info("endpoint %s variant %s: idle for %.0f s, scaling to zero", *key, now - recent)
            self._scaled_to_zero[key] = now
        return 0


def ready_counts(items: list[dict[str, Any]]) -> dict[str, int]:
    """Ready instances per variant."""
    counts: dict[str, int] = {}
    for item in items:
        if item.get("ready"):
            counts[item["variant"]] = counts.get(item["variant"], 0) + 1
    return counts


def all_ready(record: Record, items: list[dict[str, Any]]) -> bool:
    """Every instance of ``items`` answers and each variant has its DesiredInstanceCount of them."""
    counts = ready_counts(items)
    return all(item.get("ready") for item in items) and all(
        counts.get(pv["VariantName"], 0) >= int(pv.get("DesiredInstanceCount", 1))
        for pv in record["ProductionVariants"])
