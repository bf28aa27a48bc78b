"""The runtime API's router: ``POST /endpoints/{name}/invocations`` forwarded to an instance.

Each endpoint's routing table (variants, weights, ready instances, strategies) is cached in memory
and dropped whenever the store commits a change to that endpoint, so a request costs no SQLite read.
A variant is drawn by ``CurrentWeight`` (``X-Amzn-SageMaker-Target-Variant`` overrides), then an
instance at random, or the one with the fewest requests in flight when the variant's
``RoutingConfig`` says ``LEAST_OUTSTANDING_REQUESTS``. Requests in flight per instance are counted so
that the reconciler stops a draining instance only once it is idle.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mainsail.control import resources as res
from mainsail.control.endpoints import ENDPOINT, IN_SERVICE, UPDATING
from mainsail.control.forward import Forwarder, ForwardError
from mainsail.control.store import Record, StateStore
from mainsail.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mainsail.serve.metrics import LATENCY_BUCKETS_US

MAX_PAYLOAD = 6 * 1024 * 1024
LEAST_OUTSTANDING = "LEAST_OUTSTANDING_REQUESTS"
_SERVING = (IN_SERVICE, UPDATING)  # the old config keeps serving while an update is under way
_FORWARDED = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes",
              "x-amzn-sagemaker-inference-id")


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    least_outstanding: bool
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Table:
    """What the router needs of one endpoint."""

    status: str
    variants: tuple[Variant, ...]

    @classmethod
    def of(cls, record: Record) -> Table:
        ready: dict[str, list[int]] = {}
        for instance in record.get("Instances", []):
            if instance.get("ready", True):
                ready.setdefault(str(instance["variant"]), []).append(int(instance["port"]))
        variants = []
        for pv in record.get("ProductionVariants", []):
            strategy = (pv.get("RoutingConfig") or {}).get("RoutingStrategy")
            variants.append(Variant(name=pv["VariantName"], weight=float(pv.get("CurrentWeight", 1.0)),
                                    least_outstanding=strategy == LEAST_OUTSTANDING,
                                    ports=tuple(ready.get(pv["VariantName"], ()))))
        return cls(status=str(record["EndpointStatus"]), variants=tuple(variants))


class RouterMetrics:
    """Per-endpoint CloudWatch-named metrics of the runtime API, labelled by endpoint and variant."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("EndpointName", "VariantName")
        self.invocations = Counter("Invocations", "InvokeEndpoint requests routed to a variant", labels,
                                   registry=self.registry)
        self.errors_4xx = Counter("Invocation4XXErrors", "Requests answered with a 4xx (model or client)",
                                  labels, registry=self.registry)
        self.errors_5xx = Counter("Invocation5XXErrors", "Requests answered with a 5xx", labels,
                                  registry=self.registry)
        self.per_instance = Counter("InvocationsPerInstance", "Requests routed to each instance",
                                    (*labels, "Instance"), registry=self.registry)
        self.model_latency = Histogram(
            "ModelLatency", "Time the instance took to answer, in microseconds", labels,
            buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.overhead_latency = Histogram(
            "OverheadLatency", "Time spent in the router outside the instance, in microseconds", labels,
            buckets=LATENCY_BUCKETS_US, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    return Response(json.dumps({"message": message, **extra}), status_code=status,
                    media_type="application/json", headers={"X-Amzn-ErrorType": code})


class Router:
    """The runtime route, its table cache, in-flight counts, metrics and keep-alive client."""

    def __init__(self, store: StateStore, *, timeout: float = 60.0, rng: random.Random | None = None) -> None:
        self.store = store
        self.timeout = timeout
        self.rng = rng or random.Random()
        self.metrics = RouterMetrics()
        self._tables: dict[str, Table] = {}
        self._generation: dict[str, int] = {}
        self._in_flight: dict[int, int] = {}
        self._lock = threading.Lock()
        self._client: Forwarder | None = None
        store.subscribe(self._changed)
        self.route = Route("/endpoints/{name:path}/invocations", self.invoke, methods=["POST"])

    # -- state shared with the reconciler ---------------------------------------------------------

    def _changed(self, kind: str, name: str) -> None:
        if kind == ENDPOINT:
            with self._lock:
                self._generation[name] = self._generation.get(name, 0) + 1
                self._tables.pop(name, None)

    def in_flight(self, port: int) -> int:
        """Requests now being forwarded to the instance on ``port``."""
        return self._in_flight.get(port, 0)

    async def _table(self, name: str) -> Table | None:
        table = self._tables.get(name)
        if table is not None:
            return table
        generation = self._generation.get(name, 0)
        record = await run_in_threadpool(self.store.get, ENDPOINT, name)
        if record is None:
            return None
        table = Table.of(record)
        with self._lock:
            if self._generation.get(name, 0) == generation:  # no write since we read
                self._tables[name] = table
        return table

    def pick(self, table: Table, target: str | None) -> tuple[Variant, int] | str:
        """The variant and instance port for a request, or why there is none."""
        if target is not None:
            variants = [v for v in table.variants if v.name == target]
            if not variants:
                return f"The variant {target} is not present in the endpoint."
        else:
            variants = [v for v in table.variants if v.ports]
        variants = [v for v in variants if v.ports]
        if not variants:
            return ""
        if len(variants) == 1:
            variant = variants[0]
        else:
            weights = [v.weight for v in variants]
            variant = self.rng.choices(variants, weights=weights if sum(weights) > 0 else None)[0]
        if len(variant.ports) == 1:
            return variant, variant.ports[0]
        if variant.least_outstanding:
            fewest = min(self._in_flight.get(p, 0) for p in variant.ports)
            return variant, self.rng.choice([p for p in variant.ports if self._in_flight.get(p, 0) == fewest])
        return variant, self.rng.choice(variant.ports)

    # -- the route --------------------------------------------------------------------------------

    async def invoke(self, request: Request) -> Response:
        from mainsail.control.api import region_of

        started = time.perf_counter()
        name = urllib.parse.unquote(request.path_params["name"])
        table = await self._table(name)
        if table is None:
            return _error(400, "ValidationError", f"Endpoint {name} of account {res.ACCOUNT} not found.")
        if table.status not in _SERVING:
            return _error(400, "ValidationError",
                          f"Endpoint {name} of account {res.ACCOUNT} is not in service "
                          f"(status {table.status}).")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_PAYLOAD:
            return _payload_too_large()
        body = await request.body()
        if len(body) > MAX_PAYLOAD:
            return _payload_too_large()
        target = request.headers.get("x-amzn-sagemaker-target-variant")
        choice = self.pick(table, target)
        if isinstance(choice, str):
            if choice:
                return _error(400, "ValidationError", choice)
            return _error(503, "ServiceUnavailable",
                          f"Endpoint {name} has no instance ready to serve"
                          + (f" in variant {target}." if target else "."))
        variant, port = choice
        labels = (name, variant.name)
        self.metrics.invocations.labels(*labels).inc()
        self.metrics.per_instance.labels(*labels, str(port)).inc()
        headers = [(k, v) for k in _FORWARDED if (v := request.headers.get(k)) is not None]
        region = region_of(request.headers.get("authorization"))
        log_arn = f"arn:aws:logs:{region}:{res.ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{name}"
        if self._client is None:
            self._client = Forwarder(max_idle=256)
        self._in_flight[port] = self._in_flight.get(port, 0) + 1
        upstream_started = time.perf_counter()
        try:
            upstream = await self._client.post(port, "/invocations", body, headers, timeout=self.timeout)
        except ForwardError as exc:
            self.metrics.errors_5xx.labels(*labels).inc()
            return _error(424, "ModelError", f"Could not reach the instance of variant {variant.name}: {exc}",
                          OriginalStatusCode=502, OriginalMessage=str(exc), LogStreamArn=log_arn)
        finally:
            self._in_flight[port] -= 1
        model_us = (time.perf_counter() - upstream_started) * 1e6
        self.metrics.model_latency.labels(*labels).observe(model_us)
        if not 200 <= upstream.status < 300:
            client_error = upstream.status < 500
            (self.metrics.errors_4xx if client_error else self.metrics.errors_5xx).labels(*labels).inc()
            kind = "client" if client_error else "server"
            text = upstream.text
            return _error(
                424, "ModelError",
                f'Received {kind} error ({upstream.status}) from primary with message "{text}". '
                f"See {log_arn} in account {res.ACCOUNT} for more information.",
                OriginalStatusCode=upstream.status, OriginalMessage=text, LogStreamArn=log_arn,
                ErrorCode=f"{kind.upper()}_ERROR_FROM_MODEL")
        out_headers = {"x-Amzn-Invoked-Production-Variant": variant.name}
        custom = upstream.headers.get("x-amzn-sagemaker-custom-attributes")
        if custom is not None:
            out_headers["X-Amzn-SageMaker-Custom-Attributes"] = custom
        self.metrics.overhead_latency.labels(*labels).observe(
            max((time.perf_counter() - started) * 1e6 - model_us, 0.0))
        return Response(upstream.body, status_code=200, headers=out_headers,
                        media_type=upstream.headers.get("content-type", "application/octet-stream"))

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _payload_too_large() -> Response:
    return _error(400, "ValidationError",
                  f"Request payload size exceeds the limit of {MAX_PAYLOAD} bytes "
                  f"({MAX_PAYLOAD // (1024 * 1024)} MB).")
