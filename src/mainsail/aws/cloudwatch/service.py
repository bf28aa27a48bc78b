"""The CloudWatch operation core: every operation takes and returns a plain dict in botocore's member
names (timestamps in epoch seconds), whatever wire protocol carried it (:mod:`.wire`, :mod:`.api`).
``PutMetricData`` and ``ListMetrics`` live here; the statistics, metric data and alarms in their modules."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from mainsail.aws.cloudwatch import metric_data, statistics
from mainsail.aws.cloudwatch.alarm_store import AlarmStore
from mainsail.aws.cloudwatch.alarms import Alarms
from mainsail.aws.cloudwatch.datapoints import Datapoint, TimeScale, dimensions_of
from mainsail.aws.cloudwatch.errors import (
    InvalidAction,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    ValidationError,
    bad_next_token,
)
from mainsail.aws.cloudwatch.store import MetricStore
from mainsail.aws.protocol import offset_token, token_offset
from mainsail.aws.shapes import InputCheck, service_model

SERVICE = "cloudwatch"
#: how far from now a PutMetricData timestamp may be (real seconds, as CloudWatch's two weeks and two hours)
MAX_PAST_S = 14 * 24 * 3600.0
MAX_FUTURE_S = 2 * 3600.0
LIST_METRICS_PAGE = 500
#: RecentlyActive=PT3H: metrics with a datapoint in the last three hours (scaled)
RECENT_S = 3 * 3600.0

Operation = Callable[[Mapping[str, Any], str], dict[str, Any]]


class CloudWatch:
    """CloudWatch's metrics and alarms over a :class:`MetricStore` and an :class:`AlarmStore`, with the
    checks CloudWatch makes of each input: the model's (:class:`InputCheck`, answering ValidationError as
    CloudWatch does; a missing top-level member is MissingParameter where the operation models that error)
    and each operation's own."""

    def __init__(self, store: MetricStore, alarm_store: AlarmStore, scale: TimeScale,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.scale = scale
        self.clock = clock
        self.alarms = Alarms(alarm_store, clock)
        self.inputs = InputCheck(SERVICE, error=ValidationError)
        self.operations: dict[str, Operation] = {
            "PutMetricData": lambda body, region: self.put_metric_data(body),
            "GetMetricStatistics": lambda body, region: statistics.get_metric_statistics(store, scale, body),
            "GetMetricData": lambda body, region: metric_data.get_metric_data(store, scale, body),
            "ListMetrics": lambda body, region: self.list_metrics(body),
            "PutMetricAlarm": self.alarms.put_metric_alarm,
            "DescribeAlarms": lambda body, region: self.alarms.describe_alarms(body),
            "DescribeAlarmsForMetric": lambda body, region: self.alarms.describe_alarms_for_metric(body),
            "DeleteAlarms": lambda body, region: self.alarms.delete_alarms(body),
            "SetAlarmState": lambda body, region: self.alarms.set_alarm_state(body),
            "DescribeAlarmHistory": lambda body, region: self.alarms.describe_alarm_history(body),
            "EnableAlarmActions": lambda body, region: self.alarms.set_actions_enabled(body, True),
            "DisableAlarmActions": lambda body, region: self.alarms.set_actions_enabled(body, False),
        }

    @staticmethod
    def model() -> Any:
        """botocore's model of CloudWatch (loaded once; blocks the first time)."""
        return service_model(SERVICE)

    def operation_model(self, name: str) -> Any:
        """The model of operation ``name``; InvalidAction if mainsail does not implement it."""
        if name not in self.operations:
            raise InvalidAction(f"Could not find operation {name} for version 2010-08-01")
        return self.model().operation_model(name)

    def call(self, name: str, body: Mapping[str, Any], region: str) -> dict[str, Any]:
        """Run operation ``name`` on ``body`` (already in member names, timestamps as epoch seconds)."""
        model = self.operation_model(name)
        shape = model.input_shape
        # operations that model MissingRequiredParameterException name the member; the others answer the
        # model check's ValidationError ("Member must not be null")
        if shape is not None and any(e.name == "MissingRequiredParameterException" for e in model.error_shapes):
            for member in shape.required_members:
                if body.get(member) is None:
                    raise MissingParameter(f"The parameter {member} is required.")
        self.inputs.check(name, body)
        return self.operations[name](body, region)

    # -- PutMetricData -------------------------------------------------------------------------------

    def put_metric_data(self, body: Mapping[str, Any]) -> dict[str, Any]:
        namespace = str(body["Namespace"])
        if namespace.startswith("AWS/"):
            raise InvalidParameterValue(f"The value {namespace} for parameter Namespace is invalid.")
        now = self.clock()
        points: dict[tuple[str, Any, float, str], Datapoint] = {}
        for i, datum in enumerate(body.get("MetricData") or [], 1):
            where = f"MetricData.member.{i}"
            ts = float(datum.get("Timestamp", now))
            if ts < now - MAX_PAST_S or ts > now + MAX_FUTURE_S:
                raise InvalidParameterValue(f"The parameter {where}.Timestamp must specify a time within the past "
                                            "two weeks and no more than two hours in the future.")
            if datum.get("StorageResolution", 60) not in (1, 60):
                raise InvalidParameterValue(f"The parameter {where}.StorageResolution must be a value in the set "
                                            "[ 1, 60 ].")
            dims = dimensions_of((d["Name"], d["Value"]) for d in datum.get("Dimensions") or [])
            unit = str(datum.get("Unit") or "None")
            key = (str(datum["MetricName"]), dims, self.scale.period_start(ts), unit)
            point = points.get(key)
            if point is None:
                point = points[key] = Datapoint(namespace, key[0], dims, key[2], unit)
            _add_datum(point, datum, where)
        self.store.put(points.values())
        return {}

    # -- ListMetrics ---------------------------------------------------------------------------------

    def list_metrics(self, body: Mapping[str, Any]) -> dict[str, Any]:
        active_since = None
        if body.get("RecentlyActive") is not None:
            active_since = self.clock() - self.scale.real_seconds(RECENT_S)
        keys = self.store.metrics(body.get("Namespace"), body.get("MetricName"), active_since)
        wanted = [(str(f["Name"]), f.get("Value")) for f in body.get("Dimensions") or []]
        metrics = []
        for key in keys:
            dims = dict(key.dimensions)
            if all(name in dims and (value is None or dims[name] == value) for name, value in wanted):
                metrics.append({"Namespace": key.namespace, "MetricName": key.metric_name,
                                "Dimensions": [{"Name": k, "Value": v} for k, v in key.dimensions]})
        offset = token_offset(body.get("NextToken"), bad_next_token)
        out: dict[str, Any] = {"Metrics": metrics[offset:offset + LIST_METRICS_PAGE]}
        if offset + LIST_METRICS_PAGE < len(metrics):
            out["NextToken"] = offset_token(offset + LIST_METRICS_PAGE)
        return out


def _finite(value: Any, where: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise InvalidParameterValue(f"The value {value} for parameter {where} is invalid: it must be a finite number.")
    return number


def _add_datum(point: Datapoint, datum: Mapping[str, Any], where: str) -> None:
    given = [k for k in ("Value", "StatisticValues", "Values") if datum.get(k) is not None]
    if len(given) > 1:
        raise InvalidParameterCombination(f"The parameters {where}.{given[0]} and {where}.{given[1]} "
                                          "are mutually exclusive and you have specified both.")
    if not given:
        raise InvalidParameterCombination(f"At least one of the parameters {where}.Value and "
                                          f"{where}.StatisticValues must be specified.")
    if "Value" in given:
        point.add(_finite(datum["Value"], f"{where}.Value"))
    elif "Values" in given:
        values, counts = datum["Values"], datum.get("Counts")
        if counts is not None and len(counts) != len(values):
            raise InvalidParameterValue(f"The parameters {where}.Values and {where}.Counts must be of the same size.")
        for j, value in enumerate(values):
            count = 1.0 if counts is None else _finite(counts[j], f"{where}.Counts.member.{j + 1}")
            if count > 0:
                point.add(_finite(value, f"{where}.Values.member.{j + 1}"), count)
    else:
        stats = datum["StatisticValues"]
        n, total = _finite(stats["SampleCount"], where), _finite(stats["Sum"], where)
        low, high = _finite(stats["Minimum"], where), _finite(stats["Maximum"], where)
        if n <= 0 or low > high:
            raise InvalidParameterValue(f"The parameter {where}.StatisticValues is invalid: SampleCount must be "
                                        "positive and Minimum no greater than Maximum.")
        point.add_statistics(n, total, low, high)
