"""Multi-model endpoints in the router: ``InvokeEndpoint`` with ``X-Amzn-SageMaker-Target-Model``.

A model whose container has ``Mode: MultiModel`` runs ``mainsail serve --multi-model`` instances
with no model loaded (:mod:`mainsail.backends.local`); its ``ModelDataUrl`` (or
``ModelDataSource`` S3Prefix: ``Gzip`` for ``model.tar.gz`` targets, ``None`` for folders) is a
prefix (``s3://``, ``file://`` or a local directory), marked in the endpoint's specs by
:func:`mainsail.backends.model_fetch.container_model_source`. For a request
naming a target model the router picks a variant and an instance as usual, then
:meth:`TargetModelRouting.invoke`:

1. sends ``POST /models/{model}/invoke`` to the instance (``model`` is the TargetModel, or a
   sanitised form of it with a hash when it has characters a path segment should not);
2. when the instance answers 404 ``ModelNotFound`` (never loaded there, or evicted by its LRU), it
   starts a load of that model on that instance, in the background: resolve
   ``<prefix>/<TargetModel>`` to a local directory (downloaded and extracted once per content,
   :meth:`Backend.model_data <mainsail.backends.base.Backend.model_data>`), then ``POST /models`` (a 409 from a
   concurrent load counts as loaded). The request waits for the load up to the endpoint's load wait
   (``MAINSAIL_MULTI_MODEL_LOAD_WAIT_SECONDS`` in the container's Environment, default
   :data:`DEFAULT_LOAD_WAIT_S`), then invokes again;
3. answers the runtime's ``ModelNotReadyException`` (429) when the load outlasts that wait (the
   load goes on, and a later request finds the model loaded), to every other request for that model
   on that instance while the load runs, and when the instance itself says ``ModelNotReady`` (a
   load it is running). botocore retries 429s as throttling, as it does against SageMaker, whose
   first invocation of a model also blocks while it loads.

No per-instance bookkeeping is needed beyond the loads in flight: the instance is the truth about
what it holds. A missing target object is the runtime's ``ValidationError`` (400); a TargetModel on
a single-model endpoint is the ``ValidationError`` SageMaker answers. Metrics:
``TargetModelInvocations`` (labelled ``TargetModel``), ``ModelCacheHit`` / ``ModelCacheMiss``,
``ModelLoadingWaitTime`` (what a request waited for download plus load) and ``ModelNotReady``
(requests answered ``ModelNotReadyException``), in the router's registry next to its per-endpoint
metrics (:class:`mainsail.routing.recorder.VariantSeries`). The request is forwarded as the
router forwards any (:class:`mainsail.routing.forwarding.Exchange`, over the backend's
:class:`~mainsail.backends.base.Transport`), counted in flight by
:meth:`mainsail.routing.traffic.Traffic.busy`; runtime errors are raised
(:mod:`mainsail.routing.responses`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from mainsail.aws.identity import endpoint_log_group_arn, region_of
from mainsail.backends.base import Address, ForwardError, Headers, ModelSourceError, Transport, Upstream
from mainsail.backends.model_sources import multi_model_prefix, multi_model_target
from mainsail.hosting.endpoints import ENDPOINT
from mainsail.hosting.store import StateStore
from mainsail.routing.forwarding import FORWARDED_HEADERS, Exchange, forwarded
from mainsail.routing.responses import ModelError, RuntimeApiError, TargetModelNotReady, ValidationError, model_error
from mainsail.routing.table import Variant
from mainsail.routing.traffic import Traffic

logger = logging.getLogger(__name__)

TARGET_MODEL = "x-amzn-sagemaker-target-model"
MAX_TARGET_MODEL = 1024
LOAD_ATTEMPTS = 3
DEFAULT_LOAD_WAIT_S = 60.0  # SageMaker's invocation timeout
LOAD_WAIT_ENV = "MAINSAIL_MULTI_MODEL_LOAD_WAIT_SECONDS"
_FORWARDED = (*FORWARDED_HEADERS, TARGET_MODEL)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def model_name(target: str) -> str:
    """The container's ``model_name`` for a TargetModel: itself when it is a safe path segment,
    else its safe characters and a hash (``model_name`` is opaque to the container, as on SageMaker)."""
    if _SAFE_NAME.match(target):
        return target
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", target).strip("._-")[:100]
    return f"{cleaned or 'model'}-{digest}"


def target_url(prefix: str, target: str) -> str:
    """``<prefix>/<TargetModel>`` for an ``s3://``/``file://`` prefix or a local directory (the
    folder ``<prefix>/<TargetModel>/`` for an uncompressed ``ModelDataSource`` prefix)."""
    return multi_model_target(prefix, target)


def download_failed(url: str, reason: str) -> str:
    """The runtime's ``ValidationError`` text for a target model that cannot be fetched."""
    if url.startswith("s3://"):
        bucket, _, key = url[len("s3://"):].partition("/")
        where = f"bucket: {bucket}, key: {key}"
    else:
        where = f"path: {url}"
    return (f"Failed to download model data({where}). Please ensure that there is an object located at "
            f"the URL and that the role passed to CreateModel has permissions to download the model. "
            f"({reason})")


def not_ready(endpoint: str, target: str) -> TargetModelNotReady:
    """The runtime's ``ModelNotReadyException`` (429) for a target model that is still loading."""
    return TargetModelNotReady(f"Model {target} is not ready: the multi-model endpoint {endpoint} is still "
                               "downloading or loading the target model. Wait and try your request again.")


def load_wait(environment: dict[str, Any]) -> float:
    """How long a request waits for its target model's load: ``MAINSAIL_MULTI_MODEL_LOAD_WAIT_SECONDS``
    from the container's Environment when it is a non-negative number, else the default."""
    raw = environment.get(LOAD_WAIT_ENV)
    try:
        value = float(raw) if raw not in (None, "") else DEFAULT_LOAD_WAIT_S
    except (TypeError, ValueError):
        return DEFAULT_LOAD_WAIT_S
    return value if value >= 0 else DEFAULT_LOAD_WAIT_S


#: where a backend's instances find model data at a URL (``Backend.model_data``)
ModelData = Callable[[str], str]


Load = asyncio.Task[RuntimeApiError | None]


class TargetModelRouting:
    """A router's multi-model state: the endpoints' multi-model prefixes and load waits (cached until
    the endpoint changes) and the loads in flight. Instances are reached over
    ``transport``, each request within ``timeout`` seconds; a target model's data is placed where they
    find it by ``model_data`` (the backend's; ``None``: no multi-model endpoint can be served)."""

    def __init__(self, store: StateStore, traffic: Traffic, transport: Transport, timeout: float,
                 model_data: ModelData | None = None) -> None:
        self.store = store
        self.traffic = traffic
        self.transport = transport
        self.timeout = timeout
        self.model_data = model_data
        self._prefixes: dict[str, dict[str, str | None]] = {}
        self._waits: dict[str, dict[str, float]] = {}
        self.loads: dict[tuple[Address, str], Load] = {}
        """The loads in flight, by (instance address, container model name)."""
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()
        store.subscribe(self._changed)

    def _changed(self, kind: str, name: str) -> None:
        if kind == ENDPOINT:
            with self._lock:
                self._generation[name] = self._generation.get(name, 0) + 1
                self._prefixes.pop(name, None)
                self._waits.pop(name, None)

    async def prefixes(self, endpoint: str) -> dict[str, str | None]:
        """Variant -> multi-model prefix (``None``: a single-model variant) of an endpoint."""
        cached = self._prefixes.get(endpoint)
        if cached is not None:
            return cached
        generation = self._generation.get(endpoint, 0)
        record = await run_in_threadpool(self.store.get, ENDPOINT, endpoint)
        specs: dict[str, Any] = (record or {}).get("Specs") or {}
        out = {variant: multi_model_prefix(str(spec.get("model_data_url", "")), spec.get("environment") or {})
               for variant, spec in specs.items()}
        waits = {variant: load_wait(spec.get("environment") or {}) for variant, spec in specs.items()}
        with self._lock:
            if self._generation.get(endpoint, 0) == generation:
                self._prefixes[endpoint] = out
                self._waits[endpoint] = waits
        return out

    def load_wait(self, endpoint: str, variant: str) -> float:
        """The variant's load wait (read with its prefix by :meth:`prefixes`)."""
        return self._waits.get(endpoint, {}).get(variant, DEFAULT_LOAD_WAIT_S)

    def start_load(self, key: tuple[Address, str], load: Coroutine[Any, Any, RuntimeApiError | None]) -> Load:
        """Run the coroutine ``load`` as the load of ``key`` (forgotten when it ends, whoever waits)."""
        task: Load = asyncio.ensure_future(load)
        self.loads[key] = task

        def done(finished: Load) -> None:
            if self.loads.get(key) is finished:
                del self.loads[key]
            if not finished.cancelled() and finished.exception() is not None:
                logger.warning("loading target model %s on the instance at %s failed: %s",
                               key[1], key[0], finished.exception())

        task.add_done_callback(done)
        return task

    async def invoke(self, request: Request, name: str, variant: Variant, address: Address | None, body: bytes,
                     started: float) -> Response:
        """Answer an ``InvokeEndpoint`` that names a target model (see the module docstring); runtime
        errors are raised."""
        target = request.headers.get(TARGET_MODEL, "")
        prefix = (await self.prefixes(name)).get(variant.name)
        if prefix is None:
            raise ValidationError(
                f"Endpoint {name} is not a multi-model endpoint and does not support target model header.")
        if not target.strip() or len(target) > MAX_TARGET_MODEL or not target.isprintable():
            raise ValidationError(
                "1 validation error detected: Value at 'targetModel' failed to satisfy constraint: "
                f"Member must have length less than or equal to {MAX_TARGET_MODEL} and match "
                "the pattern \\A\\S[\\p{Print}]*\\z")
        if address is None:
            raise ValidationError(f"Endpoint {name} variant {variant.name} is serverless: multi-model endpoints "
                                  "need instances.")
        exchange = Exchange(self.traffic, name, variant,
                            endpoint_log_group_arn(region_of(request.headers.get("authorization")), name))
        exchange.count(address)
        targets = exchange.series.target_invocations
        targets[target] = targets.get(target, 0) + 1
        headers = forwarded(request.headers, _FORWARDED)
        with self.traffic.busy(address):
            try:
                upstream, model_us = await self._invoke(exchange, address, prefix, target, body, headers)
            except ForwardError as exc:
                raise exchange.unreachable(exc) from exc
        exchange.observe(model_us)
        return exchange.answer(upstream, started, "model")

    async def _invoke(self, exchange: Exchange, address: Address, prefix: str, target: str, body: bytes,
                      headers: Headers) -> tuple[Upstream, float]:
        """Invoke the target model on the instance, loading it first when the instance has not got it;
        the instance's answer and its time in microseconds."""
        name, variant = exchange.endpoint, exchange.variant.name
        series = exchange.series
        model = model_name(target)
        path = f"/models/{urllib.parse.quote(model, safe='')}/invoke"
        upstream_started = time.perf_counter()
        upstream = await self.post(address, path, body, headers)
        missed = False
        for _ in range(LOAD_ATTEMPTS):
            code = upstream_error(upstream)
            if code == "ModelNotReady":  # a load the instance runs
                raise self._refused(exchange, target)
            if code != "ModelNotFound":
                break
            missed = True
            key = (address, model)
            if key in self.loads:  # another request is loading it: SageMaker's answer, at once
                raise self._refused(exchange, target)
            load_started = time.perf_counter()
            task = self.start_load(key, self._load(address, prefix, target, model, exchange.log_arn))
            try:
                failure = await asyncio.wait_for(asyncio.shield(task), self.load_wait(name, variant))
            except TimeoutError:
                failure = not_ready(name, target)
                series.not_ready += 1
            series.loading_wait.add((time.perf_counter() - load_started) * 1e6)
            if failure is not None:
                exchange.failed(failure.status, model=isinstance(failure, ModelError))  # a load the model failed
                raise failure
            upstream_started = time.perf_counter()
            upstream = await self.post(address, path, body, headers)
        if missed:
            series.cache_misses += 1
        else:
            series.cache_hits += 1
        return upstream, (time.perf_counter() - upstream_started) * 1e6

    def _refused(self, exchange: Exchange, target: str) -> TargetModelNotReady:
        """``ModelNotReadyException`` for a model loading now, counted."""
        exchange.series.not_ready += 1
        exchange.failed(429, model=False)
        return not_ready(exchange.endpoint, target)

    async def post(self, address: Address, path: str, body: bytes, headers: Headers) -> Upstream:
        """``POST`` to the instance over the transport, within :attr:`timeout`."""
        return await self.transport.post(address, path, body, headers, timeout=self.timeout)

    async def _load(self, address: Address, prefix: str, target: str, model: str,
                    log_arn: str) -> RuntimeApiError | None:
        """Fetch ``<prefix>/<target>`` and load it on the instance; the runtime error, or ``None``."""
        url = target_url(prefix, target)
        if self.model_data is None:
            return ValidationError(f"Could not load target model {target}: this control plane's backend "
                                   "places no model data.")
        try:
            local = await run_in_threadpool(self.model_data, url)
        except ModelSourceError as exc:
            reason = str(exc)
            if "no such" in reason or "does not exist" in reason or "no objects under" in reason:
                return ValidationError(download_failed(url, reason))
            return ValidationError(reason)
        payload = json.dumps({"model_name": model, "url": str(local)}).encode()
        upstream = await self.post(address, "/models", payload, [("content-type", "application/json")])
        if upstream.status in (200, 409):  # 409: a concurrent request loaded it first
            logger.info("loaded target model %s on the instance at %s", target, address)
            return None
        return model_error(upstream, log_arn, "model")


def upstream_error(upstream: Upstream) -> str | None:
    """The multi-model container's error code of a 404 or 429 answer (``ModelNotFound``,
    ``ModelNotReady``), else ``None``."""
    if upstream.status not in (404, 429):
        return None
    try:
        code = json.loads(upstream.body).get("error")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None
