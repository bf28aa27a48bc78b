"""Metric alarms: ``PutMetricAlarm``, ``DescribeAlarms``, ``DescribeAlarmsForMetric``, ``DeleteAlarms``,
``SetAlarmState``, ``DescribeAlarmHistory``, ``Enable/DisableAlarmActions``, over an :class:`AlarmStore`.
State changes (from ``SetAlarmState`` or the evaluator) go through :meth:`Alarms.set_state`, which records
them in the history and hands them to ``on_transition`` (the evaluator runs their actions)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mainsail.aws.cloudwatch.alarm_store import AlarmStore
from mainsail.aws.cloudwatch.errors import (
    InvalidFormat,
    InvalidParameterCombination,
    InvalidParameterValue,
    LimitExceeded,
    ResourceNotFound,
    bad_next_token,
)
from mainsail.aws.cloudwatch.statistics import check_period, percentile
from mainsail.aws.identity import ACCOUNT
from mainsail.aws.protocol import offset_token, token_offset

MAX_ALARMS = 5000
COMPARISONS = ("GreaterThanOrEqualToThreshold", "GreaterThanThreshold", "LessThanThreshold",
               "LessThanOrEqualToThreshold")
TREAT_MISSING = ("missing", "ignore", "breaching", "notBreaching")
_CONFIG = ("AlarmDescription", "OKActions", "AlarmActions", "InsufficientDataActions", "MetricName", "Namespace",
           "Statistic", "ExtendedStatistic", "Dimensions", "Period", "Unit", "EvaluationPeriods",
           "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData",
           "EvaluateLowSampleCountPercentile", "Metrics", "ThresholdMetricId")


@dataclass
class Transition:
    """An alarm's change of state (or, for repeating actions, its staying in one)."""

    alarm: dict[str, Any]
    old_state: str
    new_state: str
    reason_data: str | None = None
    """This evaluation's ``StateReasonData`` (the alarm keeps its transition's while its state holds)."""


def _check_alarm(body: Mapping[str, Any]) -> None:
    metrics = body.get("Metrics")
    single = [m for m in ("MetricName", "Namespace", "Statistic", "ExtendedStatistic", "Dimensions", "Period", "Unit")
              if body.get(m) is not None]
    if metrics and single:
        raise InvalidParameterCombination(f"The parameters Metrics and {single[0]} are mutually exclusive.")
    if body.get("ThresholdMetricId") is not None or body["ComparisonOperator"] not in COMPARISONS:
        raise InvalidParameterValue("Anomaly detection alarms (ThresholdMetricId, "
                                    f"{body['ComparisonOperator']}) are not supported by mainsail.")
    if body.get("Threshold") is None:
        raise InvalidParameterCombination("The parameter Threshold is required unless ThresholdMetricId is given.")
    if not metrics:
        for required in ("MetricName", "Namespace", "Period"):
            if body.get(required) is None:
                raise InvalidParameterCombination(f"The parameter {required} is required unless Metrics is given.")
        if (body.get("Statistic") is None) == (body.get("ExtendedStatistic") is None):
            raise InvalidParameterCombination("Exactly one of the parameters Statistic and ExtendedStatistic "
                                              "must be specified.")
        if body.get("ExtendedStatistic") is not None and percentile(body["ExtendedStatistic"]) is None:
            raise InvalidParameterValue(f"The value {body['ExtendedStatistic']} for parameter ExtendedStatistic "
                                        "is not supported.")
        check_period(int(body["Period"]))
    else:
        returning = [m for m in metrics if m.get("ReturnData", True)]
        if len(returning) != 1:
            raise InvalidParameterValue("Exactly one element of the metrics list should return data.")
    if int(body.get("DatapointsToAlarm") or 1) > int(body["EvaluationPeriods"]):
        raise InvalidParameterValue("DatapointsToAlarm must be less than or equal to EvaluationPeriods.")
    if body.get("TreatMissingData", "missing") not in TREAT_MISSING:
        raise InvalidParameterValue(f"The value {body['TreatMissingData']} for parameter TreatMissingData is "
                                    f"invalid: it must be one of {', '.join(TREAT_MISSING)}.")


def _page(items: list[dict[str, Any]], body: Mapping[str, Any],
          default: int) -> tuple[list[dict[str, Any]], str | None]:
    offset = token_offset(body.get("NextToken"), bad_next_token)
    limit = int(body.get("MaxRecords") or default)
    more = offset + limit < len(items)
    token = offset_token(offset + limit) if more else None
    return items[offset:offset + limit], token


class Alarms:
    """The alarm operations over ``store``; ``on_transition`` (set by the evaluator) gets each state change."""

    def __init__(self, store: AlarmStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.on_transition: Callable[[Transition], None] | None = None

    def put_metric_alarm(self, body: Mapping[str, Any], region: str) -> dict[str, Any]:
        _check_alarm(body)
        name = str(body["AlarmName"])
        now = self.clock()
        alarm = self.store.get(name)
        created = alarm is None
        if alarm is None:
            if self.store.count() >= MAX_ALARMS:
                raise LimitExceeded(f"The maximum number of alarms ({MAX_ALARMS}) has been reached.")
            alarm = {"AlarmName": name, "AlarmArn": f"arn:aws:cloudwatch:{region}:{ACCOUNT}:alarm:{name}",
                     "StateValue": "INSUFFICIENT_DATA", "StateReason": "Unchecked: Initial alarm creation",
                     "StateUpdatedTimestamp": now, "StateTransitionedTimestamp": now}
        for key in _CONFIG:
            alarm.pop(key, None)
        alarm.update({k: body[k] for k in _CONFIG if body.get(k) is not None})
        alarm["ActionsEnabled"] = body.get("ActionsEnabled", True)
        alarm["TreatMissingData"] = body.get("TreatMissingData", "missing")
        alarm["AlarmConfigurationUpdatedTimestamp"] = now
        for key in ("OKActions", "AlarmActions", "InsufficientDataActions", "Dimensions"):
            alarm.setdefault(key, [])
        self.store.put(alarm)
        self.store.add_history({
            "AlarmName": name, "AlarmType": "MetricAlarm", "Timestamp": now, "HistoryItemType": "ConfigurationUpdate",
            "HistorySummary": f"Alarm \"{name}\" {'created' if created else 'updated'}",
            "HistoryData": json.dumps({"version": "1.0", "type": "Create" if created else "Update",
                                       "createdAlarm" if created else "updatedAlarm": {
                                           k: alarm[k] for k in ("AlarmName", "ComparisonOperator", "Threshold",
                                                                 "EvaluationPeriods") if k in alarm}})})
        return {}

    def describe_alarms(self, body: Mapping[str, Any]) -> dict[str, Any]:
        names, prefix = body.get("AlarmNames"), body.get("AlarmNamePrefix")
        if names and prefix:
            raise InvalidParameterCombination("The parameters AlarmNames and AlarmNamePrefix are mutually exclusive.")
        types = body.get("AlarmTypes") or ["MetricAlarm"]
        alarms = self.store.all() if "MetricAlarm" in types else []
        state, action = body.get("StateValue"), body.get("ActionPrefix")
        alarms = [a for a in alarms
                  if (not names or a["AlarmName"] in names) and (not prefix or a["AlarmName"].startswith(prefix))
                  and (not state or a["StateValue"] == state)
                  and (not action or any(arn.startswith(action) for key in ("OKActions", "AlarmActions",
                                                                            "InsufficientDataActions")
                                         for arn in a.get(key, [])))]
        page, token = _page(alarms, body, 50)
        out: dict[str, Any] = {"MetricAlarms": page, "CompositeAlarms": []}
        if token:
            out["NextToken"] = token
        return out

    def describe_alarms_for_metric(self, body: Mapping[str, Any]) -> dict[str, Any]:
        dims = sorted((d["Name"], d["Value"]) for d in body.get("Dimensions") or [])
        alarms = []
        for alarm in self.store.all():
            if alarm.get("Namespace") != body["Namespace"] or alarm.get("MetricName") != body["MetricName"]:
                continue
            if body.get("Dimensions") is not None and sorted(
                    (d["Name"], d["Value"]) for d in alarm.get("Dimensions", [])) != dims:
                continue
            if any(body.get(k) is not None and alarm.get(k) != body[k]
                   for k in ("Statistic", "ExtendedStatistic", "Period", "Unit")):
                continue
            alarms.append(alarm)
        return {"MetricAlarms": alarms}

    def delete_alarms(self, body: Mapping[str, Any]) -> dict[str, Any]:
        names = list(body["AlarmNames"])
        missing = [n for n in names if self.store.get(n) is None]
        if missing:
            raise ResourceNotFound(f"{len(missing)} of the alarms could not be found: {', '.join(missing)}")
        self.store.delete(names)
        return {}

    def set_alarm_state(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = str(body["AlarmName"])
        alarm = self.store.get(name)
        if alarm is None:
            raise ResourceNotFound(f"Alarm {name} not found")
        data = body.get("StateReasonData")
        if data is not None:
            try:
                json.loads(data)
            except ValueError:
                raise InvalidFormat("Unable to parse StateReasonData: it must be JSON.") from None
        self.set_state(alarm, str(body["StateValue"]), str(body["StateReason"]), data)
        return {}

    def set_state(self, alarm: dict[str, Any], state: str, reason: str, reason_data: str | None,
                  repeat: bool = False) -> None:
        """Move ``alarm`` to ``state`` (recording the history item) and tell ``on_transition``; with ``repeat``,
        an alarm already in ``state`` is told about too (without a history item), for repeating actions."""
        fresh = self.store.get(alarm["AlarmName"])  # not the caller's copy: a PutMetricAlarm may have come since
        if fresh is None:  # deleted meanwhile
            return
        alarm = fresh
        old = alarm["StateValue"]
        if old != state:
            now = self.clock()
            alarm.update({"StateValue": state, "StateReason": reason, "StateUpdatedTimestamp": now,
                          "StateTransitionedTimestamp": now})
            if reason_data is None:
                alarm.pop("StateReasonData", None)
            else:
                alarm["StateReasonData"] = reason_data
            self.store.put(alarm)
            self.store.add_history({
                "AlarmName": alarm["AlarmName"], "AlarmType": "MetricAlarm", "Timestamp": now,
                "HistoryItemType": "StateUpdate", "HistorySummary": f"Alarm updated from {old} to {state}",
                "HistoryData": json.dumps({"version": "1.0",
                                           "oldState": {"stateValue": old},
                                           "newState": {"stateValue": state, "stateReason": reason,
                                                        **({"stateReasonData": json.loads(reason_data)}
                                                           if reason_data else {})}})})
        elif not repeat:
            return
        if self.on_transition is not None:
            self.on_transition(Transition(alarm, old, state, reason_data))

    def record_action(self, alarm_name: str, arn: str, failure: str | None) -> None:
        summary = (f"Successfully executed action {arn}" if failure is None
                   else f"Failed to execute action {arn}: {failure}")
        self.store.add_history({"AlarmName": alarm_name, "AlarmType": "MetricAlarm", "Timestamp": self.clock(),
                                "HistoryItemType": "Action", "HistorySummary": summary,
                                "HistoryData": json.dumps({"actionArn": arn, "error": failure})})

    def describe_alarm_history(self, body: Mapping[str, Any]) -> dict[str, Any]:
        types = body.get("AlarmTypes") or ["MetricAlarm"]
        newest_first = body.get("ScanBy", "TimestampDescending") != "TimestampAscending"
        items = self.store.history(body.get("AlarmName"), body.get("HistoryItemType"), body.get("StartDate"),
                                   body.get("EndDate"), newest_first)
        items = items if "MetricAlarm" in types else []
        page, token = _page(items, body, 100)
        out: dict[str, Any] = {"AlarmHistoryItems": page}
        if token:
            out["NextToken"] = token
        return out

    def set_actions_enabled(self, body: Mapping[str, Any], enabled: bool) -> dict[str, Any]:
        for name in body["AlarmNames"]:
            alarm = self.store.get(name)
            if alarm is not None:
                alarm["ActionsEnabled"] = enabled
                self.store.put(alarm)
        return {}
