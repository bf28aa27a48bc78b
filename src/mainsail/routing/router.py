"""The runtime API's router: ``POST /endpoints/{name}/invocations`` forwarded to an instance.

One request: validate (the endpoint exists and serves, the body is within 6 MB) → pick a variant and
an instance (:meth:`mainsail.routing.traffic.Traffic.pick`; a request naming a ``TargetModel`` goes
to :mod:`mainsail.routing.target_model`) → hold its place (:meth:`~mainsail.routing.traffic.Traffic.lease`:
idle clocks, throttling, cold starts of variants scaled to zero) → forward
(:class:`mainsail.routing.forwarding.Exchange`) over the backend's
:class:`~mainsail.backends.base.Transport`, which the router is given and never chooses: a new
backend needs no change here. Each endpoint's routing table is cached in memory
(:class:`mainsail.routing.table.TableCache`); runtime errors are raised and answered in one place
(:func:`mainsail.routing.responses.runtime_api`). ``serve_invocation`` answers the route as plain
ASGI, in front of the control plane's Starlette app (no route matching or middleware per request).
"""

from __future__ import annotations

import logging
import random
import time
import urllib.parse

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mainsail.aws.identity import ACCOUNT, endpoint_log_group_arn, region_of
from mainsail.aws.shapes import HeaderCheck
from mainsail.backends.base import Address, Transport
from mainsail.hosting.store import StateStore
from mainsail.routing.forwarding import Exchange, forwarded
from mainsail.routing.metrics import RouterMetrics
from mainsail.routing.recorder import Recorder
from mainsail.routing.responses import (
    MAX_PAYLOAD,
    RuntimeApiError,
    ServiceUnavailable,
    ValidationError,
    payload_too_large,
    refuse_payload,
    runtime_api,
)
from mainsail.routing.table import TableCache, Variant
from mainsail.routing.target_model import TARGET_MODEL, ModelData, TargetModelRouting
from mainsail.routing.traffic import Traffic

logger = logging.getLogger(__name__)

PREFIX, SUFFIX = "/endpoints/", "/invocations"
#: InvokeEndpoint's headers as botocore's model of the runtime API constrains them
INVOKE_HEADERS = HeaderCheck("sagemaker-runtime", "InvokeEndpoint", error=ValidationError)


def is_invocation(scope: Scope) -> bool:
    """Whether ``scope`` is ``POST /endpoints/{name}/invocations``."""
    path: str = scope["path"]
    return (scope["method"] == "POST" and path.startswith(PREFIX) and path.endswith(SUFFIX)
            and len(path) > len(PREFIX) + len(SUFFIX))


class Router:
    """The runtime route, its table cache, traffic and metrics, over the backend's ``transport``
    (requests to an instance time out after ``timeout`` seconds)."""

    def __init__(self, store: StateStore, transport: Transport, *, timeout: float = 60.0,
                 rng: random.Random | None = None, cold_start_timeout: float = 120.0,
                 async_idle: float | None = None, model_data: ModelData | None = None,
                 recorder: Recorder | None = None) -> None:
        self.store = store
        self.transport = transport
        self.timeout = timeout
        #: seconds after which an idle async endpoint stops its instances (``None``: never): what
        #: SageMaker's scale-to-zero auto-scaling policy for async endpoints does
        self.async_idle = async_idle
        #: where the backend's instances find a target model's data (``Backend.model_data``);
        #: ``None``: this router serves no multi-model endpoint
        self.model_data = model_data
        #: what every request adds to: the CloudWatch datapoints (taken by
        #: :class:`mainsail.gateway.publisher.MetricPublisher`) and ``GET /metrics`` (:attr:`metrics`)
        self.recorder = recorder or Recorder()
        self.metrics = RouterMetrics(self.recorder)
        self.tables = TableCache(store, async_to_zero=self.async_idle is not None)
        #: in-flight counts, idle clocks, cold starts: what the reconciler reads (``traffic=``)
        self.traffic = Traffic(self.tables, self.recorder, rng=rng or random.Random(),
                               cold_start_timeout=cold_start_timeout)
        self._target_models: TargetModelRouting | None = None
        self.route = Route("/endpoints/{name:path}/invocations", runtime_api(self.invoke), methods=["POST"])

    @property
    def target_models(self) -> TargetModelRouting:
        """The multi-model state (made on the first request naming a target model)."""
        if self._target_models is None:
            self._target_models = TargetModelRouting(self.store, self.traffic, self.transport, self.timeout,
                                                     self.model_data)
        return self._target_models

    async def invoke(self, request: Request) -> Response:
        """``InvokeEndpoint``: the instance's answer; runtime errors are raised."""
        started = time.perf_counter()
        name = urllib.parse.unquote(request.path_params["name"])
        variant, address, body = await self.admit(request, name)
        if TARGET_MODEL in request.headers:  # multi-model endpoints
            return await self.target_models.invoke(request, name, variant, address, body, started)
        if variant.multi_model:
            raise ValidationError(f"Endpoint {name} is a multi-model endpoint: name the model to use with "
                                  "TargetModel (X-Amzn-SageMaker-Target-Model).")
        async with self.traffic.lease(name, variant, address) as address:
            return await self.forward(request, name, variant, address, body, started)

    async def admit(self, request: Request, name: str,
                    headers: HeaderCheck = INVOKE_HEADERS) -> tuple[Variant, Address | None, bytes]:
        """A runtime request to endpoint ``name`` checked (it exists and serves, the body is within
        6 MB) and given a variant and an instance (``None``: a variant scaled to zero, started by
        :meth:`Traffic.lease`), with its body; what fails raises the runtime's error."""
        headers.check(request.scope["headers"])  # as the service model constrains them, first
        table = await self.tables.get(name)
        if table is None:
            raise ValidationError(f"Endpoint {name} of account {ACCOUNT} not found.")
        if not table.serving:
            raise ValidationError(f"Endpoint {name} of account {ACCOUNT} is not in service "
                                  f"(status {table.status}).")
        internal = bool(request.scope.get("mainsail.internal"))  # async inference: up to 1 GB
        length = request.headers.get("content-length")
        if not internal and length is not None and length.isdigit() and int(length) > MAX_PAYLOAD:
            raise await refuse_payload(request)
        body = await request.body()
        if len(body) > MAX_PAYLOAD and not internal:
            raise payload_too_large()
        target = request.headers.get("x-amzn-sagemaker-target-variant")
        choice = self.traffic.pick(table, target)
        if choice == "":  # serving, but no instance is ready yet: wait for one, as SageMaker does
            choice = await self.traffic.until_ready(name, target, self.timeout)
        if isinstance(choice, str):
            if choice:
                raise ValidationError(choice)
            raise ServiceUnavailable(f"Endpoint {name} has no instance ready to serve"
                                     + (f" in variant {target}." if target else "."))
        variant, address = choice
        return variant, address, body

    async def forward(self, request: Request, name: str, variant: Variant, address: Address, body: bytes,
                      started: float) -> Response:
        """Send the request to the instance at ``address`` (or its replacement) and answer with its answer."""
        exchange = Exchange(self.traffic, name, variant,
                            endpoint_log_group_arn(region_of(request.headers.get("authorization")), name))
        headers = forwarded(request.headers)
        upstream = await exchange.send(address, lambda a: self.transport.post(
            a, "/invocations", body, headers, timeout=self.timeout))
        return exchange.answer(upstream, started)

    async def serve_invocation(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /endpoints/{name}/invocations`` (``is_invocation``) answered as plain ASGI: what the
        route answers, without Starlette's route matching and middleware."""
        scope["path_params"] = {"name": scope["path"][len(PREFIX):-len(SUFFIX)]}
        try:
            response = await self.route.endpoint(Request(scope, receive))
        except Exception as exc:  # a bug of ours: the runtime's 500, and the router serves on
            logger.exception("InvokeEndpoint failed")
            response = RuntimeApiError(500, "InternalFailure", f"{type(exc).__name__}: {exc}").response()
        await response(scope, receive, send)

    async def metrics_endpoint(self, request: Request) -> Response:
        return self.metrics.response()

    async def aclose(self) -> None:
        """Close the transport's pooled connections (they belong to this app's event loop)."""
        await self.transport.aclose()
