"""Preload: which models the supervisor may load once and fork its workers from, and what each
forked worker runs before it serves.

``preload_safe`` decides per handler (a small registry keyed by ``Handler.name``, extended with
``register_preload_check``); ``loaded_preload_hazards`` looks at what the supervisor's load imported
or initialised; ``AfterFork`` holds the hooks a supervisor collects for its forked workers (torch's
thread count). See docs/workers.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from mainsail.handlers.base import Handler
from mainsail.settings import ServeSettings

# Why forking after a load is safe for the libraries that pass: every request runs in the worker's
# predict threads, which are created after the fork. OpenMP (libgomp, used by torch's intra-op pool,
# XGBoost and LightGBM) keeps its thread team per master thread, so a team the supervisor's main
# thread might have started is never reused by those fresh threads; the supervisor itself runs no
# request. OpenBLAS (numpy, scipy) shuts its pool down around fork on its own. What does not survive:
# an ONNX Runtime InferenceSession (its thread pool is created with the session, and those threads
# are gone in the child) and an initialised CUDA context.

PreloadCheck = Callable[[Handler, ServeSettings], "tuple[bool, str]"]
_PRELOAD_CHECKS: dict[str, PreloadCheck] = {}

_UNFORKABLE_MODULES = {
    "onnxruntime": "ONNX Runtime's session thread pools do not survive fork",
    "tensorflow": "TensorFlow's runtime threads do not survive fork",
    "jax": "JAX's runtime threads do not survive fork",
}


def register_preload_check(handler_name: str, check: PreloadCheck) -> None:
    """Say whether handlers named ``handler_name`` (``Handler.name``) may be loaded once and forked."""
    _PRELOAD_CHECKS[handler_name] = check


def preload_safe(handler: Handler, settings: ServeSettings) -> tuple[bool, str]:
    """Whether ``handler`` (built, not loaded) may be loaded in the supervisor and forked; and why."""
    if not settings.preload:
        return False, "preload is turned off (MAINSAIL_PRELOAD=false / --no-preload)"
    if settings.reload:
        return False, "--reload restarts the workers to re-read changed files, so each loads its own copy"
    if settings.workers < 2:
        return False, "one worker: nothing to share"
    check = _PRELOAD_CHECKS.get(getattr(handler, "name", ""))
    if check is None:
        return False, f"the {getattr(handler, 'name', type(handler).__name__)!r} handler is not known to be fork-safe"
    return check(handler, settings)


def loaded_preload_hazards() -> str | None:
    """After the supervisor's load: a reason not to fork (a library the model pulled in), or None."""
    for module, reason in _UNFORKABLE_MODULES.items():
        if module in sys.modules:
            return f"the model imported {module}: {reason}"
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_initialized():
            return "the model initialised CUDA, which cannot be used in a forked process"
    return None


def _always(reason: str) -> PreloadCheck:
    def check(handler: Handler, settings: ServeSettings) -> tuple[bool, str]:
        return True, reason
    return check


def _pytorch_check(handler: Handler, settings: ServeSettings) -> tuple[bool, str]:
    model_dir: Path | None = getattr(handler, "model_dir", None)
    use_onnx: bool | None = getattr(handler, "use_onnx", None)
    if model_dir is None:
        return False, "the handler does not say where its model is"
    if (model_dir / "model.onnx").is_file() if use_onnx is None else use_onnx:
        return False, ("it serves model.onnx, and an ONNX Runtime session's thread pool does not survive "
                       "fork (MAINSAIL_USE_ONNX=false serves model.pth, preloaded)")
    device = str(getattr(handler, "device", "auto"))
    if device.startswith("cuda"):
        return False, "the network runs on CUDA, which cannot be used in a forked process"
    if device == "auto":
        import torch

        if torch.version.cuda is not None and torch.cuda.is_available():
            return False, ("a GPU is available and the network would run there; CUDA cannot be used in "
                           "a forked process (--device cpu / MAINSAIL_DEVICE=cpu preloads)")
    return True, "a torch CPU network: weights are shared, inference runs in threads started after fork"


register_preload_check("script", _always("a user script: checked again after model_fn for libraries that cannot fork"))
register_preload_check("tabular", _always(
    "XGBoost, LightGBM and scikit-learn models predict in threads started after fork"))
register_preload_check("xgboost-algorithm", _always("an XGBoost booster predicts in threads started after fork"))
register_preload_check("pytorch-multimodal", _pytorch_check)


# -- after fork ------------------------------------------------------------------------------------


class AfterFork:
    """The hooks each forked worker runs before it serves (e.g. torch's thread count), collected by
    one supervisor while it preloads."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def add(self, hook: Callable[[], None]) -> None:
        self.hooks.append(hook)

    def run(self) -> None:
        for hook in self.hooks:
            hook()


def torch_threads() -> int | None:
    """torch's intra-op thread count when torch is loaded (read before the model runs anything)."""
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


def torch_threads_after_fork(threads: int) -> Callable[[], None]:
    """A hook that sets torch's intra-op thread count to ``threads`` in a forked worker."""
    def hook() -> None:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads)
    return hook
