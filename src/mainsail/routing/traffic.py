"""Traffic: the one object that knows what is in flight to which instance, and when each variant was
last used.

The router, the asynchronous inference worker and target-model routing all go through it:

- :meth:`Traffic.pick` draws a variant by ``CurrentWeight`` (``X-Amzn-SageMaker-Target-Variant``
  overrides), then an instance at random, or the one with the fewest requests in flight when the
  variant's ``RoutingConfig`` says ``LEAST_OUTSTANDING_REQUESTS``;
- ``async with traffic.lease(endpoint, variant, address) as address:`` reserves the request's place: for a
  variant that scales to zero (serverless, or an idle async endpoint) it tracks use (the idle clock),
  throttles over a serverless ``MaxConcurrency`` (:class:`~mainsail.routing.responses.Throttled`) and
  starts an instance when there is none (:meth:`Traffic.cold_start`);
- ``with traffic.busy(address):`` counts a request in flight to an instance, and
  :meth:`Traffic.replacement` finds another instance when one is gone.

The reconciler reads the counts (:meth:`in_flight`, :meth:`last_used`, :meth:`variant_in_flight`)
so that it stops a draining instance only once it is idle and scales idle variants to zero; it sets
:attr:`wake` so that a cold start wakes it at once, and tells :meth:`note` why it stopped an instance.
Instances are known by their :class:`~mainsail.backends.base.Address` (host and port), as the
backend's transport reaches them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from mainsail.backends.base import Address
from mainsail.routing.recorder import Recorder
from mainsail.routing.responses import ModelError, ServiceUnavailable, Throttled
from mainsail.routing.table import Table, TableCache, Variant

logger = logging.getLogger(__name__)

MAX_NOTES = 1024


class Traffic:
    """In-flight counts, idle clocks, cold starts, replacement and throttling of the runtime API."""

    def __init__(self, tables: TableCache, recorder: Recorder, *, rng: random.Random | None = None,
                 cold_start_timeout: float = 120.0) -> None:
        self.tables = tables
        #: the runtime API's metrics, per variant (:mod:`mainsail.routing.recorder`)
        self.recorder = recorder
        self.rng = rng or random.Random()
        self.cold_start_timeout = cold_start_timeout
        #: set by whoever runs the reconciler: wakes it at once (a serverless cold start is waiting)
        self.wake: Callable[[], None] = lambda: None
        self._in_flight: dict[Address, int] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self._variant_in_flight: dict[tuple[str, str], int] = {}
        self._notes: dict[Address, str] = {}

    # -- what the reconciler reads ---------------------------------------------------------------

    def in_flight(self, address: Address) -> int:
        """Requests now being forwarded to the instance at ``address``."""
        return self._in_flight.get(address, 0)

    def last_used(self, endpoint: str, variant: str) -> float | None:
        """When (``time.monotonic()``) a request last came for a variant, ``None`` if never."""
        return self._last_used.get((endpoint, variant))

    def variant_in_flight(self, endpoint: str, variant: str) -> int:
        """Requests in flight for a variant (cold starts included)."""
        return self._variant_in_flight.get((endpoint, variant), 0)

    def note(self, address: Address, reason: str) -> None:
        """Why the instance at ``address`` was stopped (e.g. over its memory): told to its requests."""
        self._notes[address] = reason
        while len(self._notes) > MAX_NOTES:
            self._notes.pop(next(iter(self._notes)))

    def noted(self, address: Address) -> str | None:
        """What :meth:`note` said of the instance at ``address``, if anything."""
        return self._notes.get(address)

    # -- choosing and reserving --------------------------------------------------------------------

    def pick(self, table: Table, target: str | None) -> tuple[Variant, Address | None] | str:
        """The variant and instance address for a request (``None``: a variant scaled to zero with no
        instance running, to start), or why there is none (``""``: no instance is ready)."""
        if target is not None:
            variants = [v for v in table.variants if v.name == target]
            if not variants:
                return f"The variant {target} is not present in the endpoint."
        else:
            variants = [v for v in table.variants if v.addresses or v.scales_to_zero]
        variants = [v for v in variants if v.addresses or v.scales_to_zero]
        if not variants:
            return ""
        if len(variants) == 1:
            variant = variants[0]
        else:
            weights = [v.weight for v in variants]
            variant = self.rng.choices(variants, weights=weights if sum(weights) > 0 else None)[0]
        addresses = variant.addresses
        if not addresses:
            return variant, None
        if len(addresses) == 1:
            return variant, addresses[0]
        if variant.least_outstanding:
            fewest = min(self._in_flight.get(a, 0) for a in addresses)
            return variant, self.rng.choice([a for a in addresses if self._in_flight.get(a, 0) == fewest])
        return variant, self.rng.choice(addresses)

    @asynccontextmanager
    async def lease(self, endpoint: str, variant: Variant, address: Address | None) -> AsyncIterator[Address]:
        """The instance a picked request goes to, held for the request. A variant that scales to
        zero (serverless, or an async endpoint that does) tracks use, throttles over its
        MaxConcurrency (raises :class:`Throttled`) and, with no instance (``address`` ``None``), waits
        for a cold start (raises what :meth:`cold_start` raises)."""
        if not variant.scales_to_zero:
            assert address is not None
            yield address
            return
        key = (endpoint, variant.name)
        self._last_used[key] = time.monotonic()
        if variant.max_concurrency is not None and self._variant_in_flight.get(key, 0) >= variant.max_concurrency:
            self.recorder.variant(*key).throttles += 1
            raise Throttled(f"Rate exceeded: endpoint {endpoint} variant {variant.name} already has "
                            f"{variant.max_concurrency} concurrent requests (its MaxConcurrency).")
        self._variant_in_flight[key] = self._variant_in_flight.get(key, 0) + 1
        try:
            if address is None:
                address = await self.cold_start(endpoint, variant.name)
            yield address
        finally:
            self._variant_in_flight[key] -= 1
            self._last_used[key] = time.monotonic()

    @contextmanager
    def busy(self, address: Address) -> Iterator[None]:
        """Count a request in flight to the instance at ``address`` while the block runs."""
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        try:
            yield
        finally:
            self._in_flight[address] -= 1

    # -- instances that are not there (yet) --------------------------------------------------------

    async def cold_start(self, endpoint: str, variant: str) -> Address:
        """Wait until the reconciler has an instance of a variant scaled to zero ready; its address.
        Raises :class:`ModelError` (424) when the endpoint stops serving meanwhile and
        :class:`ServiceUnavailable` (503) after :attr:`cold_start_timeout`."""
        began = time.perf_counter()
        deadline = time.monotonic() + self.cold_start_timeout
        logger.info("endpoint %s variant %s: cold start", endpoint, variant)
        while True:
            self.wake()
            table = await self.tables.get(endpoint)
            if table is None or not table.serving:
                raise ModelError(f"Endpoint {endpoint} could not start an instance of variant {variant}: "
                                 f"it is {table.status if table else 'gone'}.", OriginalStatusCode=503,
                                 OriginalMessage="cold start failed", LogStreamArn="")
            addresses = next((v.addresses for v in table.variants if v.name == variant), ())
            if addresses:
                setup_us = (time.perf_counter() - began) * 1e6
                self.recorder.variant(endpoint, variant).model_setup_time.add(setup_us)
                logger.info("endpoint %s variant %s: cold start took %.0f ms", endpoint, variant, setup_us / 1000)
                return self.rng.choice(addresses)
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"Endpoint {endpoint} variant {variant}: no instance started within "
                                         f"{self.cold_start_timeout:g} s (cold start).")
            await asyncio.sleep(0.02)

    async def until_ready(self, endpoint: str, target: str | None,
                          timeout: float) -> tuple[Variant, Address | None] | str:
        """What :meth:`pick` answers once an instance is ready, for an endpoint that serves but has none
        ready yet (its instances are starting: a restarted control plane, a replaced instance): SageMaker
        holds such a request rather than fail it. Waits at most ``timeout`` seconds; then, or when the
        endpoint stops serving, the reason there is none (``""``: still none ready)."""
        deadline = time.monotonic() + timeout
        while True:
            self.wake()
            await asyncio.sleep(0.05)
            table = await self.tables.get(endpoint)
            if table is None or not table.serving:
                return (f"Endpoint {endpoint} is "
                        + (f"no longer in service (status {table.status})." if table else "gone."))
            choice = self.pick(table, target)
            if choice != "" or time.monotonic() > deadline:
                return choice

    async def replacement(self, endpoint: str, variant: Variant, dead: Address,
                          wait: float = 10.0) -> Address | None:
        """Another ready instance of the variant than ``dead``, waiting (bounded) for the reconciler to
        replace it; ``None`` if none comes."""
        self.tables.drop(endpoint)
        deadline = time.monotonic() + (self.cold_start_timeout if variant.serverless else wait)
        while time.monotonic() < deadline:
            table = await self.tables.get(endpoint)
            if table is None or not table.serving:
                return None
            others = [a for v in table.variants if v.name == variant.name for a in v.addresses if a != dead]
            if others:
                return self.rng.choice(others)
            self.wake()
            await asyncio.sleep(0.05)
        return None

