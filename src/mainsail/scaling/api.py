"""Application Auto Scaling's API on ``mainsail up``'s port: AWS JSON 1.1 operations addressed by
``X-Amz-Target: AnyScaleFrontendService.<Operation>``, each input checked against botocore's model of the
service before the operation runs, for SageMaker variants only."""

from __future__ import annotations

from typing import Any

from mainsail.aws.errors import UnknownOperationException
from mainsail.aws.shapes import InputCheck
from mainsail.scaling import policies, targets
from mainsail.scaling.calls import Operation, ScalingCall
from mainsail.scaling.scaler import Scaler

TARGET_PREFIX = "AnyScaleFrontendService."
OPERATIONS: dict[str, Operation] = {**targets.OPERATIONS, **policies.OPERATIONS}
INPUTS = InputCheck("application-autoscaling")


def is_scaling_target(target: str | None) -> bool:
    """Whether an ``X-Amz-Target`` addresses Application Auto Scaling."""
    return bool(target) and str(target).startswith(TARGET_PREFIX)


class ScalingApi:
    """The operations over ``scaler`` (its store, CloudWatch's alarms)."""

    def __init__(self, scaler: Scaler) -> None:
        self.scaler = scaler

    def call(self, target: str, body: dict[str, Any], region: str) -> dict[str, Any]:
        """Run the operation ``target`` names on ``body`` (blocking: SQLite, the model's first load)."""
        operation = OPERATIONS.get(target[len(TARGET_PREFIX):])
        if operation is None:
            raise UnknownOperationException(target)
        INPUTS.check(target[len(TARGET_PREFIX):], body)
        return operation(ScalingCall(self.scaler, region, body))
