"""What Application Auto Scaling keeps in the control plane's :class:`~mainsail.hosting.store.StateStore`:
scalable targets (by resource id), scaling policies and scheduled actions (by resource id and name) and
scaling activities (by resource id and start time), each record in the Describe* shape plus internal keys
that start with ``_``. Also the identifiers every operation checks: the namespace, the resource id and the
scalable dimension, and the ARNs built from them."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from mainsail.aws.errors import ValidationException
from mainsail.aws.identity import ACCOUNT
from mainsail.hosting.store import Record, StateStore

TARGET = "scaling-target"
POLICY = "scaling-policy"
SCHEDULED = "scheduled-action"
ACTIVITY = "scaling-activity"

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
ROLE = (f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")
#: activities kept per scalable target (AWS keeps six weeks of them)
MAX_ACTIVITIES = 500
_RESOURCE_RE = re.compile(r"endpoint/([a-zA-Z0-9](?:-*[a-zA-Z0-9])*)/variant/([a-zA-Z0-9](?:-*[a-zA-Z0-9])*)")


@dataclass(frozen=True)
class Variant:
    """The endpoint variant a resource id (``endpoint/<endpoint>/variant/<variant>``) names."""

    endpoint: str
    variant: str

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.endpoint}/variant/{self.variant}"


def check_namespace(body: dict[str, Any]) -> None:
    """ValidationException unless ``ServiceNamespace`` is sagemaker (the one mainsail scales)."""
    namespace = body.get("ServiceNamespace")
    if namespace != NAMESPACE:
        raise ValidationException(f"Unsupported service namespace {namespace}: mainsail scales SageMaker endpoint "
                                  "variants only (ServiceNamespace sagemaker).")


def check_dimension(body: dict[str, Any]) -> None:
    dimension = body.get("ScalableDimension")
    if dimension is not None and dimension != DIMENSION:
        raise ValidationException(f"Unsupported scalable dimension {dimension} for service namespace sagemaker: "
                                  f"mainsail scales {DIMENSION} only.")


def variant_of(body: dict[str, Any]) -> Variant:
    """The variant an input's ServiceNamespace / ResourceId / ScalableDimension name (all three checked)."""
    check_namespace(body)
    check_dimension(body)
    resource_id = str(body.get("ResourceId"))
    match = _RESOURCE_RE.fullmatch(resource_id)
    if match is None:
        raise ValidationException(f"Unsupported resource ID {resource_id} for service namespace sagemaker: it must "
                                  "be endpoint/<endpoint-name>/variant/<variant-name>.")
    return Variant(match.group(1), match.group(2))


def policy_key(resource_id: str, name: str) -> str:
    return f"{resource_id}|{name}"


def target_arn(region: str) -> str:
    return f"arn:aws:application-autoscaling:{region}:{ACCOUNT}:scalable-target/{uuid.uuid4().hex}"


def policy_arn(region: str, resource_id: str, name: str) -> str:
    return (f"arn:aws:autoscaling:{region}:{ACCOUNT}:scalingPolicy:{uuid.uuid4()}:"
            f"resource/{NAMESPACE}/{resource_id}:policyName/{name}")


def scheduled_arn(region: str, resource_id: str, name: str) -> str:
    return (f"arn:aws:autoscaling:{region}:{ACCOUNT}:scheduledAction:{uuid.uuid4()}:"
            f"resource/{NAMESPACE}/{resource_id}:scheduledActionName/{name}")


def public(record: Record) -> dict[str, Any]:
    """A record in its Describe* shape: without the internal ``_`` keys."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def start_activity(store: StateStore, target: Record, capacity: int, cause: str, now: float | None = None,
                   **internal: Any) -> Record:
    """Record an InProgress activity setting ``target``'s variant to ``capacity`` instances (the scaler
    applies it), dropping the target's oldest activities past ``MAX_ACTIVITIES``."""
    now = time.time() if now is None else now
    activity = {"ActivityId": str(uuid.uuid4()), "ServiceNamespace": NAMESPACE,
                "ResourceId": target["ResourceId"], "ScalableDimension": DIMENSION,
                "Description": f"Setting desired instance count to {capacity}.", "Cause": cause,
                "StartTime": now, "StatusCode": "InProgress", "_Capacity": capacity,
                "_Region": target.get("_Region", "us-east-1"), **{f"_{k}": v for k, v in internal.items()}}
    store.put(ACTIVITY, activity_name(activity), activity)
    mine = [a for a in store.list(ACTIVITY) if a["ResourceId"] == target["ResourceId"]]
    for old in mine[:max(0, len(mine) - MAX_ACTIVITIES)]:
        store.delete(ACTIVITY, activity_name(old))
    return activity


def activity_name(activity: Record) -> str:
    """An activity's store name: its target, then its start time, so that listing sorts them by time."""
    return f"{activity['ResourceId']}|{float(activity['StartTime']):020.6f}|{activity['ActivityId']}"


def finish_activity(store: StateStore, activity: Record, status: str, message: str,
                    now: float | None = None) -> None:
    """Mark ``activity`` Successful or Failed with ``message``."""
    def done(current: Record) -> Record:
        current.update({"StatusCode": status, "StatusMessage": message,
                        "EndTime": time.time() if now is None else now})
        return current

    store.update(ACTIVITY, activity_name(activity), done)


def in_progress(store: StateStore, resource_id: str | None = None) -> list[Record]:
    return [a for a in store.list(ACTIVITY) if a["StatusCode"] == "InProgress"
            and (resource_id is None or a["ResourceId"] == resource_id)]
