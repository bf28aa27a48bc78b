"""The asynchronous inference queue's metrics, sampled once a period (namespace ``AWS/SageMaker``,
dimension ``EndpointName`` only, as SageMaker publishes them for every endpoint with an
``AsyncInferenceConfig``):

- ``ApproximateBacklogSize`` (Count): the requests queued or being processed;
- ``ApproximateBacklogSizePerInstance`` (Count): that divided by the endpoint's instances (absent
  while it has none: the quotient means nothing then);
- ``ApproximateAgeOfOldestRequest`` (Seconds): how long the oldest of them has waited (absent when
  there are none);
- ``HasBacklogWithoutCapacity`` (Count): 1 while requests wait and no instance serves (the metric a
  scale-from-zero policy watches), else 0.

The queue is the state store's (:data:`mainsail.jobs.async_inference.ASYNC_REQUEST`): a request stays
there until it is finished, so the backlog counts those in flight, as SageMaker's does.
"""

from __future__ import annotations

import time

from mainsail.aws.cloudwatch.datapoints import Datapoint, Dimensions, dimensions_of
from mainsail.hosting.endpoints import ENDPOINT
from mainsail.hosting.store import StateStore
from mainsail.jobs.async_inference import ASYNC_REQUEST

NAMESPACE = "AWS/SageMaker"


def backlog_datapoints(store: StateStore, timestamp: float, now: float | None = None) -> list[Datapoint]:
    """This period's queue metrics of every asynchronous endpoint (stamped ``timestamp``; ages as of
    ``now``, default the time). Blocking: SQLite."""
    now = time.time() if now is None else now
    waiting: dict[str, list[float]] = {}
    for item in store.list(ASYNC_REQUEST):
        waiting.setdefault(str(item["EndpointName"]), []).append(float(item["EnqueuedAt"]))
    points: list[Datapoint] = []
    for record in store.list(ENDPOINT):
        if not record.get("AsyncInferenceConfig"):
            continue
        name = record["EndpointName"]
        dims = dimensions_of({"EndpointName": name})
        queued = waiting.get(name, [])
        instances = sum(int(pv.get("CurrentInstanceCount") or 0) for pv in record.get("ProductionVariants", []))

        def point(metric: str, value: float, unit: str = "Count", dims: Dimensions = dims) -> None:
            datapoint = Datapoint(NAMESPACE, metric, dims, timestamp, unit)
            datapoint.add(value)
            points.append(datapoint)

        point("ApproximateBacklogSize", len(queued))
        if instances:
            point("ApproximateBacklogSizePerInstance", len(queued) / instances)
        if queued:
            point("ApproximateAgeOfOldestRequest", max(now - min(queued), 0.0), "Seconds")
        point("HasBacklogWithoutCapacity", 1.0 if queued and not instances else 0.0)
    return points
