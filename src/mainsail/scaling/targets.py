"""Scalable targets and scheduled actions: RegisterScalableTarget, DescribeScalableTargets,
DeregisterScalableTarget, PutScheduledAction, DescribeScheduledActions, DeleteScheduledAction."""

from __future__ import annotations

import time
from typing import Any

from mainsail.aws.errors import ValidationException
from mainsail.hosting.endpoints import ENDPOINT
from mainsail.scaling import schedules
from mainsail.scaling.calls import ScalingCall, not_registered, page
from mainsail.scaling.errors import LimitExceededException, ObjectNotFoundException
from mainsail.scaling.records import (
    DIMENSION,
    NAMESPACE,
    ROLE,
    SCHEDULED,
    TARGET,
    check_dimension,
    check_namespace,
    policy_key,
    public,
    scheduled_arn,
    target_arn,
    variant_of,
)

MAX_SCHEDULED_ACTIONS = 200
SUSPENDED = ("DynamicScalingInSuspended", "DynamicScalingOutSuspended", "ScheduledScalingSuspended")


def _check_bounds(minimum: Any, maximum: Any) -> None:
    if minimum is not None and int(minimum) < 1:
        raise ValidationException("MinCapacity of a SageMaker variant must be at least 1.")
    if minimum is not None and maximum is not None and int(maximum) < int(minimum):
        raise ValidationException("Maximum capacity cannot be less than minimum capacity")


def register_scalable_target(call: ScalingCall) -> dict[str, Any]:
    body = call.body
    variant = variant_of(body)
    endpoint = call.store.get(ENDPOINT, variant.endpoint)
    if endpoint is None or all(pv["VariantName"] != variant.variant for pv in endpoint["ProductionVariants"]):
        raise ValidationException(f"The endpoint variant {variant.resource_id} does not exist: endpoint "
                                  f"'{variant.endpoint}' has no variant '{variant.variant}'.")
    existing = call.store.get(TARGET, variant.resource_id) or {}
    if not existing and (body.get("MinCapacity") is None or body.get("MaxCapacity") is None):
        raise ValidationException("MinCapacity and MaxCapacity are required to register a new scalable target.")
    minimum = int(body["MinCapacity"] if body.get("MinCapacity") is not None else existing["MinCapacity"])
    maximum = int(body["MaxCapacity"] if body.get("MaxCapacity") is not None else existing["MaxCapacity"])
    _check_bounds(minimum, maximum)
    suspended = {k: False for k in SUSPENDED}
    suspended.update(existing.get("SuspendedState") or {})
    suspended.update({k: bool(v) for k, v in (body.get("SuspendedState") or {}).items() if k in SUSPENDED})
    record = existing or {"ServiceNamespace": NAMESPACE, "ResourceId": variant.resource_id,
                          "ScalableDimension": DIMENSION, "CreationTime": time.time(),
                          "ScalableTargetARN": target_arn(call.region), "_Region": call.region}
    record.update({"MinCapacity": minimum, "MaxCapacity": maximum, "SuspendedState": suspended,
                   "RoleARN": body.get("RoleARN") or record.get("RoleARN") or ROLE})
    call.store.put(TARGET, variant.resource_id, record)
    call.scaler.enforce_bounds(variant.resource_id)
    return {"ScalableTargetARN": record["ScalableTargetARN"]}


def describe_scalable_targets(call: ScalingCall) -> dict[str, Any]:
    check_namespace(call.body)
    check_dimension(call.body)
    wanted = call.body.get("ResourceIds")
    targets = [public(t) for t in call.store.list(TARGET) if not wanted or t["ResourceId"] in wanted]
    return page(call, targets, "ScalableTargets")


def deregister_scalable_target(call: ScalingCall) -> dict[str, Any]:
    variant = variant_of(call.body)
    if call.store.get(TARGET, variant.resource_id) is None:
        raise ObjectNotFoundException(f"No scalable target found for service namespace: sagemaker, resource ID: "
                                      f"{variant.resource_id}, scalable dimension: {DIMENSION}")
    call.scaler.forget(variant.resource_id)
    return {}


def put_scheduled_action(call: ScalingCall) -> dict[str, Any]:
    body = call.body
    variant = variant_of(body)
    name = str(body["ScheduledActionName"])
    if call.store.get(TARGET, variant.resource_id) is None:
        raise ObjectNotFoundException(not_registered(variant.resource_id))
    key = policy_key(variant.resource_id, name)
    existing = call.store.get(SCHEDULED, key)
    if existing is None:
        if sum(1 for a in call.store.list(SCHEDULED) if a["ResourceId"] == variant.resource_id) \
                >= MAX_SCHEDULED_ACTIONS:
            raise LimitExceededException(f"A scalable target can have at most {MAX_SCHEDULED_ACTIONS} "
                                         "scheduled actions.")
        if not body.get("Schedule"):
            raise ValidationException("Schedule is required to create a scheduled action.")
    now = time.time()
    record = existing or {"ScheduledActionName": name, "ServiceNamespace": NAMESPACE,
                          "ResourceId": variant.resource_id, "ScalableDimension": DIMENSION, "CreationTime": now,
                          "ScheduledActionARN": scheduled_arn(call.region, variant.resource_id, name), "_Key": key}
    for member in ("Schedule", "Timezone", "StartTime", "EndTime", "ScalableTargetAction"):
        if body.get(member) is not None:
            record[member] = body[member]
    schedules.parse(record["Schedule"])
    schedules.zone(record.get("Timezone"))
    bounds = record.get("ScalableTargetAction") or {}
    _check_bounds(bounds.get("MinCapacity"), bounds.get("MaxCapacity"))
    if record.get("StartTime") is not None and record.get("EndTime") is not None \
            and float(record["EndTime"]) <= float(record["StartTime"]):
        raise ValidationException("EndTime must be later than StartTime.")
    record["_NextRun"] = call.scaler.next_run(record, now)
    call.store.put(SCHEDULED, key, record)
    return {}


def describe_scheduled_actions(call: ScalingCall) -> dict[str, Any]:
    body = call.body
    check_namespace(body)
    check_dimension(body)
    names, resource = body.get("ScheduledActionNames"), body.get("ResourceId")
    actions = [public(a) for a in call.store.list(SCHEDULED)
               if (not names or a["ScheduledActionName"] in names) and (not resource or a["ResourceId"] == resource)]
    return page(call, actions, "ScheduledActions")


def delete_scheduled_action(call: ScalingCall) -> dict[str, Any]:
    variant = variant_of(call.body)
    name = str(call.body["ScheduledActionName"])
    if not call.store.delete(SCHEDULED, policy_key(variant.resource_id, name)):
        raise ObjectNotFoundException(f"No scheduled action found for service namespace: sagemaker, resource ID: "
                                      f"{variant.resource_id}, scalable dimension: {DIMENSION}, scheduled action "
                                      f"name: {name}")
    return {}


OPERATIONS = {
    "RegisterScalableTarget": register_scalable_target,
    "DescribeScalableTargets": describe_scalable_targets,
    "DeregisterScalableTarget": deregister_scalable_target,
    "PutScheduledAction": put_scheduled_action,
    "DescribeScheduledActions": describe_scheduled_actions,
    "DeleteScheduledAction": delete_scheduled_action,
}
