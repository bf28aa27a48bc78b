"""Scaling policies and activities: PutScalingPolicy (TargetTrackingScaling with the alarms it manages,
StepScaling), DescribeScalingPolicies, DeleteScalingPolicy, DescribeScalingActivities."""

from __future__ import annotations

import time
from typing import Any

from mainsail.aws.errors import ValidationException
from mainsail.scaling import adjust, tracking
from mainsail.scaling.calls import ScalingCall, not_registered, page
from mainsail.scaling.errors import LimitExceededException, ObjectNotFoundException
from mainsail.scaling.records import (
    ACTIVITY,
    DIMENSION,
    NAMESPACE,
    POLICY,
    TARGET,
    check_dimension,
    check_namespace,
    policy_arn,
    policy_key,
    public,
    variant_of,
)

MAX_POLICIES = 50
_CONFIGS = {"TargetTrackingScaling": "TargetTrackingScalingPolicyConfiguration",
            "StepScaling": "StepScalingPolicyConfiguration"}


def _check_config(policy_type: str, body: dict[str, Any]) -> dict[str, Any]:
    if policy_type not in _CONFIGS:
        raise ValidationException(f"Policy type {policy_type} is not supported by mainsail for SageMaker variants: "
                                  "use TargetTrackingScaling or StepScaling.")
    member = _CONFIGS[policy_type]
    other = next(m for t, m in _CONFIGS.items() if t != policy_type)
    config = body.get(member)
    if config is None:
        raise ValidationException(f"{member} is required for a policy of type {policy_type}.")
    if body.get(other) is not None:
        raise ValidationException(f"{other} cannot be specified for a policy of type {policy_type}.")
    config = dict(config)
    if policy_type == "TargetTrackingScaling":
        if float(config["TargetValue"]) <= 0:
            raise ValidationException("TargetValue must be greater than 0.")
        return config
    if config.get("AdjustmentType") not in adjust.ADJUSTMENT_TYPES:
        raise ValidationException("AdjustmentType is required for a StepScaling policy: ChangeInCapacity, "
                                  "PercentChangeInCapacity or ExactCapacity.")
    if config.get("MinAdjustmentMagnitude") is not None and config["AdjustmentType"] != "PercentChangeInCapacity":
        raise ValidationException("MinAdjustmentMagnitude may only be specified with the adjustment type "
                                  "PercentChangeInCapacity.")
    adjust.check_steps(config.get("StepAdjustments"))
    return config


def put_scaling_policy(call: ScalingCall) -> dict[str, Any]:
    body = call.body
    variant = variant_of(body)
    name = str(body["PolicyName"])
    if call.store.get(TARGET, variant.resource_id) is None:
        raise ObjectNotFoundException(not_registered(variant.resource_id))
    policy_type = str(body.get("PolicyType") or "StepScaling")
    config = _check_config(policy_type, body)
    key = policy_key(variant.resource_id, name)
    existing = call.store.get(POLICY, key)
    if existing is None and sum(1 for p in call.store.list(POLICY)
                                if p["ResourceId"] == variant.resource_id) >= MAX_POLICIES:
        raise LimitExceededException(f"A scalable target can have at most {MAX_POLICIES} scaling policies.")
    arn = existing["PolicyARN"] if existing else policy_arn(call.region, variant.resource_id, name)
    bodies = tracking.alarm_bodies(variant, arn, config) if policy_type == "TargetTrackingScaling" else []
    alarms = call.scaler.alarms
    if existing is not None and existing["PolicyType"] == "TargetTrackingScaling":
        call.scaler.delete_alarms([a["AlarmName"] for a in existing.get("Alarms", [])])
    made = []
    for alarm in bodies:
        alarms.put_metric_alarm(alarm, call.region)
        stored = alarms.store.get(alarm["AlarmName"]) or {}
        made.append({"AlarmName": alarm["AlarmName"], "AlarmARN": stored.get("AlarmArn", "")})
    record = {"PolicyARN": arn, "PolicyName": name, "ServiceNamespace": NAMESPACE, "ResourceId": variant.resource_id,
              "ScalableDimension": DIMENSION, "PolicyType": policy_type, _CONFIGS[policy_type]: config,
              "Alarms": made, "CreationTime": existing["CreationTime"] if existing else time.time(), "_Key": key}
    call.store.put(POLICY, key, record)
    call.scaler.watch(record)
    out: dict[str, Any] = {"PolicyARN": arn}
    if made:
        out["Alarms"] = made
    return out


def _step_alarms(call: ScalingCall, arn: str) -> list[dict[str, str]]:
    """The alarms acting on a step scaling policy: those whose actions hold its ARN."""
    return [{"AlarmName": a["AlarmName"], "AlarmARN": a["AlarmArn"]} for a in call.scaler.alarms.store.all()
            if any(arn in a.get(k, []) for k in ("AlarmActions", "OKActions", "InsufficientDataActions"))]


def describe_scaling_policies(call: ScalingCall) -> dict[str, Any]:
    body = call.body
    check_namespace(body)
    check_dimension(body)
    names, resource = body.get("PolicyNames"), body.get("ResourceId")
    policies = [p for p in call.store.list(POLICY)
                if (not names or p["PolicyName"] in names) and (not resource or p["ResourceId"] == resource)]
    shown = [public(p) if p["PolicyType"] == "TargetTrackingScaling"
             else {**public(p), "Alarms": _step_alarms(call, p["PolicyARN"])} for p in policies]
    return page(call, shown, "ScalingPolicies")


def delete_scaling_policy(call: ScalingCall) -> dict[str, Any]:
    variant = variant_of(call.body)
    name = str(call.body["PolicyName"])
    policy = call.store.get(POLICY, policy_key(variant.resource_id, name))
    if policy is None:
        raise ObjectNotFoundException(f"No scaling policy found for service namespace: sagemaker, resource ID: "
                                      f"{variant.resource_id}, scalable dimension: {DIMENSION}, policy name: {name}")
    call.scaler.delete_policy(policy)
    return {}


def describe_scaling_activities(call: ScalingCall) -> dict[str, Any]:
    body = call.body
    check_namespace(body)
    check_dimension(body)
    resource = body.get("ResourceId")
    activities = [public(a) for a in reversed(call.store.list(ACTIVITY))
                  if not resource or a["ResourceId"] == resource]
    activities.sort(key=lambda a: float(a["StartTime"]), reverse=True)
    return page(call, activities, "ScalingActivities")


OPERATIONS = {
    "PutScalingPolicy": put_scaling_policy,
    "DescribeScalingPolicies": describe_scaling_policies,
    "DeleteScalingPolicy": delete_scaling_policy,
    "DescribeScalingActivities": describe_scaling_activities,
}
