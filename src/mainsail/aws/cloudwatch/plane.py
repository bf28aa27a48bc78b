"""CloudWatch as ``mainsail up`` assembles it: the operation core over a metric store, the alarms beside
it (``alarms`` tables in the same SQLite file), the wire protocols, and the alarm evaluator that the app's
lifespan starts and stops."""

from __future__ import annotations

from dataclasses import dataclass

from mainsail.aws.cloudwatch.actions import AlarmActions
from mainsail.aws.cloudwatch.alarm_store import AlarmStore
from mainsail.aws.cloudwatch.api import CloudWatchApi
from mainsail.aws.cloudwatch.datapoints import TimeScale
from mainsail.aws.cloudwatch.evaluation import AlarmEvaluator
from mainsail.aws.cloudwatch.service import CloudWatch
from mainsail.aws.cloudwatch.store import MetricStore


@dataclass
class CloudWatchPlane:
    """The parts of CloudWatch one control plane runs; ``actions`` is where alarm action subscribers
    (Application Auto Scaling) register."""

    service: CloudWatch
    api: CloudWatchApi
    evaluator: AlarmEvaluator
    actions: AlarmActions

    @classmethod
    def create(cls, store: MetricStore, *, time_scale: float = 1.0,
               actions: AlarmActions | None = None) -> CloudWatchPlane:
        """CloudWatch over ``store`` (its alarms in the same database file), its clock ``time_scale`` times
        faster than real time (``MAINSAIL_METRICS_TIME_SCALE``)."""
        scale = TimeScale(time_scale)
        actions = actions if actions is not None else AlarmActions()
        service = CloudWatch(store, AlarmStore(store.path), scale)
        return cls(service, CloudWatchApi(service), AlarmEvaluator(service.alarms, store, scale, actions), actions)

    def start(self) -> None:
        """Start evaluating alarms (on the running event loop)."""
        self.evaluator.start()

    async def stop(self) -> None:
        """Stop evaluating alarms, let running actions end, and close the alarm store."""
        await self.evaluator.stop()
        self.service.alarms.store.close()
