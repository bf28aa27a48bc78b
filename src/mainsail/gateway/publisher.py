"""Publishing the one-minute CloudWatch datapoints: at the end of every period (a minute, or less under
``MAINSAIL_METRICS_TIME_SCALE``) the router's :class:`~mainsail.routing.recorder.Recorder` gives what
the requests added since the last period, the samplers what they measure now (the instances' CPU,
memory and disk, the async queues), and all of it goes to the
:class:`~mainsail.aws.cloudwatch.store.MetricStore`, stamped with the period's start.

The recorder is read on the event loop (the requests add to it there, without locks); the samplers and
the store's write block, so they run in the loop's executor. On shutdown the period under way is
flushed as far as it went (the store merges a period written twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence

from mainsail.aws.cloudwatch.datapoints import Datapoint, TimeScale
from mainsail.aws.cloudwatch.store import MetricStore
from mainsail.hosting.instance_metrics import InstanceSampler
from mainsail.hosting.store import StateStore
from mainsail.jobs.async_backlog import backlog_datapoints
from mainsail.routing.recorder import Recorder

logger = logging.getLogger(__name__)

#: something measured once a period: its datapoints, stamped with the period's start (blocking)
Sampler = Callable[[float], list[Datapoint]]


class MetricPublisher:
    """Writes ``recorder``'s and the ``samplers``' datapoints to ``store`` once every ``scale`` period
    (:meth:`start` on the serving loop, :meth:`stop` to flush and end)."""

    def __init__(self, recorder: Recorder, store: MetricStore, scale: TimeScale, *,
                 samplers: Sequence[Sampler] = (), clock: Callable[[], float] = time.time) -> None:
        self.recorder = recorder
        self.store = store
        self.scale = scale
        self.samplers = tuple(samplers)
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None

    def start(self) -> None:
        """Publish at the end of every period from now on (on the running loop)."""
        if self._task is None:
            self._stopping = asyncio.Event()  # made here: it belongs to the serving loop
            self._task = asyncio.get_running_loop().create_task(self._run(self._stopping), name="mainsail-metrics")

    async def stop(self) -> None:
        """Stop publishing (a publish under way finishes first), then write what the period under way
        has recorded so far."""
        if self._task is not None and self._stopping is not None:
            self._stopping.set()
            await self._task
            self._task = None
        await self.publish(self.scale.period_start(self.clock()), sample=False)

    async def publish(self, timestamp: float, *, sample: bool = True) -> None:
        """Write the recorder's datapoints since the last publish and (``sample``) the samplers', all
        stamped ``timestamp``."""
        points = self.recorder.take(timestamp)
        loop = asyncio.get_running_loop()
        if sample:
            for sampler in self.samplers:
                try:
                    points.extend(await loop.run_in_executor(None, sampler, timestamp))
                except Exception:  # one sampler's failure costs only its own metrics
                    logger.exception("sampling metrics with %r failed", sampler)
        if points:
            await loop.run_in_executor(None, self.store.put, points)

    async def _run(self, stopping: asyncio.Event) -> None:
        length = self.scale.period_s
        last = -math.inf
        while True:
            # the end of the period under way; never one already published (a sleep may end early)
            end = max(self.scale.period_start(self.clock()) + length, last + length)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), max(end - self.clock(), 0.0))
            if stopping.is_set():
                return
            last = end
            try:
                await self.publish(end - length)
            except Exception:  # the store failed (disk full?): the next period tries again
                logger.exception("publishing the metrics of the period at %.0f failed", end - length)


def sagemaker_publisher(recorder: Recorder, metric_store: MetricStore, store: StateStore,
                        time_scale: float) -> MetricPublisher:
    """What ``mainsail up`` publishes: the router's ``recorder``, the serving instances' utilization and
    the async queues of ``store``'s endpoints, into ``metric_store`` every period of ``time_scale``."""
    return MetricPublisher(recorder, metric_store, TimeScale(time_scale),
                           samplers=(InstanceSampler(store).sample, functools.partial(backlog_datapoints, store)))
