"""The loaded model inside one worker: readiness, the predict thread pool and the timeout."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from mainsail.errors import MainsailError, ModelError, ModelLoadError, ModelNotReady, PredictTimeout
from mainsail.handlers.base import Handler, Invocation, Reply

logger = logging.getLogger(__name__)


class ModelRuntime:
    """Owns a handler: loads it once, then runs ``invoke`` off the event loop under a timeout.

    A request that outlives ``timeout_s`` is answered 504; its thread runs on (Python threads
    cannot be killed), so the worker keeps serving with the remaining threads.
    """

    def __init__(self, handler: Handler, *, timeout_s: float | None = 60.0, threads: int = 2) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        self.handler = handler
        self.timeout_s = timeout_s
        self.ready = False
        self.load_error: str | None = None
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="mainsail-predict")

    def load(self) -> None:
        """Load the model (blocking). Raises ``ModelLoadError`` with the reason on failure."""
        started = time.perf_counter()
        try:
            self.handler.load()
        except Exception as exc:
            reason = exc.message if isinstance(exc, MainsailError) else f"{type(exc).__name__}: {exc}"
            self.load_error = reason
            logger.error("model failed to load: %s", reason, exc_info=not isinstance(exc, MainsailError))
            raise ModelLoadError(reason) from exc
        self.ready = True
        logger.info("model loaded by the %s handler in %.2f s", self.handler.name,
                    time.perf_counter() - started)

    async def invoke(self, invocation: Invocation) -> tuple[Reply, float]:
        """Answer one invocation; returns the reply and the seconds spent in the handler."""
        if not self.ready:
            raise ModelNotReady(self.load_error or "the model is still loading")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._call, invocation)
        if self.timeout_s is None:
            return await future
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise PredictTimeout(self.timeout_s) from None

    def _call(self, invocation: Invocation) -> tuple[Reply, float]:
        started = time.perf_counter()
        try:
            reply = self.handler.invoke(invocation)
        except MainsailError as exc:
            exc.model_seconds = time.perf_counter() - started
            raise
        except Exception as exc:
            error = ModelError(f"{type(exc).__name__}: {exc}")
            error.model_seconds = time.perf_counter() - started
            raise error from exc
        return reply, time.perf_counter() - started

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
