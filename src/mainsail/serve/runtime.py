"""The loaded model inside one worker: readiness, where calls run (event loop or predict threads,
``mainsail.serve.placement``) and the timeout."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from mainsail.errors import MainsailError, ModelLoadError, ModelNotReady, PredictTimeout
from mainsail.handlers.base import BatchHandler, Handler, Invocation, Reply, as_error
from mainsail.serve.batching import BatchConfig, Batcher
from mainsail.serve.placement import Placement

if TYPE_CHECKING:
    from mainsail.settings import ServeSettings

logger = logging.getLogger(__name__)


class ModelRuntime:
    """Owns a handler: loads it once, then runs ``invoke`` under a timeout, on the event loop when
    calls are measured fast, else in ``threads`` predict threads (``placement``).

    A request that outlives ``timeout_s`` in a thread is answered 504 at the timeout; its thread
    runs on (Python threads cannot be killed), so the worker keeps serving with the remaining
    threads. On the loop, such a call is answered 504 when it returns.
    """

    def __init__(self, handler: Handler, *, timeout_s: float | None = 60.0, threads: int = 2,
                 batching: BatchConfig | None = None, placement: Placement | None = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        self.handler = handler
        self.timeout_s = timeout_s
        self.ready = False
        self.load_error: str | None = None
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="mainsail-predict")
        self.batching = batching
        """Adaptive batching, used when the loaded handler can batch (``batchable``)."""
        self.observe_batch: Callable[[int], None] | None = None
        """Called with the size of each batched model call (the app's metrics set it)."""
        self._batcher: Batcher | None = None
        self.placement = placement or Placement()
        """Where the next (unbatched) model call runs."""

    @classmethod
    def from_settings(cls, handler: Handler, settings: ServeSettings) -> ModelRuntime:
        """A runtime with the timeout, predict threads and batching ``settings`` give."""
        batching = BatchConfig(settings.max_batch_size, settings.max_batch_delay_ms / 1000) \
            if settings.batching else None
        placement = Placement(settings.predict_placement, settings.loop_call_max_ms / 1000)
        return cls(handler, timeout_s=settings.timeout, threads=settings.predict_threads, batching=batching,
                   placement=placement)

    @property
    def queued(self) -> int:
        """Requests waiting for a model call (with adaptive batching; 0 without)."""
        return 0 if self._batcher is None else len(self._batcher.queue)

    @property
    def batches(self) -> bool:
        """Whether invocations go through adaptive batching (known once the model is loaded)."""
        return self.batching is not None and bool(getattr(self.handler, "batchable", False))

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
        if self.batching is not None:
            if self.batches:
                logger.info("adaptive batching: up to %d requests per model call, %.1f ms delay under load",
                            self.batching.max_size, self.batching.max_delay_s * 1000)
            else:
                hint = (" (a script batches when it defines predict_batch_fn, or leaves predict_fn to the "
                        "scikit-learn, XGBoost or PyTorch default)") if self.handler.name == "script" else ""
                logger.info("adaptive batching is off: the %s handler answers one request at a time%s",
                            self.handler.name, hint)

    async def invoke(self, invocation: Invocation) -> tuple[Reply, float]:
        """Answer one invocation; returns the reply and the seconds spent in the handler."""
        if not self.ready:
            raise ModelNotReady(self.load_error or "the model is still loading")
        if self.batches:
            return await self._invoke_batched(invocation)
        placement = self.placement
        if placement.on_loop:
            return self._call_on_loop(invocation)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._call, invocation)
        if self.timeout_s is None:
            reply = await future
        else:
            try:
                reply = await asyncio.wait_for(future, self.timeout_s)
            except TimeoutError:
                placement.observe(self.timeout_s)
                raise PredictTimeout(self.timeout_s) from None
        placement.observe(reply[1])
        return reply

    def _call_on_loop(self, invocation: Invocation) -> tuple[Reply, float]:
        """One call on the event loop; a 504 (late) when it outlived the timeout."""
        started = time.perf_counter()
        try:
            reply = self._call(invocation)
        except MainsailError as exc:
            seconds = time.perf_counter() - started
            self.placement.observe(seconds)
            if self.timeout_s is not None and seconds > self.timeout_s:
                raise PredictTimeout(self.timeout_s) from exc
            raise
        self.placement.observe(reply[1])
        if self.timeout_s is not None and reply[1] > self.timeout_s:
            raise PredictTimeout(self.timeout_s)
        return reply

    async def _invoke_batched(self, invocation: Invocation) -> tuple[Reply, float]:
        if self._batcher is None:  # in the running loop, after any fork
            handler: BatchHandler = self.handler  # type: ignore[assignment]
            assert self.batching is not None
            config = self.batching
            if getattr(handler, "concurrent_batches", False):
                # Batches that run a script's own input_fn / output_fn: as many at once as calls
                # without batching (they may wait on I/O), each carrying what queued meanwhile.
                config = dataclasses.replace(config, slots=self.threads)
            self._batcher = Batcher(handler.invoke_batch, self._executor, config,
                                    timeout_s=self.timeout_s, observe=self.observe_batch,
                                    placement=Placement(self.placement.mode, self.placement.loop_max_s))
        return await self._batcher.submit(invocation)  # PredictTimeout past the timeout

    def _call(self, invocation: Invocation) -> tuple[Reply, float]:
        """The handler's answer, with the seconds the call took."""
        started = time.perf_counter()
        try:
            reply = self.handler.invoke(invocation)
        except Exception as exc:
            error = as_error(exc)
            error.model_seconds = time.perf_counter() - started
            if error is exc:
                raise
            raise error from exc
        return reply, time.perf_counter() - started

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
