"""Routing tables: what the runtime API needs of one endpoint, cached until the store changes it.

A :class:`Table` holds the endpoint's status and its :class:`Variant` s (weights, the addresses of
ready instances, routing strategy, serverless MaxConcurrency, multi-model, scale-to-zero). :class:`TableCache`
keeps one per endpoint in memory and drops it whenever the store commits a change to that endpoint,
so a request costs no SQLite read.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from mainsail.backends.base import Address, address_of
from mainsail.backends.model_sources import multi_model_prefix
from mainsail.hosting.endpoints import ENDPOINT, EndpointStatus
from mainsail.hosting.store import Record, StateStore

LEAST_OUTSTANDING = "LEAST_OUTSTANDING_REQUESTS"
#: the statuses in which an endpoint answers (the old config keeps serving while an update is under way)
SERVING = (EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING)


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    least_outstanding: bool
    #: where the variant's ready instances answer
    addresses: tuple[Address, ...]
    #: MaxConcurrency of a serverless variant (``None``: an instance-based variant)
    max_concurrency: int | None = None
    #: a multi-model variant (``Mode: MultiModel``): every request names its ``TargetModel``
    multi_model: bool = False
    #: an instance-based variant that scales to zero when idle (an async endpoint, when enabled)
    idle_to_zero: bool = False

    @property
    def scales_to_zero(self) -> bool:
        """Whether a request may find no instance and start one (a cold start)."""
        return self.serverless or self.idle_to_zero

    @property
    def serverless(self) -> bool:
        return self.max_concurrency is not None


@dataclass(frozen=True)
class Table:
    """What the router needs of one endpoint."""

    status: str
    variants: tuple[Variant, ...]

    @classmethod
    def of(cls, record: Record, *, async_to_zero: bool = False) -> Table:
        ready: dict[str, list[Address]] = {}
        for instance in record.get("Instances", []):
            if instance.get("ready", True):
                ready.setdefault(str(instance["variant"]), []).append(address_of(instance))
        specs = record.get("Specs") or {}
        variants = []
        for pv in record.get("ProductionVariants", []):
            spec = specs.get(pv["VariantName"]) or {}
            strategy = (pv.get("RoutingConfig") or {}).get("RoutingStrategy")
            serverless = pv.get("CurrentServerlessConfig")
            variants.append(Variant(name=pv["VariantName"], weight=float(pv.get("CurrentWeight", 1.0)),
                                    least_outstanding=strategy == LEAST_OUTSTANDING,
                                    addresses=tuple(ready.get(pv["VariantName"], ())),
                                    max_concurrency=int(serverless.get("MaxConcurrency") or 1)
                                    if serverless else None,
                                    multi_model=multi_model_prefix(str(spec.get("model_data_url", "")),
                                                                   spec.get("environment") or {}) is not None,
                                    idle_to_zero=async_to_zero and bool(record.get("AsyncInferenceConfig"))
                                    and not serverless))
        return cls(status=str(record["EndpointStatus"]), variants=tuple(variants))

    @property
    def serving(self) -> bool:
        """Whether the endpoint answers requests (InService, or Updating on its old config)."""
        return self.status in SERVING


class TableCache:
    """One :class:`Table` per endpoint, read from ``store`` on first use and dropped when the store
    commits a change to the endpoint. ``async_to_zero``: async endpoints scale to zero when idle."""

    def __init__(self, store: StateStore, *, async_to_zero: bool = False) -> None:
        self.store = store
        self.async_to_zero = async_to_zero
        self._tables: dict[str, Table] = {}
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()
        store.subscribe(self._changed)

    def _changed(self, kind: str, name: str) -> None:
        if kind == ENDPOINT:
            with self._lock:
                self._generation[name] = self._generation.get(name, 0) + 1
                self._tables.pop(name, None)

    async def get(self, name: str) -> Table | None:
        """The endpoint's table (``None``: no such endpoint)."""
        table = self._tables.get(name)
        if table is not None:
            return table
        generation = self._generation.get(name, 0)
        record = await run_in_threadpool(self.store.get, ENDPOINT, name)
        if record is None:
            return None
        table = Table.of(record, async_to_zero=self.async_to_zero)
        with self._lock:
            if self._generation.get(name, 0) == generation:  # no write since we read
                self._tables[name] = table
        return table

    def drop(self, name: str) -> None:
        """Forget the endpoint's table: the next :meth:`get` reads the store."""
        with self._lock:
            self._tables.pop(name, None)
