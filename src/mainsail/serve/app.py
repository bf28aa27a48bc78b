"""The data plane's ASGI app: the SageMaker container contract for one model.

``create_app`` wires the routes (``/ping``, ``/execution-parameters``, ``/metrics``) inside the
access log (``mainsail.serve.access_log``), behind ``ServingApp``, which answers ``POST /invocations``
itself as plain ASGI; the HTTP plumbing (body limits, error bodies) is in ``mainsail.serve.http``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mainsail.drain import CLOSE
from mainsail.errors import MainsailError
from mainsail.handlers.base import Reply
from mainsail.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mainsail.serve.access_log import AccessLog, AccessLogWriter
from mainsail.serve.api_key import ApiKeyGate
from mainsail.serve.http import (
    JSON_TYPE,
    Disconnected,
    http_error,
    json_response,
    make_invocation,
    receive_body,
    send_response,
    unexpected,
)
from mainsail.serve.metrics import Metrics
from mainsail.serve.runtime import ModelRuntime
from mainsail.serve.streaming import first_chunk, send_stream
from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)


class Endpoints:
    """Route handlers bound to one runtime, its settings and its metrics."""

    def __init__(self, runtime: ModelRuntime, settings: ServeSettings, metrics: Metrics) -> None:
        self.runtime = runtime
        self.settings = settings
        self.metrics = metrics
        self.limit = settings.max_payload_bytes
        # SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, else the handler's own default (the built-in XGBoost
        # algorithm's container answers CSV), else JSON.
        handler_accept: str = getattr(runtime.handler, "default_accept", None) or JSON_TYPE
        self.default_accept = settings.default_accept or handler_accept

    async def ping(self, request: Request) -> Response:
        if self.runtime.ready:
            return json_response({"status": "Healthy"})
        reason = self.runtime.load_error or "the model is still loading"
        return json_response({"error": "ModelNotReady", "message": reason}, 503)

    async def execution_parameters(self, request: Request) -> Response:
        settings = self.settings
        return json_response({
            "MaxConcurrentTransforms": settings.max_concurrent_transforms or settings.workers,
            "BatchStrategy": settings.batch_strategy,
            "MaxPayloadInMB": max(1, int(settings.max_payload_mb)),
        })

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)


class ServingApp:
    """The app a worker serves: ``POST /invocations``, the hot path, answered here as plain ASGI (no
    routing, Request or Response objects, no middleware), everything else through ``app`` (the
    Starlette routes inside ``AccessLog``)."""

    def __init__(self, app: ASGIApp, endpoints: Endpoints, access: AccessLogWriter) -> None:
        self.app = app
        self.endpoints = endpoints
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/invocations" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        endpoints = self.endpoints
        started = time.perf_counter()
        model_seconds: float | None = None
        streamed: Reply | None = None
        # ASGI servers give header names lowercased; the first of repeated headers wins.
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])}
        try:
            body = await receive_body(receive, headers, endpoints.limit)
            invocation = make_invocation(body, headers, endpoints.default_accept)
            reply, model_seconds = await endpoints.runtime.invoke(invocation)
            if reply.chunks is not None:
                streamed = reply
            status, media_type, payload, extra = reply.status, reply.content_type, reply.body, reply.headers
        except Disconnected:
            return
        except MainsailError as exc:
            model_seconds = exc.model_seconds
            if exc.status_code >= 500:
                logger.error("invocation failed: %s", exc.message, exc_info=exc.__cause__ or False)
            status, media_type, payload = exc.status_code, JSON_TYPE, orjson.dumps(exc.to_dict())
            extra = dict(CLOSE) if exc.close_connection else {}
        except Exception as exc:  # a bug of ours: a 500 with the reason, and the worker serves on
            logger.exception("invocation failed")
            status, media_type, extra = 500, JSON_TYPE, {}
            payload = orjson.dumps({"error": "InternalError", "message": f"{type(exc).__name__}: {exc}"})
        if streamed is not None:  # outside the try: a stream aborted mid-way must reach the server
            status = streamed.status
            try:
                status = await self._stream(send, receive, streamed)
            finally:
                self._record(scope, status, model_seconds, started)
            return
        await send_response(send, status, media_type, payload, extra)
        self._record(scope, status, model_seconds, started)

    def _record(self, scope: Scope, status: int, model_seconds: float | None, started: float) -> None:
        """The request's metrics and access-log line."""
        elapsed = time.perf_counter() - started
        self.endpoints.metrics.record(status, None if model_seconds is None else model_seconds * 1e6, elapsed * 1e6)
        self.access.add(scope.get("client"), "POST", "/invocations", status, elapsed * 1e3)

    async def _stream(self, send: Send, receive: Receive, reply: Reply) -> int:
        """Send a streamed reply (``mainsail.serve.streaming``); an error before its first chunk is answered
        as any error. Its status."""
        try:
            first = await first_chunk(reply)
        except MainsailError as exc:
            if exc.status_code >= 500:
                logger.error("invocation failed: %s", exc.message, exc_info=exc.__cause__ or False)
            await send_response(send, exc.status_code, JSON_TYPE, orjson.dumps(exc.to_dict()), {})
            return exc.status_code
        await send_stream(send, receive, reply, first)
        return reply.status


def create_app(runtime: ModelRuntime, settings: ServeSettings, metrics: Metrics | None = None,
               *, load_on_startup: bool = True) -> ServingApp | ApiKeyGate:
    """Build the app. With ``load_on_startup`` the model loads in a thread while /ping says 503."""
    endpoints = Endpoints(runtime, settings, metrics or Metrics())
    runtime.observe_batch = endpoints.metrics.batch_size.observe

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if load_on_startup and not runtime.ready:
            threading.Thread(target=_load_quietly, args=(runtime,), name="mainsail-load",
                             daemon=True).start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, runtime.close)

    app = Starlette(
        routes=[
            Route("/ping", endpoints.ping, methods=["GET"]),
            Route("/invocations", _post_only, methods=["POST"]),
            Route("/execution-parameters", endpoints.execution_parameters, methods=["GET"]),
            Route("/metrics", endpoints.metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected},
        lifespan=lifespan,
    )
    access = AccessLogWriter()
    serving = ServingApp(AccessLog(app, access), endpoints, access)
    return ApiKeyGate(serving, settings.api_key) if settings.api_key else serving


async def _post_only(request: Request) -> Response:  # pragma: no cover - ServingApp answers POST
    raise HTTPException(405)


def _load_quietly(runtime: ModelRuntime) -> None:
    with contextlib.suppress(MainsailError):
        runtime.load()
