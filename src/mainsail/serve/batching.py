"""Adaptive batching: requests that queue up behind a busy model are merged into one model call.

The rule is the one dynamic batchers use (Triton's dynamic batcher with no queue delay, TorchServe's
and MLServer's adaptive batching with a zero timeout): a request that finds the model idle is
dispatched at once, alone, so a lone request never waits; requests that arrive while a model call
runs wait for it and then go together, up to ``max_size`` per call. ``max_delay_s`` lets a batch
that was formed under load wait that much longer to fill up; it never applies to a request that
found the model idle with nothing queued.

Each queued request keeps its own content type and Accept; the handler's ``invoke_batch`` decodes
each one alone (a request that fails decoding fails alone), runs the model once over the rest and
encodes each answer for its own request.

Batched calls run where ``placement`` (``mainsail.serve.placement``) says, judged by whole calls. In
the predict threads, the loop goes on reading requests while a call runs. On the event loop, a call
runs when the requests that were ready have all been read (the dispatch is deferred to the end of
the loop's current pass), and those that arrive meanwhile wait in their sockets: the next pass
reads them together, and they form the next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from mainsail.errors import MainsailError, ModelError, PredictTimeout
from mainsail.handlers.base import Invocation, Outcome, Reply, as_error
from mainsail.serve.placement import Placement

BatchCall = Callable[[Sequence[Invocation]], list[Outcome]]


@dataclass(frozen=True, slots=True)
class BatchConfig:
    max_size: int = 32
    """Most requests merged into one model call."""
    max_delay_s: float = 0.0
    """How long a batch formed under load may wait to fill up (never a lone request)."""
    slots: int = 1
    """Model calls one worker runs at once."""

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"max batch size must be at least 1, got {self.max_size}")
        if self.max_delay_s < 0:
            raise ValueError(f"max batch delay must not be negative, got {self.max_delay_s}")
        if self.slots < 1:
            raise ValueError(f"batch slots must be at least 1, got {self.slots}")


class _Slot:
    """One running model call's hold on a slot."""

    __slots__ = ("released", "timer")

    def __init__(self) -> None:
        self.released = False
        self.timer: asyncio.TimerHandle | None = None


Waiting = tuple[Invocation, "asyncio.Future[tuple[Reply, float]]"]


class Batcher:
    """Queues invocations on one event loop and runs them in batches on ``executor``.

    ``observe`` (when given) is called with the size of every model call. Created lazily inside
    the worker's running loop (never before a fork).
    """

    def __init__(self, call: BatchCall, executor: Executor, config: BatchConfig, *,
                 timeout_s: float | None = None, observe: Callable[[int], None] | None = None,
                 placement: Placement | None = None) -> None:
        self.call = call
        self.placement = placement or Placement("threads")
        self.executor = executor
        self.config = config
        self.timeout_s = timeout_s
        self.observe = observe
        self.queue: deque[Waiting] = deque()
        self.running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loaded = False
        """Whether requests were left waiting when the last model call finished (load)."""
        self._deferred = False

    async def submit(self, invocation: Invocation) -> tuple[Reply, float]:
        """Queue ``invocation``; returns its reply and the seconds its model call took.

        Past ``timeout_s`` (from now) it raises ``PredictTimeout``: a request still queued is then
        never run, one whose call runs on keeps its batch mates' answers coming. (A timer on the
        request's future rather than ``asyncio.wait_for``, which costs a task per request.)
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Reply, float]] = loop.create_future()
        self.queue.append((invocation, future))
        if not self.placement.on_loop:
            self._dispatch()
        elif not self._deferred:
            self._deferred = True
            loop.call_soon(self._dispatch_deferred)
        if self.timeout_s is None:
            return await future
        timer = loop.call_later(self.timeout_s, _expire, future, self.timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    def _dispatch_deferred(self) -> None:
        self._deferred = False
        self._dispatch()

    def _dispatch(self) -> None:
        config = self.config
        while self.running < config.slots and self.queue:
            self._drop_abandoned()
            if not self.queue:
                return
            if self._timer is not None:
                if len(self.queue) < config.max_size:
                    return
                self._timer.cancel()
                self._timer = None
            elif self._loaded and config.max_delay_s > 0 and len(self.queue) < config.max_size:
                self._timer = asyncio.get_running_loop().call_later(config.max_delay_s, self._flush)
                return
            batch = [self.queue.popleft() for _ in range(min(config.max_size, len(self.queue)))]
            self._start(batch)

    def _flush(self) -> None:
        self._timer = None
        self._loaded = False
        self._dispatch()

    def _drop_abandoned(self) -> None:
        """Requests whose caller gave up (timeout, closed connection) are not run."""
        while self.queue and self.queue[0][1].done():
            self.queue.popleft()
        if any(future.done() for _, future in self.queue):
            self.queue = deque(item for item in self.queue if not item[1].done())

    def _start(self, batch: list[Waiting]) -> None:
        if self.observe is not None:
            self.observe(len(batch))
        invocations = [invocation for invocation, _ in batch]
        if self.placement.on_loop:
            outcomes, seconds = self._run(invocations)
            self.placement.observe(seconds)
            if self.timeout_s is not None and seconds > self.timeout_s:
                outcomes = [PredictTimeout(self.timeout_s)] * len(batch)
            self._settle(batch, outcomes, seconds)
            return
        self.running += 1
        loop = asyncio.get_running_loop()
        slot = _Slot()
        if self.timeout_s is not None:
            slot.timer = loop.call_later(self.timeout_s, self._release, slot)
        done = loop.run_in_executor(self.executor, self._run, invocations)
        done.add_done_callback(lambda finished: self._finish(batch, finished, slot))

    def _release(self, slot: _Slot) -> None:
        """A model call outlived the timeout (its requests were answered 504): its thread runs on,
        as Python threads cannot be killed, but its slot is given back so that later batches go to
        the executor's other threads."""
        if not slot.released:
            slot.released = True
            self.running -= 1
            self._dispatch()

    def _run(self, invocations: list[Invocation]) -> tuple[list[Outcome], float]:
        started = time.perf_counter()
        try:
            outcomes = self.call(invocations)
        except Exception as exc:
            outcomes = [as_error(exc)] * len(invocations)
        if len(outcomes) != len(invocations):
            outcomes = [ModelError(f"the handler answered {len(outcomes)} of {len(invocations)} batched "
                                   "requests")] * len(invocations)
        return outcomes, time.perf_counter() - started

    def _finish(self, batch: list[Waiting], finished: asyncio.Future[tuple[list[Outcome], float]],
                slot: _Slot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
        if not slot.released:
            slot.released = True
            self.running -= 1
        if finished.cancelled():
            outcomes: Sequence[Outcome] = [ModelError("the model call was cancelled")] * len(batch)
            seconds = 0.0
        elif finished.exception() is not None:
            outcomes = [ModelError(f"the batch failed: {finished.exception()}")] * len(batch)
            seconds = 0.0
        else:
            outcomes, seconds = finished.result()
            self.placement.observe(seconds)
        self._settle(batch, outcomes, seconds)

    def _settle(self, batch: list[Waiting], outcomes: Sequence[Outcome], seconds: float) -> None:
        """Answer each request of a finished call, then start the next."""
        self._loaded = bool(self.queue)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, MainsailError):
                outcome.model_seconds = seconds
                future.set_exception(outcome)
            else:
                future.set_result((outcome, seconds))
        self._dispatch()


def _expire(future: asyncio.Future[tuple[Reply, float]], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(PredictTimeout(timeout_s))
