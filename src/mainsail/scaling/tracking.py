"""Target tracking's own CloudWatch alarms, made as Application Auto Scaling makes them for a SageMaker
variant: ``TargetTracking-endpoint/<e>/variant/<v>-AlarmHigh-<uuid>`` (three one-minute datapoints above the
target: scale out) and, unless scale-in is disabled, ``...-AlarmLow-<uuid>`` (fifteen below 90 % of it:
scale in), both acting on the policy's ARN."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from mainsail.aws.errors import ValidationException
from mainsail.scaling.records import Variant

#: the predefined metrics mainsail records (``mainsail.routing.recorder``): name -> (namespace, metric, statistic)
PREDEFINED = {"SageMakerVariantInvocationsPerInstance": ("AWS/SageMaker", "InvocationsPerInstance", "Sum")}
HIGH_PERIODS, LOW_PERIODS, LOW_FRACTION, PERIOD = 3, 15, 0.9, 60


def _metric(variant: Variant, config: Mapping[str, Any]) -> dict[str, Any]:
    """The PutMetricAlarm members naming the policy's metric."""
    predefined = config.get("PredefinedMetricSpecification")
    custom: Mapping[str, Any] = config.get("CustomizedMetricSpecification") or {}
    if (predefined is None) == (not custom):
        raise ValidationException("Exactly one of PredefinedMetricSpecification and CustomizedMetricSpecification "
                                  "must be specified.")
    if predefined is not None:
        kind = predefined.get("PredefinedMetricType")
        if kind not in PREDEFINED:
            raise ValidationException(f"Predefined metric type {kind} is not supported by mainsail: it records "
                                      f"{', '.join(PREDEFINED)} for SageMaker variants.")
        namespace, name, statistic = PREDEFINED[kind]
        return {"Namespace": namespace, "MetricName": name, "Statistic": statistic, "Period": PERIOD,
                "Dimensions": [{"Name": "EndpointName", "Value": variant.endpoint},
                               {"Name": "VariantName", "Value": variant.variant}]}
    if custom.get("Metrics"):
        queries = []
        for query in custom["Metrics"]:
            out = {k: query[k] for k in ("Id", "Expression", "Label", "ReturnData") if k in query}
            if query.get("MetricStat"):
                stat = query["MetricStat"]
                out["MetricStat"] = {"Metric": stat["Metric"], "Stat": stat["Stat"], "Period": PERIOD,
                                     **({"Unit": stat["Unit"]} if stat.get("Unit") else {})}
            queries.append(out)
        return {"Metrics": queries}
    for member in ("MetricName", "Namespace", "Statistic"):
        if not custom.get(member):
            raise ValidationException(f"CustomizedMetricSpecification must specify {member} (or Metrics).")
    metric = {"Namespace": custom["Namespace"], "MetricName": custom["MetricName"], "Statistic": custom["Statistic"],
              "Period": PERIOD, "Dimensions": list(custom.get("Dimensions") or [])}
    if custom.get("Unit"):
        metric["Unit"] = custom["Unit"]
    return metric


def alarm_bodies(variant: Variant, policy_arn: str, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """PutMetricAlarm inputs for a target tracking policy: its AlarmHigh, then (unless DisableScaleIn) its
    AlarmLow. ValidationException for a metric mainsail cannot track."""
    target = float(config["TargetValue"])
    metric = _metric(variant, config)
    prefix = f"TargetTracking-{variant.resource_id}"
    description = f"DO NOT EDIT OR DELETE. For TargetTrackingScaling policy {policy_arn}."
    common = {**metric, "AlarmActions": [policy_arn], "AlarmDescription": description, "ActionsEnabled": True}
    bodies = [{**common, "AlarmName": f"{prefix}-AlarmHigh-{uuid.uuid4()}", "EvaluationPeriods": HIGH_PERIODS,
               "DatapointsToAlarm": HIGH_PERIODS, "Threshold": target, "ComparisonOperator": "GreaterThanThreshold"}]
    if not config.get("DisableScaleIn"):
        bodies.append({**common, "AlarmName": f"{prefix}-AlarmLow-{uuid.uuid4()}", "EvaluationPeriods": LOW_PERIODS,
                       "DatapointsToAlarm": LOW_PERIODS, "Threshold": round(target * LOW_FRACTION, 10),
                       "ComparisonOperator": "LessThanThreshold"})
    return bodies


def is_high(alarm_name: str) -> bool:
    """Whether a target tracking alarm is the policy's AlarmHigh (scale out) rather than its AlarmLow."""
    return "-AlarmHigh-" in alarm_name
