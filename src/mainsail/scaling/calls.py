"""One Application Auto Scaling call (the store, CloudWatch's alarms through the scaler, the region, the
input) and the paging every Describe* operation shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mainsail.aws.errors import ValidationException
from mainsail.aws.protocol import offset_token, token_offset
from mainsail.hosting.store import StateStore
from mainsail.scaling.errors import InvalidNextTokenException
from mainsail.scaling.scaler import Scaler

#: the most results one Describe* page holds, and its default size
MAX_RESULTS = 50


@dataclass(frozen=True)
class ScalingCall:
    """One API call: the scaler (and its store), the region from the SigV4 credential scope, the JSON input."""

    scaler: Scaler
    region: str
    body: dict[str, Any]

    @property
    def store(self) -> StateStore:
        return self.scaler.store


Operation = Callable[[ScalingCall], dict[str, Any]]


def page(call: ScalingCall, items: list[dict[str, Any]], key: str, max_results: int = MAX_RESULTS) -> dict[str, Any]:
    """One page of ``items`` under ``key`` from the call's MaxResults and NextToken."""
    limit = int(call.body.get("MaxResults") or max_results)
    if limit > max_results:
        raise ValidationException(f"1 validation error detected: Value '{limit}' at 'maxResults' failed to satisfy "
                                  f"constraint: Member must have value less than or equal to {max_results}")
    offset = token_offset(call.body.get("NextToken"), lambda: InvalidNextTokenException("Invalid token"))
    out: dict[str, Any] = {key: items[offset:offset + limit]}
    if offset + limit < len(items):
        out["NextToken"] = offset_token(offset + limit)
    return out


def not_registered(resource_id: str) -> str:
    """The words of the ObjectNotFoundException for a policy or action whose target is not registered."""
    return (f"No scalable target registered for service namespace: sagemaker, resource ID: {resource_id}, "
            "scalable dimension: sagemaker:variant:DesiredInstanceCount")
