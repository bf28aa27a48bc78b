"""``mainsail up``'s one port: the SageMaker API (AWS JSON 1.1 on ``POST /``, by ``X-Amz-Target``), CloudWatch
Logs, STS, the runtime API, async inference, S3 and ``/metrics``, assembled into one ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mainsail.aws import sts
from mainsail.aws.auth.credentials import KeyRing, load_credentials
from mainsail.aws.cloudwatch import wire as cloudwatch_wire
from mainsail.aws.cloudwatch.actions import AlarmActions
from mainsail.aws.cloudwatch.api import is_json_target as is_cloudwatch_target
from mainsail.aws.cloudwatch.plane import CloudWatchPlane
from mainsail.aws.cloudwatch.store import MetricStore
from mainsail.aws.errors import (
    ControlError,
    UnknownOperationException,
)
from mainsail.aws.identity import region_of
from mainsail.aws.logs import api as logs
from mainsail.aws.protocol import json_body, respond
from mainsail.aws.s3 import routes as s3
from mainsail.aws.s3 import store as s3store
from mainsail.aws.shapes import InputCheck, service_model
from mainsail.backends.local import LocalBackend
from mainsail.gateway.auth import IDENTITY, SignedRequests
from mainsail.gateway.publisher import sagemaker_publisher
from mainsail.hosting import api as hosting_api
from mainsail.hosting import endpoints
from mainsail.hosting import resources as hosting_resources
from mainsail.hosting.calls import Call, Operation
from mainsail.hosting.store import StateStore
from mainsail.jobs.async_inference import ASYNC_HEADERS, AsyncInference
from mainsail.jobs.transform import api as transform
from mainsail.routing.response_stream import STREAM_HEADERS, ResponseStreams, is_response_stream
from mainsail.routing.router import INVOKE_HEADERS, Router, is_invocation
from mainsail.scaling.api import ScalingApi, is_scaling_target
from mainsail.scaling.scaler import Scaler
from mainsail.settings import ControlSettings

logger = logging.getLogger(__name__)

TARGET_PREFIX = "SageMaker."

OPERATIONS: dict[str, Operation] = {**hosting_api.OPERATIONS, **transform.OPERATIONS}
#: every SageMaker input checked against botocore's model of the API before its operation runs
SAGEMAKER_INPUTS = InputCheck("sagemaker", exempt={**hosting_resources.EXTENSIONS, **transform.EXTENSIONS})


def _load_runtime_checks() -> None:
    for check in (INVOKE_HEADERS, STREAM_HEADERS, ASYNC_HEADERS):
        check.load()


#: the botocore service models the control plane checks requests against, loaded at start
PRELOADED_MODELS = ("sagemaker", "cloudwatch", "application-autoscaling", "logs")


def preload_models(freeze: bool) -> None:
    """Load :data:`PRELOADED_MODELS`; with ``freeze`` (the ``mainsail up`` process: the one owner of its heap),
    then move every object alive (start-up's: imports, service models, about 80,000 of them) out of the garbage
    collector's reach (``gc.freeze``). A full collection walked them all: 60 ms with the event loop stopped, a
    few times a minute under load, every request in flight waiting for it (the soak's p99,
    docs/reliability.md). Frozen, it takes well under a millisecond. Objects made later are collected as ever."""
    for name in PRELOADED_MODELS:
        service_model(name)
    if freeze:
        gc.collect()
        gc.freeze()


def _checked(operation: Operation, name: str, call: Call) -> dict[str, Any]:
    SAGEMAKER_INPUTS.check(name, call.body)
    return operation(call)


class ControlPlaneApp:
    """The control plane's ASGI app: InvokeEndpoint, the hot path, straight to the router
    (``Router.serve_invocation``); everything else, and what S3 claims first, through ``app``."""

    def __init__(self, app: Starlette, router: Router) -> None:
        self.app = app
        self.router = router
        self.streams = ResponseStreams(router)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_invocation(scope) and not s3.claims_before_control(scope):
            await self.router.serve_invocation(scope, receive, send)
        elif is_response_stream(scope) and not s3.claims_before_control(scope):
            await self.streams.serve(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_control_app(store: StateStore, router: Router | None = None, *, settings: ControlSettings | None = None,
                       home: Path | None = None, s3_root: Path | None = None,
                       keys: KeyRing | None = None, alarm_actions: AlarmActions | None = None,
                       freeze_start_up: bool = False) -> ASGIApp:
    """The control-plane ASGI app: SageMaker JSON 1.1 operations over ``store``, the runtime API
    (``router``; by default one over ``store`` reaching instances as the local backend does) and
    ``/metrics``. ``settings`` (read from the environment when not given) and ``home`` (default:
    the settings') configure what the app itself runs: logs, async inference, S3, DescribeEndpoint.
    With access ``keys`` (by default those of ``settings.credentials``), every request must be signed
    by one of them and allowed by its policy (:class:`~mainsail.gateway.auth.SignedRequests`).
    CloudWatch (metrics in ``home/metrics.db``, alarms beside them) answers on the same port; its alarms'
    actions reach the callbacks registered on ``alarm_actions``. ``freeze_start_up``: the app owns its process
    (``mainsail up``), so start-up's objects are frozen out of the garbage collector's walks once the service
    models are in (:func:`preload_models`)."""
    if settings is None:
        settings = ControlSettings()  # the composition root: the one place the environment is read
    if keys is None and settings.credentials is not None:
        keys = load_credentials(settings.credentials)
    home = home or settings.home
    metric_store = MetricStore(home / "metrics.db", retention_s=settings.metrics_retention_days * 86400)
    cloudwatch = CloudWatchPlane.create(metric_store, time_scale=settings.metrics_time_scale, actions=alarm_actions)
    scaler = Scaler(store, cloudwatch.service.alarms, cloudwatch.actions, cloudwatch.service.scale)
    scaling_api = ScalingApi(scaler)
    if router is None:
        backend = LocalBackend(home, max_model_bytes=settings.model_data_max_bytes, s3=settings.s3)
        router = Router(store, backend.transport(), async_idle=settings.async_idle_seconds,
                        model_data=backend.model_data)
    logs_api = logs.LogsApi(home)
    async_api = AsyncInference(store, router, home, s3=settings.s3)
    # the one-minute datapoints SageMaker publishes (the same numbers as /metrics), into metric_store
    publisher = sagemaker_publisher(router.recorder, metric_store, store, settings.metrics_time_scale)
    settle_seconds = settings.describe_settle_seconds

    async def dispatch(request: Request) -> Response:
        request_id = str(uuid.uuid4())
        target = request.headers.get("x-amz-target")
        try:
            op_name = target[len(TARGET_PREFIX):] if target and target.startswith(
                TARGET_PREFIX) else None
            if target is None and sts.is_query_call(request.headers.get("content-type")):
                body = await request.body()  # the query protocol: CloudWatch's API version, or STS
                params = cloudwatch_wire.query_params(body)
                if cloudwatch_wire.is_query_call(params):
                    return await cloudwatch.api.serve_query(params, request)
                return sts.handle(body, request_id, request.scope.get(IDENTITY))
            if is_scaling_target(target):  # Application Auto Scaling, AWS JSON 1.1
                result = await run_in_threadpool(scaling_api.call, str(target), json_body(await request.body()),
                                                 region_of(request.headers.get("authorization")))
                return respond(200, result, request_id)
            if is_cloudwatch_target(target):  # CloudWatch, AWS JSON 1.0
                return await cloudwatch.api.serve_json(request)
            if target and target.startswith(logs.TARGET_PREFIX):  # CloudWatch Logs, over the log files
                result = await run_in_threadpool(logs_api.call, target, await request.body(),
                                                 region_of(request.headers.get("authorization")))
                return respond(200, result, request_id)
            operation = OPERATIONS.get(op_name or "")
            if operation is None:
                raise UnknownOperationException(target)
            call = Call(store, region_of(request.headers.get("authorization")), json_body(await request.body()))
            # SQLite calls (and the first load of the service model) block: keep them off the event loop
            result = await run_in_threadpool(_checked, operation, str(op_name), call)
            if operation is endpoints.describe_endpoint:
                result = await hosting_api.settle(call, result, settle_seconds)
            return respond(200, result, request_id)
        except ControlError as exc:
            return respond(exc.status_code, exc.to_aws(), request_id)
        except ClientDisconnect:  # gone before its body was in: nobody to answer, nothing went wrong here
            return Response(status_code=400)
        except Exception as exc:
            logger.exception("control operation %s failed", target)
            return respond(500, {"__type": "InternalFailure",
                                  "Message": f"{type(exc).__name__}: {exc}"}, request_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # the service models the requests are checked against: the runtime API's (small) before the first
        # request, the others (SageMaker's takes half a second) in the background, then frozen with the rest
        # of start-up's objects when this app owns its process (``freeze_start_up``: preload_models)
        await run_in_threadpool(_load_runtime_checks)
        preload = asyncio.get_running_loop().run_in_executor(None, preload_models, freeze_start_up)
        async_api.start()
        publisher.start()
        cloudwatch.start()
        scaler.start()
        yield
        await scaler.stop()
        await cloudwatch.stop()
        await async_api.stop()
        await publisher.stop()  # the period under way, as far as it went
        await router.aclose()
        metric_store.close()
        await preload

    # the runtime API (no X-Amz-Target) lives on its own REST paths
    # S3 (path style) answers what the control plane does not, and what is signed for s3
    s3_first, s3_last = s3.s3_routes(s3store.S3Store(s3_root or home / "s3"))
    app = Starlette(routes=[s3_first, Route("/", dispatch, methods=["POST"]), cloudwatch.api.route, router.route,
                            async_api.route,
                            Route("/metrics", router.metrics_endpoint, methods=["GET"]), s3_last],
                    lifespan=lifespan)
    control = ControlPlaneApp(app, router)
    return SignedRequests(control, keys) if keys is not None else control
