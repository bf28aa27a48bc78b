"""The loaded models of one multi-model worker: an LRU bounded by a memory budget.

A model's cost is the growth of the process's resident memory while it loads, but never less than
the size of its files (the allocator often reuses memory an evicted model freed, and then RSS does
not grow at all); a load that first imports libraries (the first scikit-learn or PyTorch model) is
costed by its files alone, since the libraries' memory is not the model's and stays when it is
evicted. Loading a model evicts the least recently used ones until the new one fits. Loads are
serialised (so each one's RSS growth is its own); concurrent loads of one name load it once (the
others get 409).

Two models' ``inference.py`` do not collide: each script (and every module its code directory
provided) is moved after its load from ``sys.modules["inference"]`` to a private name
``mainsail_mm_<n>.inference``. Unpickling inside ``model_fn`` sees the right module; pickling objects
of a script's classes later, at request time, cannot find them by ``inference.X`` (a limitation).
"""

from __future__ import annotations

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mainsail.errors import BadRequest, InsufficientMemory, ModelAlreadyLoaded, ModelLoading, ModelNotLoaded
from mainsail.handlers import build_handler
from mainsail.serve.http import JSON_TYPE
from mainsail.serve.model_dir import DEFAULT_ENTRY_POINT, extract_cached, is_archive
from mainsail.serve.multimodel.memory import MultiModelMetrics, files_size, process_rss
from mainsail.serve.requirements import missing_requirements, prepare_requirements
from mainsail.serve.runtime import ModelRuntime
from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")


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
        """The model, marked most recently used; ``ModelLoading`` (429) while it loads,
        ``ModelNotLoaded`` (404) if it is not loaded."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                if name in self._loading:
                    raise ModelLoading(name)
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
        if self.settings.install_requirements:
            overlay = prepare_requirements(requirements, self.settings.home / "requirements")
            # The models of a multi-model endpoint share this process: an overlay goes after the environment,
            # so one model's pin cannot change what another imports. What it would have replaced is said.
            if overlay.replaced:
                logger.warning("%s pins %s; the models of a multi-model endpoint share one process, so the "
                               "installed version is used", requirements,
                               ", ".join(f"{c.name}=={c.version} (installed: {c.installed})" for c in overlay.replaced))
            sys.path.extend(p for p in overlay.paths if p not in sys.path)
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
