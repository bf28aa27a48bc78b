"""The data plane's ASGI app: the SageMaker container contract for one model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mainsail.errors import BadRequest, MainsailError, PayloadTooLarge
from mainsail.handlers.base import Invocation
from mainsail.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mainsail.serve.metrics import Metrics
from mainsail.serve.runtime import ModelRuntime
from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("mainsail.access")

REQUEST_ID_HEADERS = ("x-amzn-sagemaker-inference-id", "x-amzn-requestid", "x-request-id")
JSON_TYPE = "application/json"


def error_response(exc: MainsailError) -> Response:
    """The one place an error becomes a response: ``{"error": code, "message": text}``."""
    return Response(orjson.dumps(exc.to_dict()), status_code=exc.status_code, media_type=JSON_TYPE)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON_TYPE)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(limit)
        except ValueError:
            raise BadRequest(f"invalid Content-Length header {declared!r}") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def make_invocation(body: bytes, headers: Mapping[str, str], default_accept: str) -> Invocation:
    """The handler's view of a request (``headers`` with lowercased names): a missing or ``*/*``
    Accept resolved to ``default_accept``, the request id from SageMaker's headers."""
    accept = headers.get("accept") or default_accept
    if accept.strip() == "*/*":
        accept = default_accept
    request_id = next((headers[h] for h in REQUEST_ID_HEADERS if h in headers), None)
    # The toolkit accepts any header matching ^[Cc]ontent-?[Tt]ype.
    content_type = headers.get("content-type") or headers.get("contenttype")
    return Invocation(body, content_type, accept, headers, request_id)


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
            return _json({"status": "Healthy"})
        reason = self.runtime.load_error or "the model is still loading"
        return _json({"error": "ModelNotReady", "message": reason}, 503)

    async def execution_parameters(self, request: Request) -> Response:
        settings = self.settings
        return _json({
            "MaxConcurrentTransforms": settings.max_concurrent_transforms or settings.workers,
            "BatchStrategy": settings.batch_strategy,
            "MaxPayloadInMB": max(1, int(settings.max_payload_mb)),
        })

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


async def receive_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """A request body read from ASGI ``receive``, refused with 413 as soon as it exceeds ``limit``."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"invalid Content-Length header {declared!r}") from None
        if size > limit:
            raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_response(send: Send, status: int, media_type: str, body: bytes,
                        headers: Mapping[str, str] | None = None) -> None:
    """One complete response, with the headers Starlette's ``Response`` would give it."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()] if headers else []
    names = {name for name, _ in raw}
    if b"content-length" not in names:
        raw.append((b"content-length", str(len(body)).encode()))
    if b"content-type" not in names:
        if media_type.startswith("text/") and "charset=" not in media_type.lower():
            media_type += "; charset=utf-8"
        raw.append((b"content-type", media_type.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Invocations:
    """``POST /invocations``, the hot path, as plain ASGI: no routing, Request or Response objects
    (the other routes, and other methods on this one, go through Starlette)."""

    def __init__(self, app: ASGIApp, endpoints: Endpoints) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/invocations" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        endpoints = self.endpoints
        started = time.perf_counter()
        model_seconds: float | None = None
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        try:
            body = await receive_body(receive, headers.get("content-length"), endpoints.limit)
            invocation = make_invocation(body, headers, endpoints.default_accept)
            reply, model_seconds = await endpoints.runtime.invoke(invocation)
            status, media_type, payload, extra = reply.status, reply.content_type, reply.body, reply.headers
        except _Disconnected:
            return
        except MainsailError as exc:
            model_seconds = exc.model_seconds
            if exc.status_code >= 500:
                logger.error("invocation failed: %s", exc.message, exc_info=exc.__cause__ or False)
            status, media_type, payload, extra = exc.status_code, JSON_TYPE, orjson.dumps(exc.to_dict()), {}
        await send_response(send, status, media_type, payload, extra)
        endpoints.metrics.record(status, None if model_seconds is None else model_seconds * 1e6,
                                 (time.perf_counter() - started) * 1e6)


class AccessLog:
    """One log line per request: method, path, status, latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if access_logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_logger.info(
                    '%s "%s %s" %d %.3fms', f"{client[0]}:{client[1]}" if client else "-",
                    scope["method"], scope["path"], status, (time.perf_counter() - started) * 1e3,
                )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    return _json({"error": code, "message": f"{request.method} {request.url.path}: {exc.detail}"},
                 exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return _json({"error": "InternalError", "message": f"{type(exc).__name__}: {exc}"}, 500)


def create_app(runtime: ModelRuntime, settings: ServeSettings, metrics: Metrics | None = None,
               *, load_on_startup: bool = True) -> Starlette:
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
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.add_middleware(Invocations, endpoints=endpoints)
    app.add_middleware(AccessLog)
    return app


async def _post_only(request: Request) -> Response:  # pragma: no cover - Invocations answers POST
    raise HTTPException(405)


def _load_quietly(runtime: ModelRuntime) -> None:
    with contextlib.suppress(MainsailError):
        runtime.load()
