"""The runtime API's router: ``POST /endpoints/{name}/invocations`` forwarded to an instance.

Each endpoint's routing table (variants, weights, ready instances, strategies) is cached in memory
and dropped whenever the store commits a change to that endpoint, so a request costs no SQLite read.
A variant is drawn by ``CurrentWeight`` (``X-Amzn-SageMaker-Target-Variant`` overrides), then an
instance at random, or the one with the fewest requests in flight when the variant's
``RoutingConfig`` says ``LEAST_OUTSTANDING_REQUESTS``. Requests in flight per instance are counted so
that the reconciler stops a draining instance only once it is idle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mainsail.aws.identity import ACCOUNT, endpoint_log_group_arn, region_of
from mainsail.backends.loopback import Forwarder, ForwardError, Upstream
from mainsail.hosting.endpoints import ENDPOINT, IN_SERVICE, UPDATING
from mainsail.hosting.store import Record, StateStore
from mainsail.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mainsail.serve.metrics import LATENCY_BUCKETS_US

logger = logging.getLogger(__name__)

MAX_PAYLOAD = 6 * 1024 * 1024
LEAST_OUTSTANDING = "LEAST_OUTSTANDING_REQUESTS"
_SERVING = (IN_SERVICE, UPDATING)  # the old config keeps serving while an update is under way
FORWARDED_HEADERS = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes",
                     "x-amzn-sagemaker-inference-id")


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    least_outstanding: bool
    ports: tuple[int, ...]
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
        ready: dict[str, list[int]] = {}
        for instance in record.get("Instances", []):
            if instance.get("ready", True):
                ready.setdefault(str(instance["variant"]), []).append(int(instance["port"]))
        from mainsail.backends.model_fetch import multi_model_prefix

        specs = record.get("Specs") or {}
        variants = []
        for pv in record.get("ProductionVariants", []):
            spec = specs.get(pv["VariantName"]) or {}
            strategy = (pv.get("RoutingConfig") or {}).get("RoutingStrategy")
            serverless = pv.get("CurrentServerlessConfig")
            variants.append(Variant(name=pv["VariantName"], weight=float(pv.get("CurrentWeight", 1.0)),
                                    least_outstanding=strategy == LEAST_OUTSTANDING,
                                    ports=tuple(ready.get(pv["VariantName"], ())),
                                    max_concurrency=int(serverless.get("MaxConcurrency") or 1)
                                    if serverless else None,
                                    multi_model=multi_model_prefix(str(spec.get("model_data_url", "")),
                                                                   spec.get("environment") or {}) is not None,
                                    idle_to_zero=async_to_zero and bool(record.get("AsyncInferenceConfig"))
                                    and not serverless))
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
        self.model_setup_time = Histogram(
            "ModelSetupTime", "Cold starts of serverless variants: time until an instance answered, in microseconds",
            labels, buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.throttles = Counter("Throttles", "Requests refused over a serverless variant's MaxConcurrency", labels,
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


def async_idle_seconds() -> float | None:
    """``MAINSAIL_ASYNC_IDLE_SECONDS``: after how long an idle async endpoint scales to zero (unset: never)."""
    raw = os.environ.get("MAINSAIL_ASYNC_IDLE_SECONDS", "").strip()
    return float(raw) if raw else None


def runtime_error(status: int, code: str, message: str, **extra: Any) -> Response:
    """A runtime API error as botocore parses it: ``X-Amzn-ErrorType`` + a JSON body with ``message``."""
    return Response(json.dumps({"message": message, **extra}), status_code=status,
                    media_type="application/json", headers={"X-Amzn-ErrorType": code})


def model_error(upstream: Upstream, log_arn: str, source: str = "primary") -> Response:
    """An instance's 4xx/5xx answer as the runtime's ``ModelError`` (424, never a retried 5xx)."""
    kind = "client" if upstream.status < 500 else "server"
    text = upstream.text
    return runtime_error(
        424, "ModelError",
        f'Received {kind} error ({upstream.status}) from {source} with message "{text}". '
        f"See {log_arn} in account {ACCOUNT} for more information.",
        OriginalStatusCode=upstream.status, OriginalMessage=text, LogStreamArn=log_arn,
        ErrorCode=f"{kind.upper()}_ERROR_FROM_MODEL")


class Router:
    """The runtime route, its table cache, in-flight counts, metrics and keep-alive client."""

    def __init__(self, store: StateStore, *, timeout: float = 60.0, rng: random.Random | None = None,
                 cold_start_timeout: float = 120.0) -> None:
        self.store = store
        self.timeout = timeout
        self.cold_start_timeout = cold_start_timeout
        #: seconds after which an idle async endpoint stops its instances (``None``: never), from
        #: MAINSAIL_ASYNC_IDLE_SECONDS: SageMaker's scale-to-zero auto-scaling policy for async endpoints
        self.async_idle = async_idle_seconds()
        #: set by whoever runs the reconciler: wakes it at once (a serverless cold start is waiting)
        self.wake: Callable[[], None] = lambda: None
        self._last_used: dict[tuple[str, str], float] = {}
        self._variant_in_flight: dict[tuple[str, str], int] = {}
        self._notes: dict[int, str] = {}
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

    def last_used(self, endpoint: str, variant: str) -> float | None:
        """When (``time.monotonic()``) a request last came for a variant, ``None`` if never."""
        return self._last_used.get((endpoint, variant))

    def variant_in_flight(self, endpoint: str, variant: str) -> int:
        """Requests in flight for a variant (cold starts included)."""
        return self._variant_in_flight.get((endpoint, variant), 0)

    def note(self, port: int, reason: str) -> None:
        """Why the instance on ``port`` was stopped (e.g. over its memory): told to its requests."""
        self._notes[port] = reason
        while len(self._notes) > 1024:
            self._notes.pop(next(iter(self._notes)))

    async def _table(self, name: str) -> Table | None:
        table = self._tables.get(name)
        if table is not None:
            return table
        generation = self._generation.get(name, 0)
        record = await run_in_threadpool(self.store.get, ENDPOINT, name)
        if record is None:
            return None
        table = Table.of(record, async_to_zero=self.async_idle is not None)
        with self._lock:
            if self._generation.get(name, 0) == generation:  # no write since we read
                self._tables[name] = table
        return table

    def pick(self, table: Table, target: str | None) -> tuple[Variant, int | None] | str:
        """The variant and instance port for a request (``None``: a serverless variant with no
        instance running, to start), or why there is none."""
        if target is not None:
            variants = [v for v in table.variants if v.name == target]
            if not variants:
                return f"The variant {target} is not present in the endpoint."
        else:
            variants = [v for v in table.variants if v.ports or v.scales_to_zero]
        variants = [v for v in variants if v.ports or v.scales_to_zero]
        if not variants:
            return ""
        if len(variants) == 1:
            variant = variants[0]
        else:
            weights = [v.weight for v in variants]
            variant = self.rng.choices(variants, weights=weights if sum(weights) > 0 else None)[0]
        if not variant.ports:
            return variant, None
        if len(variant.ports) == 1:
            return variant, variant.ports[0]
        if variant.least_outstanding:
            fewest = min(self._in_flight.get(p, 0) for p in variant.ports)
            return variant, self.rng.choice([p for p in variant.ports if self._in_flight.get(p, 0) == fewest])
        return variant, self.rng.choice(variant.ports)

    # -- the route --------------------------------------------------------------------------------

    async def invoke(self, request: Request) -> Response:
        started = time.perf_counter()
        name = urllib.parse.unquote(request.path_params["name"])
        table = await self._table(name)
        if table is None:
            return runtime_error(400, "ValidationError", f"Endpoint {name} of account {ACCOUNT} not found.")
        if table.status not in _SERVING:
            return runtime_error(400, "ValidationError",
                          f"Endpoint {name} of account {ACCOUNT} is not in service "
                          f"(status {table.status}).")
        internal = bool(request.scope.get("mainsail.internal"))  # async inference: up to 1 GB
        length = request.headers.get("content-length")
        if not internal and length is not None and length.isdigit() and int(length) > MAX_PAYLOAD:
            return _payload_too_large()
        body = await request.body()
        if len(body) > MAX_PAYLOAD and not internal:
            return _payload_too_large()
        target = request.headers.get("x-amzn-sagemaker-target-variant")
        choice = self.pick(table, target)
        if isinstance(choice, str):
            if choice:
                return runtime_error(400, "ValidationError", choice)
            return runtime_error(503, "ServiceUnavailable",
                          f"Endpoint {name} has no instance ready to serve"
                          + (f" in variant {target}." if target else "."))
        variant, port = choice
        if "x-amzn-sagemaker-target-model" in request.headers:  # multi-model endpoints
            from mainsail.routing.target_model import invoke_target_model

            return await invoke_target_model(self, request, name, variant, port, body, started)
        if variant.multi_model:
            return runtime_error(400, "ValidationError",
                          f"Endpoint {name} is a multi-model endpoint: name the model to use with TargetModel "
                          "(X-Amzn-SageMaker-Target-Model).")
        if not variant.scales_to_zero:
            assert port is not None
            return await self._forward(request, name, variant, port, body, started)
        # serverless, or an async endpoint that scales to zero: track use (the idle timer), and start
        # an instance when there is none
        key = (name, variant.name)
        self._last_used[key] = time.monotonic()
        if variant.max_concurrency is not None and self._variant_in_flight.get(key, 0) >= variant.max_concurrency:
            self.metrics.throttles.labels(*key).inc()
            return runtime_error(429, "ThrottlingException",
                          f"Rate exceeded: endpoint {name} variant {variant.name} already has "
                          f"{variant.max_concurrency} concurrent requests (its MaxConcurrency).")
        self._variant_in_flight[key] = self._variant_in_flight.get(key, 0) + 1
        try:
            if port is None:
                cold = await self._cold_start(name, variant.name)
                if isinstance(cold, Response):
                    return cold
                port = cold
            return await self._forward(request, name, variant, port, body, started)
        finally:
            self._variant_in_flight[key] -= 1
            self._last_used[key] = time.monotonic()

    async def _cold_start(self, name: str, variant: str) -> int | Response:
        """Wait until the reconciler has an instance of a variant scaled to zero ready."""
        began = time.perf_counter()
        deadline = time.monotonic() + self.cold_start_timeout
        logger.info("endpoint %s variant %s: cold start", name, variant)
        while True:
            self.wake()
            table = await self._table(name)
            if table is None or table.status not in _SERVING:
                return runtime_error(424, "ModelError",
                                     f"Endpoint {name} could not start an instance of variant {variant}: "
                                     f"it is {table.status if table else 'gone'}.", OriginalStatusCode=503,
                                     OriginalMessage="cold start failed", LogStreamArn="")
            ports = next((v.ports for v in table.variants if v.name == variant), ())
            if ports:
                setup_us = (time.perf_counter() - began) * 1e6
                self.metrics.model_setup_time.labels(name, variant).observe(setup_us)
                logger.info("endpoint %s variant %s: cold start took %.0f ms", name, variant, setup_us / 1000)
                return self.rng.choice(ports)
            if time.monotonic() > deadline:
                return runtime_error(503, "ServiceUnavailable",
                              f"Endpoint {name} variant {variant}: no instance started within "
                              f"{self.cold_start_timeout:g} s (cold start).")
            await asyncio.sleep(0.02)

    async def _replacement(self, name: str, variant: Variant, dead: int, wait: float = 10.0) -> int | None:
        """Another ready instance of the variant than ``dead``, waiting (bounded) for the reconciler to
        replace it; ``None`` if none comes."""
        with self._lock:
            self._tables.pop(name, None)
        deadline = time.monotonic() + (self.cold_start_timeout if variant.serverless else wait)
        while time.monotonic() < deadline:
            table = await self._table(name)
            if table is None or table.status not in _SERVING:
                return None
            ports = [p for v in table.variants if v.name == variant.name for p in v.ports if p != dead]
            if ports:
                return self.rng.choice(ports)
            self.wake()
            await asyncio.sleep(0.05)
        return None

    async def _forward(self, request: Request, name: str, variant: Variant, port: int, body: bytes,
                       started: float) -> Response:
        labels = (name, variant.name)
        self.metrics.invocations.labels(*labels).inc()
        self.metrics.per_instance.labels(*labels, str(port)).inc()
        headers = [(k, v) for k in FORWARDED_HEADERS if (v := request.headers.get(k)) is not None]
        region = region_of(request.headers.get("authorization"))
        log_arn = endpoint_log_group_arn(region, name)
        if self._client is None:
            self._client = Forwarder(max_idle=256)
        self._in_flight[port] = self._in_flight.get(port, 0) + 1
        upstream_started = time.perf_counter()
        try:
            try:
                upstream = await self._client.post(port, "/invocations", body, headers, timeout=self.timeout)
            except ForwardError as exc:
                if not exc.unsent:
                    raise
                # the instance is gone (crashed, or stopped over its memory) and the request never
                # reached it: send it to another instance, or to the replacement once it answers
                other = await self._replacement(name, variant, port)
                if other is None:
                    raise
                self._in_flight[other] = self._in_flight.get(other, 0) + 1
                try:
                    upstream = await self._client.post(other, "/invocations", body, headers, timeout=self.timeout)
                finally:
                    self._in_flight[other] -= 1
        except ForwardError as exc:
            self.metrics.errors_5xx.labels(*labels).inc()
            why = self._notes.get(port)
            message = f"{why} ({exc})" if why else f"Could not reach the instance of variant {variant.name}: {exc}"
            return runtime_error(424, "ModelError", message, OriginalStatusCode=502, OriginalMessage=why or str(exc),
                          LogStreamArn=log_arn)
        finally:
            self._in_flight[port] -= 1
        model_us = (time.perf_counter() - upstream_started) * 1e6
        self.metrics.model_latency.labels(*labels).observe(model_us)
        if not 200 <= upstream.status < 300:
            (self.metrics.errors_4xx if upstream.status < 500 else self.metrics.errors_5xx).labels(*labels).inc()
            return model_error(upstream, log_arn)
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
    return runtime_error(400, "ValidationError",
                  f"Request payload size exceeds the limit of {MAX_PAYLOAD} bytes "
                  f"({MAX_PAYLOAD // (1024 * 1024)} MB).")
