"""Multi-model mode of ``mainsail serve``: the SageMaker multi-model container API.

``mainsail serve --multi-model MODELS_DIR`` (or ``SAGEMAKER_MULTI_MODEL=true``, models in
``/opt/ml/models`` by default) starts with no model and answers:

* ``POST /models`` ``{"model_name", "url"}``: load a model from a directory or ``model.tar.gz``
  (a relative ``url`` is taken under MODELS_DIR); 409 when that name is loaded; 507 when the model
  alone is larger than the memory budget.
* ``GET /models`` (``{"models": [{"modelName", "modelUrl"}], "nextPageToken"}``, paginated with
  ``next_page_token`` and ``max_results``), ``GET /models/{name}``, ``DELETE /models/{name}`` (404
  when not loaded).
* ``POST /models/{name}/invoke``: the model's own invocation chain (script or built-in handler, as
  ``mainsail serve`` builds it for one model), 404 when not loaded, 429 ``ModelNotReady`` while a
  load of that name is in progress (the control plane answers the runtime's
  ``ModelNotReadyException``; the load goes on).
* ``GET /ping`` 200 as soon as the server is up; ``POST /invocations`` 400 (name a target model).

Loaded models form an LRU bounded by a memory budget (``--models-memory-mb`` /
``MAINSAIL_MULTI_MODEL_MEMORY_MB``; default half the machine's memory). A model's cost is the growth
of the process's resident memory while it loads, but never less than the size of its files (the
allocator often reuses memory an evicted model freed, and then RSS does not grow at all); a load that
first imports libraries (the first scikit-learn or PyTorch model) is costed by its files alone, since
the libraries' memory is not the model's and stays when it is evicted. Loading a
model evicts the least recently used ones until the new one fits. Loads are serialised (so each one's
RSS growth is its own); concurrent loads of one name load it once (the others get 409).

Two models' ``inference.py`` do not collide: each script (and every module its code directory
provided) is moved after its load from ``sys.modules["inference"]`` to a private name
``mainsail_mm_<n>.inference``. Unpickling inside ``model_fn`` sees the right module; pickling objects
of a script's classes later, at request time, cannot find them by ``inference.X`` (a limitation).

Each worker process holds its own LRU (``--workers N`` multiplies memory, and a model loaded through
one worker is unknown to the others): the default in multi-model mode is one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mainsail.errors import BadRequest, MainsailError, ModelLoadError
from mainsail.serve.app import (
    JSON_TYPE,
    AccessLog,
    _http_error,
    _unexpected,
    error_response,
    make_invocation,
    read_body,
)
from mainsail.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mainsail.serve.metrics import LATENCY_BUCKETS_US
from mainsail.serve.model_dir import DEFAULT_ENTRY_POINT, extract_cached, is_archive
from mainsail.serve.runtime import ModelRuntime
from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)

MULTI_MODEL_ENV = "SAGEMAKER_MULTI_MODEL"
MEMORY_ENV = "MAINSAIL_MULTI_MODEL_MEMORY_MB"
DEFAULT_MODELS_DIR = "/opt/ml/models"
TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"
DEFAULT_PAGE = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")
_TRUE = ("1", "true", "yes", "on")


# -- errors ----------------------------------------------------------------------------------------


class ModelNotLoaded(MainsailError):
    """No model of that name is loaded (404)."""

    status_code = 404
    code = "ModelNotFound"

    def __init__(self, name: str) -> None:
        super().__init__(f"Model {name} is not loaded")


class ModelAlreadyLoaded(MainsailError):
    """A model of that name is already loaded (409)."""

    status_code = 409
    code = "ModelAlreadyLoaded"

    def __init__(self, name: str) -> None:
        super().__init__(f"Model {name} is already loaded")


class ModelNotReady(MainsailError):
    """A model of that name is being loaded and cannot answer yet (429)."""

    status_code = 429
    code = "ModelNotReady"

    def __init__(self, name: str) -> None:
        super().__init__(f"Model {name} is still loading; wait and try the request again")


class InsufficientMemory(MainsailError):
    """The model does not fit in the memory budget even with every other model unloaded (507)."""

    status_code = 507
    code = "InsufficientMemory"


# -- configuration ---------------------------------------------------------------------------------


def multi_model_from_env() -> bool:
    """Whether ``SAGEMAKER_MULTI_MODEL`` asks for multi-model mode."""
    return os.environ.get(MULTI_MODEL_ENV, "").strip().lower() in _TRUE


def memory_budget_bytes(explicit_mb: float | None = None) -> int:
    """The budget: ``explicit_mb``, else ``MAINSAIL_MULTI_MODEL_MEMORY_MB``, else half the RAM."""
    raw: Any = explicit_mb if explicit_mb is not None else os.environ.get(MEMORY_ENV)
    if raw not in (None, ""):
        try:
            value = float(raw)
        except ValueError:
            raise ModelLoadError(f"{MEMORY_ENV}={raw!r} is not a number of megabytes") from None
        if value <= 0:
            raise ModelLoadError(f"the multi-model memory budget must be positive, got {value:g} MB")
        return int(value * 1024 * 1024)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 4 * 1024**3


def process_rss() -> int | None:
    """This process's resident memory in bytes (``None`` without ``/proc``)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def files_size(path: Path) -> int:
    """The bytes of the regular files under ``path``."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


# -- metrics ---------------------------------------------------------------------------------------


class MultiModelMetrics:
    """The data plane's metrics, labelled by ``ModelName``, plus load/unload times and a gauge."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("ModelName",)
        self.invocations = Counter("Invocations", "Requests sent to /models/{name}/invoke", labels,
                                   registry=self.registry)
        self.errors_4xx = Counter("Invocation4XXErrors", "Invocations answered with a 4xx status", labels,
                                  registry=self.registry)
        self.errors_5xx = Counter("Invocation5XXErrors", "Invocations answered with a 5xx status", labels,
                                  registry=self.registry)
        self.model_latency = Histogram("ModelLatency", "Time spent in the model's handler, in microseconds",
                                       labels, buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.overhead_latency = Histogram(
            "OverheadLatency", "Time spent outside the handler, in microseconds", labels,
            buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.loading_time = Histogram("ModelLoadingTime", "Time to load a model, in microseconds", labels,
                                      buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.unloading_time = Histogram("ModelUnloadingTime", "Time to unload a model, in microseconds",
                                        labels, buckets=LATENCY_BUCKETS_US, registry=self.registry)
        self.evictions = Counter("ModelEvictions", "Models unloaded to make room for another", labels,
                                 registry=self.registry)
        self.loaded = Gauge("LoadedModelCount", "Models loaded in this worker", registry=self.registry,
                            multiprocess_mode="livesum")
        self.memory = Gauge("LoadedModelMemoryBytes", "Measured cost of the loaded models",
                            registry=self.registry, multiprocess_mode="livesum")

    def record(self, model: str, status: int, model_us: float | None, total_us: float) -> None:
        self.invocations.labels(model).inc()
        if 400 <= status < 500:
            self.errors_4xx.labels(model).inc()
        elif status >= 500:
            self.errors_5xx.labels(model).inc()
        if model_us is not None:
            self.model_latency.labels(model).observe(model_us)
            self.overhead_latency.labels(model).observe(max(total_us - model_us, 0.0))

    def render(self) -> bytes:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


# -- the registry of loaded models -----------------------------------------------------------------


@dataclass
class LoadedModel:
    """One model in the LRU."""

    name: str
    url: str
    model_dir: Path
    runtime: ModelRuntime
    cost_bytes: int
    load_seconds: float
    default_accept: str
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    modules: list[str] = field(default_factory=list)
    """The private ``sys.modules`` names of its script and code-directory modules."""
    code_dir: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"modelName": self.name, "modelUrl": self.url, "handler": self.runtime.handler.name,
                "memoryBytes": self.cost_bytes, "loadSeconds": round(self.load_seconds, 4),
                "loadedAt": self.loaded_at, "lastUsed": self.last_used}


_aliases = itertools.count(1)


def _module_file_under(module: Any, roots: list[str]) -> bool:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return False
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep) for root in roots)


@contextlib.contextmanager
def _isolated_imports(stem: str | None, roots: list[str], modules: list[str],
                      libraries: list[str]) -> Iterator[None]:
    """Around one load: afterwards, move the modules the model's own files provided (its script
    under ``stem`` among them) to private names, so the next model imports its own. The other
    modules first imported by the load are listed in ``libraries``."""
    before = set(sys.modules)
    saved = sys.modules.pop(stem, None) if stem else None
    try:
        yield
    finally:
        prefix = f"mainsail_mm_{next(_aliases)}"
        for name in sorted(set(sys.modules) - before | ({stem} if stem else set())):
            module = sys.modules.get(name)
            if module is None:
                continue
            if not (name == stem or _module_file_under(module, roots)):
                libraries.append(name)
                continue
            del sys.modules[name]
            alias = f"{prefix}.{name}"
            sys.modules[alias] = module
            modules.append(alias)
        if saved is not None and stem is not None and stem not in sys.modules:
            sys.modules[stem] = saved


class ModelRegistry:
    """The loaded models of one worker: an LRU bounded by ``budget_bytes``. Thread-safe."""

    def __init__(self, settings: ServeSettings, models_dir: Path, budget_bytes: int,
                 metrics: MultiModelMetrics | None = None) -> None:
        self.settings = settings
        self.models_dir = models_dir
        self.budget_bytes = budget_bytes
        self.metrics = metrics or MultiModelMetrics()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loading: dict[str, threading.Event] = {}

    # -- reading ------------------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(m.cost_bytes for m in self._models.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def list(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.name)

    def peek(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._models.get(name)
        if model is None:
            raise ModelNotLoaded(name)
        return model

    def get(self, name: str) -> LoadedModel:
        """The model, marked most recently used; ``ModelNotReady`` (429) while it loads,
        ``ModelNotLoaded`` (404) if it is not loaded."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                if name in self._loading:
                    raise ModelNotReady(name)
                raise ModelNotLoaded(name)
            self._models.move_to_end(name)
            model.last_used = time.time()
            return model

    # -- loading --------------------------------------------------------------------------------------

    def _resolve_url(self, url: str) -> tuple[Path, Path]:
        """The model's source path and the directory to load it from."""
        raw = url.removeprefix("file://")
        if raw.startswith("s3://"):
            raise BadRequest(f"model url {url}: the container reads local paths (the control plane "
                             "downloads s3:// model data first)")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = self.models_dir / path
        path = path.resolve()
        if not path.exists():
            raise BadRequest(f"model url {url}: {path} does not exist")
        if is_archive(path):
            return path, extract_cached(path, self.settings.home / "models")
        if path.is_dir():
            # SageMaker's platform hands the container <models>/<name>/model; a directory holding
            # nothing but one archive is that archive.
            entries = list(path.iterdir())
            if len(entries) == 1 and is_archive(entries[0]):
                return path, extract_cached(entries[0], self.settings.home / "models")
            return path, path
        raise BadRequest(f"model url {url}: {path} is neither a directory nor a model archive")

    def _script(self, model_dir: Path) -> Path | None:
        name = self.settings.entry_point or DEFAULT_ENTRY_POINT
        if not name.endswith(".py"):
            name += ".py"
        script = model_dir / "code" / Path(name).name
        return script.resolve() if script.is_file() else None

    def _requirements(self, script: Path | None) -> None:
        if script is None:
            return
        requirements = script.parent / "requirements.txt"
        if not requirements.is_file():
            return
        from mainsail.serve.requirements import install_requirements, missing_requirements

        if self.settings.install_requirements:
            target = str(install_requirements(requirements, self.settings.home / "requirements"))
            if target not in sys.path:
                sys.path.append(target)
            return
        missing = missing_requirements(requirements)
        if missing:
            logger.warning("%s is not satisfied (not installing, as asked): %s", requirements, "; ".join(missing))

    def load(self, name: str, url: str) -> LoadedModel:
        """Load ``name`` from ``url`` (blocking). 409 when loaded (also for concurrent loads of one
        name: one loads, the others wait and get 409), 507 when it cannot fit, 400/500 otherwise."""
        if not _NAME.match(name):
            raise BadRequest(f"invalid model_name {name!r}: use letters, digits, '.', '_' and '-'")
        while True:
            with self._lock:
                if name in self._models:
                    raise ModelAlreadyLoaded(name)
                event = self._loading.get(name)
                if event is None:
                    event = self._loading[name] = threading.Event()
                    break
            event.wait()
        try:
            return self._load(name, url)
        finally:
            with self._lock:
                self._loading.pop(name, None)
            event.set()

    def _load(self, name: str, url: str) -> LoadedModel:
        from mainsail.handlers import build_handler

        source, model_dir = self._resolve_url(url)
        size = files_size(model_dir)
        if size > self.budget_bytes:
            raise InsufficientMemory(
                f"Model {name} ({size / 2**20:.1f} MB of files) is larger than the memory budget "
                f"({self.budget_bytes / 2**20:.1f} MB)")
        script = self._script(model_dir)
        settings = self.settings
        with self._load_lock:
            self._requirements(script)
            handler = build_handler(model_dir, script, framework=settings.framework, model_name=name,
                                    settings=settings)
            runtime = ModelRuntime.from_settings(handler, settings)
            roots = [os.path.realpath(model_dir)]
            if script is not None:
                roots.append(os.path.realpath(script.parent))
            modules: list[str] = []
            libraries: list[str] = []
            before = process_rss()
            started = time.perf_counter()
            with _isolated_imports(script.stem if script else None, roots, modules, libraries):
                runtime.load()
            seconds = time.perf_counter() - started
            after = process_rss()
        # Memory of libraries the load imported first (sklearn, torch ...) stays after the model is
        # unloaded: such a load is measured by its files, not by the RSS growth it caused.
        grown = after - before if after is not None and before is not None and not libraries else 0
        cost = max(grown, size)
        handler_accept: str = getattr(handler, "default_accept", None) or JSON_TYPE
        model = LoadedModel(name=name, url=url or str(source), model_dir=model_dir, runtime=runtime,
                            cost_bytes=cost, load_seconds=seconds,
                            default_accept=settings.default_accept or handler_accept, modules=modules,
                            code_dir=str(script.parent) if script else None)
        if cost > self.budget_bytes:
            self._drop(model)
            raise InsufficientMemory(
                f"Model {name} uses {cost / 2**20:.1f} MB, more than the memory budget "
                f"({self.budget_bytes / 2**20:.1f} MB)")
        evicted: list[LoadedModel] = []
        with self._lock:
            used = sum(m.cost_bytes for m in self._models.values())
            while self._models and used + cost > self.budget_bytes:
                _, victim = self._models.popitem(last=False)
                used -= victim.cost_bytes
                evicted.append(victim)
            self._models[name] = model
            self._gauges()
        for victim in evicted:
            logger.info("evicted model %s (%.1f MB) to make room for %s (%.1f MB)", victim.name,
                        victim.cost_bytes / 2**20, name, cost / 2**20)
            self.metrics.evictions.labels(victim.name).inc()
            self._drop(victim)
        self.metrics.loading_time.labels(name).observe(seconds * 1e6)
        logger.info("loaded model %s from %s with the %s handler in %.2f s (%.1f MB; %.1f of %.1f MB used)",
                    name, url, handler.name, seconds, cost / 2**20, (used + cost) / 2**20,
                    self.budget_bytes / 2**20)
        return model

    def _gauges(self) -> None:
        self.metrics.loaded.set(len(self._models))
        self.metrics.memory.set(sum(m.cost_bytes for m in self._models.values()))

    def _drop(self, model: LoadedModel) -> None:
        """Forget an unloaded model: its private modules and code dir go; in-flight requests finish
        (they hold the runtime), then the collector frees the model."""
        started = time.perf_counter()
        for alias in model.modules:
            sys.modules.pop(alias, None)
        if model.code_dir is not None:
            with contextlib.suppress(ValueError):
                sys.path.remove(model.code_dir)
        gc.collect()
        self.metrics.unloading_time.labels(model.name).observe((time.perf_counter() - started) * 1e6)

    def unload(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._models.pop(name, None)
            if model is None:
                raise ModelNotLoaded(name)
            self._gauges()
        self._drop(model)
        logger.info("unloaded model %s", name)
        return model

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for model in models:
            model.runtime.close()


# -- the app ---------------------------------------------------------------------------------------


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON_TYPE)


class MultiModelEndpoints:
    """Route handlers of the multi-model API over one registry."""

    def __init__(self, registry: ModelRegistry, settings: ServeSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = registry.metrics
        self.limit = settings.max_payload_bytes

    async def ping(self, request: Request) -> Response:
        return _json({"status": "Healthy", "models": len(self.registry.names())})

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
        return _json({"status": f"Model {model.name} loaded", **model.describe()})

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
        return _json(payload)

    async def describe(self, request: Request) -> Response:
        try:
            model = self.registry.peek(request.path_params["name"])
        except MainsailError as exc:
            return error_response(exc)
        return _json(model.describe())

    async def unload(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.registry.unload, name)
        except MainsailError as exc:
            return error_response(exc)
        return _json({"status": f"Model {name} unloaded"})

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
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.add_middleware(AccessLog)
    return app


# -- the server ------------------------------------------------------------------------------------

_CONFIG_ENV = "MAINSAIL_MULTI_MODEL_CONFIG"


def app_from_env() -> Starlette:
    """uvicorn's factory in each worker process: the settings travel in ``MAINSAIL_MULTI_MODEL_CONFIG``."""
    from mainsail.log import configure_logging

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
    import tempfile

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
    try:
        uvicorn.run("mainsail.serve.multimodel:app_from_env", factory=True, host=settings.host,
                    port=settings.port, workers=workers if workers > 1 else None, log_config=None,
                    access_log=False, lifespan="on", timeout_keep_alive=75,
                    timeout_graceful_shutdown=int(settings.timeout) + 5)
    finally:
        if metrics_dir is not None:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def serve_multi_model(settings: ServeSettings, models_dir: str | None, memory_mb: float | None,
                      workers: int | None) -> int:
    """``mainsail serve --multi-model``: one worker unless ``--workers`` or
    ``SAGEMAKER_MODEL_SERVER_WORKERS`` asks for more (each worker has its own LRU)."""
    given = workers is not None or bool(os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS"))
    return run_multi_model_server(settings, models_dir, memory_mb=memory_mb,
                                  workers=settings.workers if given else 1)
