"""The multi-model container's HTTP API and server (``mainsail serve --multi-model``).

Routes over one ``ModelRegistry`` (``create_multi_model_app``), uvicorn's factory in each worker
process (``app_from_env``), and the server itself (``run_multi_model_server``,
``serve_multi_model``); ``multi_model_from_env`` says whether ``SAGEMAKER_MULTI_MODEL`` asks for
this mode. The API is described in the package's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mainsail.connections import guarded_http_for
from mainsail.errors import BadRequest, MainsailError
from mainsail.log import configure_logging
from mainsail.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mainsail.serve.access_log import AccessLog
from mainsail.serve.api_key import ApiKeyGate
from mainsail.serve.http import error_response, http_error, json_response, make_invocation, read_body, unexpected
from mainsail.serve.multimodel.memory import memory_budget_bytes
from mainsail.serve.multimodel.registry import ModelRegistry
from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)

MULTI_MODEL_ENV = "SAGEMAKER_MULTI_MODEL"
DEFAULT_MODELS_DIR = "/opt/ml/models"
TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"
DEFAULT_PAGE = 100
_TRUE = ("1", "true", "yes", "on")


def multi_model_from_env() -> bool:
    """Whether ``SAGEMAKER_MULTI_MODEL`` asks for multi-model mode."""
    return os.environ.get(MULTI_MODEL_ENV, "").strip().lower() in _TRUE


class MultiModelEndpoints:
    """Route handlers of the multi-model API over one registry."""

    def __init__(self, registry: ModelRegistry, settings: ServeSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = registry.metrics
        self.limit = settings.max_payload_bytes

    async def ping(self, request: Request) -> Response:
        return json_response({"status": "Healthy", "models": len(self.registry.names())})

    async def invocations(self, request: Request) -> Response:
        return error_response(BadRequest(
            "multi-model endpoint: use TargetModel (X-Amzn-SageMaker-Target-Model), or POST "
            "/models/{name}/invoke on the container"))

    async def load(self, request: Request) -> Response:
        try:
            try:
                body = orjson.loads(await read_body(request, 1 << 20))
            except orjson.JSONDecodeError:
                raise BadRequest("the body must be a JSON object {\"model_name\", \"url\"}") from None
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object {\"model_name\", \"url\"}")
            name, url = body.get("model_name"), body.get("url")
            if not isinstance(name, str) or not name or not isinstance(url, str) or not url:
                raise BadRequest("model_name and url are required strings")
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(None, self.registry.load, name, url)
        except MainsailError as exc:
            if exc.status_code >= 500 and exc.status_code != 507:
                logger.error("loading a model failed: %s", exc.message)
            return error_response(exc)
        return json_response({"status": f"Model {model.name} loaded", **model.describe()})

    async def list_models(self, request: Request) -> Response:
        query = request.query_params
        token = query.get("next_page_token") or query.get("nextPageToken") or "0"
        limit_raw = query.get("max_results") or query.get("limit") or str(DEFAULT_PAGE)
        try:
            start, limit = int(token), int(limit_raw)
        except ValueError:
            return error_response(BadRequest("next_page_token and max_results must be integers"))
        limit = max(1, min(limit, 1000))
        models = self.registry.list()
        page = models[start:start + limit]
        following = start + limit if start + limit < len(models) else None
        payload: dict[str, Any] = {"models": [{"modelName": m.name, "modelUrl": m.url} for m in page]}
        if following is not None:
            payload["nextPageToken"] = str(following)
        return json_response(payload)

    async def describe(self, request: Request) -> Response:
        try:
            model = self.registry.peek(request.path_params["name"])
        except MainsailError as exc:
            return error_response(exc)
        return json_response(model.describe())

    async def unload(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.registry.unload, name)
        except MainsailError as exc:
            return error_response(exc)
        return json_response({"status": f"Model {name} unloaded"})

    async def invoke(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        model_seconds: float | None = None
        try:
            model = self.registry.get(name)
        except MainsailError as exc:
            self.metrics.record(name, exc.status_code, None, 0.0)
            return error_response(exc)
        try:
            body = await read_body(request, self.limit)
            invocation = make_invocation(body, request.headers, model.default_accept)
            reply, model_seconds = await model.runtime.invoke(invocation)
            response = Response(reply.body, status_code=reply.status, headers=reply.headers or None,
                                media_type=reply.content_type)
        except MainsailError as exc:
            model_seconds = exc.model_seconds
            if exc.status_code >= 500:
                logger.error("invocation of model %s failed: %s", name, exc.message,
                             exc_info=exc.__cause__ or False)
            response = error_response(exc)
        self.metrics.record(name, response.status_code,
                            None if model_seconds is None else model_seconds * 1e6,
                            (time.perf_counter() - started) * 1e6)
        return response

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def create_multi_model_app(registry: ModelRegistry, settings: ServeSettings) -> Starlette:
    """The multi-model container's ASGI app over ``registry``."""
    endpoints = MultiModelEndpoints(registry, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.get_running_loop().run_in_executor(None, registry.close)

    app = Starlette(
        routes=[
            Route("/ping", endpoints.ping, methods=["GET"]),
            Route("/invocations", endpoints.invocations, methods=["POST"]),
            Route("/models", endpoints.load, methods=["POST"]),
            Route("/models", endpoints.list_models, methods=["GET"]),
            Route("/models/{name}", endpoints.describe, methods=["GET"]),
            Route("/models/{name}", endpoints.unload, methods=["DELETE"]),
            Route("/models/{name}/invoke", endpoints.invoke, methods=["POST"]),
            Route("/metrics", endpoints.metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: unexpected},
        lifespan=lifespan,
    )
    app.add_middleware(AccessLog)
    if settings.api_key:
        app.add_middleware(ApiKeyGate, key=settings.api_key)
    return app


# -- the server ------------------------------------------------------------------------------------

_CONFIG_ENV = "MAINSAIL_MULTI_MODEL_CONFIG"


def app_from_env() -> Starlette:
    """uvicorn's factory in each worker process: the settings travel in ``MAINSAIL_MULTI_MODEL_CONFIG``."""
    config = orjson.loads(os.environ[_CONFIG_ENV])
    settings = ServeSettings(**config["settings"])
    configure_logging(settings.log_level)
    registry = ModelRegistry(settings, Path(config["models_dir"]), int(config["budget_bytes"]))
    return create_multi_model_app(registry, settings)


def run_multi_model_server(settings: ServeSettings, models_dir: str | Path | None = None, *,
                           memory_mb: float | None = None, workers: int = 1) -> int:
    """Serve the multi-model API until SIGTERM/SIGINT; returns the exit code.

    With ``workers`` > 1 uvicorn runs that many processes on the port; each keeps its own LRU.
    """
    import uvicorn

    directory = Path(models_dir or DEFAULT_MODELS_DIR).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    budget = memory_budget_bytes(memory_mb)
    os.environ[_CONFIG_ENV] = orjson.dumps({
        "settings": settings.model_dump(mode="json"), "models_dir": str(directory), "budget_bytes": budget,
    }).decode()
    metrics_dir = None
    if workers > 1:
        metrics_dir = tempfile.mkdtemp(prefix="mainsail-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    logger.info("mainsail serving multi-model %s on http://%s:%d with %d worker(s), %.0f MB budget per worker",
                directory, settings.host, settings.port, workers, budget / 2**20)
    # uvicorn pickles its config for more than one worker, and a protocol made for these settings does
    # not pickle: then its workers read requests without mainsail.connections' rules
    http = guarded_http_for(settings) if workers <= 1 else "httptools"
    try:
        uvicorn.run("mainsail.serve.multimodel.app:app_from_env", factory=True, host=settings.host,
                    port=settings.port, workers=workers if workers > 1 else None, log_config=None,
                    access_log=False, lifespan="on", timeout_keep_alive=75, http=http,
                    timeout_graceful_shutdown=int(settings.timeout) + 5)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def serve_multi_model(settings: ServeSettings, models_dir: str | None, memory_mb: float | None,
                      workers: int | None) -> int:
    """``mainsail serve --multi-model``: one worker unless ``--workers`` or
    ``SAGEMAKER_MODEL_SERVER_WORKERS`` asks for more (each worker has its own LRU)."""
    given = workers is not None or bool(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS"))
    return run_multi_model_server(settings, models_dir, memory_mb=memory_mb,
                                  workers=settings.workers if given else 1)
