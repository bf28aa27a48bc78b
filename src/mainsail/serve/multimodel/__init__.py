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
  ``mainsail serve`` builds it for one model), 404 when not loaded, 429 ``ModelNotReady``
  (``ModelLoading``) while a load of that name is in progress (the control plane answers the runtime's
  ``ModelNotReadyException``; the load goes on).
* ``GET /ping`` 200 as soon as the server is up; ``POST /invocations`` 400 (name a target model).

Loaded models form an LRU bounded by a memory budget (``--models-memory-mb`` /
``MAINSAIL_MULTI_MODEL_MEMORY_MB``; default half the machine's memory); how a model's cost is
measured, and how two models' ``inference.py`` are kept apart, is in ``registry``.

Modules: ``registry`` (the LRU of loaded models, isolated imports), ``memory`` (budget, RSS, files
size, metrics), ``app`` (routes, uvicorn factory, server). This package re-exports their public names.

Each worker process holds its own LRU (``--workers N`` multiplies memory, and a model loaded through
one worker is unknown to the others): the default in multi-model mode is one worker.
"""

from __future__ import annotations

from mainsail.serve.multimodel.app import (
    DEFAULT_MODELS_DIR,
    MULTI_MODEL_ENV,
    MultiModelEndpoints,
    app_from_env,
    create_multi_model_app,
    multi_model_from_env,
    run_multi_model_server,
    serve_multi_model,
)
from mainsail.serve.multimodel.memory import (
    MEMORY_ENV,
    MultiModelMetrics,
    files_size,
    memory_budget_bytes,
    process_rss,
)
from mainsail.serve.multimodel.registry import LoadedModel, ModelRegistry

__all__ = [
    "DEFAULT_MODELS_DIR", "MEMORY_ENV", "MULTI_MODEL_ENV", "LoadedModel", "ModelRegistry", "MultiModelEndpoints",
    "MultiModelMetrics", "app_from_env", "create_multi_model_app", "files_size", "memory_budget_bytes",
    "multi_model_from_env", "process_rss", "run_multi_model_server", "serve_multi_model",
]
