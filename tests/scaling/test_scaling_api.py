"""The Application Auto Scaling API through the real boto3 client: AWS's error codes for bad input,
Describe* filters and paging, scheduled actions that act (on in-memory instances), and a restart of the
control plane, with real instances, that keeps targets, policies, scheduled actions and the alarms' way
to them."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.control.helpers import WAIT, Plane, deploy, make_model_dir
from tests.scaling.conftest import (
    DIMENSION,
    ENDPOINT,
    INFERENCE_SLOW,
    RESOURCE,
    error_code,
    settled_activities,
    wait_for,
)

pytestmark = pytest.mark.slow
TARGET = {"ServiceNamespace": "sagemaker", "ResourceId": RESOURCE, "ScalableDimension": DIMENSION}
STEP = {"AdjustmentType": "ChangeInCapacity", "StepAdjustments": [{"MetricIntervalLowerBound": 0.0,
                                                                   "ScalingAdjustment": 1}]}


def _raw(plane: Plane, operation: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(plane.url + "/", content=json.dumps(body), headers={
        "X-Amz-Target": f"AnyScaleFrontendService.{operation}", "Content-Type": "application/x-amz-json-1.1"})


def test_bad_input_answers_aws_errors(fake_plane: Plane) -> None:
    plane = fake_plane
    aas = plane.client("application-autoscaling")
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("ValidationException", "register_scalable_target", {**TARGET, "MinCapacity": 3, "MaxCapacity": 2}),
        ("ValidationException", "register_scalable_target", {**TARGET, "ResourceId": "endpoint/nope/variant/AllTraffic",
                                                             "MinCapacity": 1, "MaxCapacity": 2}),
        ("ValidationException", "register_scalable_target", {**TARGET, "MinCapacity": 1}),  # new: both bounds
        ("ValidationException", "register_scalable_target", {
            "ServiceNamespace": "ecs", "ResourceId": "service/default/web",
            "ScalableDimension": "ecs:service:DesiredCount", "MinCapacity": 1, "MaxCapacity": 2}),
        ("ValidationException", "describe_scalable_targets", {"ServiceNamespace": "dynamodb"}),
        ("ObjectNotFoundException", "put_scaling_policy", {**TARGET, "PolicyName": "p", "PolicyType": "StepScaling",
                                                           "StepScalingPolicyConfiguration": STEP}),
        ("ObjectNotFoundException", "deregister_scalable_target", TARGET),
        ("ObjectNotFoundException", "delete_scaling_policy", {**TARGET, "PolicyName": "p"}),
        ("ObjectNotFoundException", "delete_scheduled_action", {**TARGET, "ScheduledActionName": "s"}),
        ("InvalidNextTokenException", "describe_scalable_targets", {"ServiceNamespace": "sagemaker",
                                                                    "NextToken": "not-a-token"}),
    ]
    for code, operation, kwargs in cases:
        with pytest.raises(ClientError) as exc:
            getattr(aas, operation)(**kwargs)
        assert error_code(exc) == code, (operation, kwargs, exc.value.response["Error"])

    aas.register_scalable_target(**TARGET, MinCapacity=1, MaxCapacity=2)
    bad_configs: list[dict[str, Any]] = [
        {"PolicyType": "StepScaling", "StepScalingPolicyConfiguration": {**STEP, "StepAdjustments": [
            {"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 5.0, "ScalingAdjustment": 1},
            {"MetricIntervalLowerBound": 3.0, "ScalingAdjustment": 2}]}},  # overlapping steps
        {"PolicyType": "StepScaling", "StepScalingPolicyConfiguration": {**STEP, "MinAdjustmentMagnitude": 2}},
        {"PolicyType": "TargetTrackingScaling"},  # no configuration
        {"PolicyType": "TargetTrackingScaling", "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 5.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}}},
    ]
    for config in bad_configs:
        with pytest.raises(ClientError) as exc:
            aas.put_scaling_policy(**TARGET, PolicyName="p", **config)
        assert error_code(exc) == "ValidationException", config
    with pytest.raises(ClientError) as exc:
        aas.put_scheduled_action(**TARGET, ScheduledActionName="s", Schedule="every(5 minutes)")
    assert error_code(exc) == "ValidationException"
    with pytest.raises(ClientError) as exc:
        aas.register_scalable_target(**TARGET, MinCapacity=3)  # an update: above the kept MaxCapacity 2
    assert (error_code(exc), exc.value.response["Error"]["Message"]) == (
        "ValidationException", "Maximum capacity cannot be less than minimum capacity")

    # what botocore does not check on the client side, the model's check does on the server
    answer = _raw(plane, "PutScalingPolicy", {**TARGET, "PolicyName": "p", "PolicyType": "Sideways"})
    assert answer.status_code == 400 and answer.json()["__type"] == "ValidationException"
    assert "policyType" in answer.json()["Message"]
    answer = _raw(plane, "DescribeNothing", {})
    assert answer.json()["__type"] == "UnknownOperationException"


def test_describe_filters_and_pages(fake_plane: Plane) -> None:
    plane = fake_plane
    aas = plane.client("application-autoscaling")
    arn = aas.register_scalable_target(**TARGET, MinCapacity=1, MaxCapacity=2)["ScalableTargetARN"]
    assert arn.startswith("arn:aws:application-autoscaling:us-east-1:123456789012:scalable-target/")
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[RESOURCE])["ScalableTargets"][0]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"], target["ScalableTargetARN"]) == (
        RESOURCE, 1, 2, arn)
    assert "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint" in target["RoleARN"]
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker",
                                         ResourceIds=["endpoint/other/variant/A"])["ScalableTargets"] == []
    for name in ("a", "b", "c"):
        aas.put_scaling_policy(**TARGET, PolicyName=name, PolicyType="StepScaling",
                               StepScalingPolicyConfiguration=STEP)
    first = aas.describe_scaling_policies(ServiceNamespace="sagemaker", MaxResults=2)
    rest = aas.describe_scaling_policies(ServiceNamespace="sagemaker", MaxResults=2, NextToken=first["NextToken"])
    assert [p["PolicyName"] for p in first["ScalingPolicies"] + rest["ScalingPolicies"]] == ["a", "b", "c"]
    assert "NextToken" not in rest
    assert [p["PolicyName"] for p in aas.describe_scaling_policies(
        ServiceNamespace="sagemaker", PolicyNames=["b"])["ScalingPolicies"]] == ["b"]
    assert first["ScalingPolicies"][0]["PolicyARN"].startswith("arn:aws:autoscaling:us-east-1:123456789012:"
                                                              "scalingPolicy:")
    paginator = aas.get_paginator("describe_scaling_policies")
    assert sum(len(p["ScalingPolicies"]) for p in paginator.paginate(ServiceNamespace="sagemaker",
                                                                     PaginationConfig={"PageSize": 1})) == 3

    # deleting the endpoint deregisters its variants' targets, with their policies
    plane.client("sagemaker").delete_endpoint(EndpointName=ENDPOINT)
    deadline = time.monotonic() + 20
    while aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []


def test_scheduled_action_sets_bounds_and_scales(fake_plane: Plane) -> None:
    plane = fake_plane
    sm, aas = plane.client("sagemaker"), plane.client("application-autoscaling")
    aas.register_scalable_target(**TARGET, MinCapacity=1, MaxCapacity=2)
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S")
    aas.put_scheduled_action(**TARGET, ScheduledActionName="morning", Schedule=f"at({soon})",
                             ScalableTargetAction={"MinCapacity": 2, "MaxCapacity": 3})
    aas.put_scheduled_action(**TARGET, ScheduledActionName="weekdays", Schedule="cron(0 9 ? * MON-FRI *)",
                             Timezone="Europe/Paris", ScalableTargetAction={"MinCapacity": 1})
    aas.put_scheduled_action(**TARGET, ScheduledActionName="hourly", Schedule="rate(60 minutes)",
                             ScalableTargetAction={"MaxCapacity": 2})
    actions = aas.describe_scheduled_actions(ServiceNamespace="sagemaker")["ScheduledActions"]
    assert sorted(a["ScheduledActionName"] for a in actions) == ["hourly", "morning", "weekdays"]
    morning = next(a for a in actions if a["ScheduledActionName"] == "morning")
    assert morning["Schedule"] == f"at({soon})" and morning["ScalableTargetAction"] == {"MinCapacity": 2,
                                                                                       "MaxCapacity": 3}
    wait_for(sm, 2)
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 3)
    activity = settled_activities(aas)[0]
    assert (activity["Cause"], activity["Description"], activity["StatusCode"]) == (
        "scheduled action name morning was triggered", "Setting desired instance count to 2.", "Successful")
    aas.delete_scheduled_action(**TARGET, ScheduledActionName="weekdays")
    assert [a["ScheduledActionName"] for a in aas.describe_scheduled_actions(
        ServiceNamespace="sagemaker", ScheduledActionNames=["weekdays", "hourly"])["ScheduledActions"]] == ["hourly"]


def test_a_restart_keeps_targets_policies_and_alarm_actions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    monkeypatch.setenv("MAINSAIL_METRICS_TIME_SCALE", "60")
    monkeypatch.setenv("MAINSAIL_DESCRIBE_SETTLE_SECONDS", "0")
    with Plane(tmp_path) as first:
        sm, aas, cw = first.client("sagemaker"), first.client("application-autoscaling"), first.client("cloudwatch")
        deploy(sm, ENDPOINT, make_model_dir(tmp_path / "model", INFERENCE_SLOW))
        sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig=WAIT)
        aas.register_scalable_target(**TARGET, MinCapacity=1, MaxCapacity=2)
        arn = aas.put_scaling_policy(**TARGET, PolicyName="step", PolicyType="StepScaling",
                                     StepScalingPolicyConfiguration=STEP)["PolicyARN"]
        aas.put_scaling_policy(**TARGET, PolicyName="tracking", PolicyType="TargetTrackingScaling",
                               TargetTrackingScalingPolicyConfiguration={
                                   "TargetValue": 100.0, "PredefinedMetricSpecification": {
                                       "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}})
        aas.put_scheduled_action(**TARGET, ScheduledActionName="nightly", Schedule="cron(0 2 * * ? *)",
                                 ScalableTargetAction={"MinCapacity": 1, "MaxCapacity": 2})
        cw.put_metric_alarm(AlarmName="busy", Namespace="Custom/Load", MetricName="Depth", Statistic="Maximum",
                            Period=60, EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanThreshold",
                            AlarmActions=[arn])
        before = (aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"],
                  aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"],
                  aas.describe_scheduled_actions(ServiceNamespace="sagemaker")["ScheduledActions"])
    with Plane(tmp_path) as second:
        sm, aas, cw = second.client("sagemaker"), second.client("application-autoscaling"), second.client("cloudwatch")
        after = (aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"],
                 aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"],
                 aas.describe_scheduled_actions(ServiceNamespace="sagemaker")["ScheduledActions"])
        assert after == before
        assert len(cw.describe_alarms(AlarmNamePrefix="TargetTracking-")["MetricAlarms"]) == 2
        cw.set_alarm_state(AlarmName="busy", StateValue="ALARM", StateReason="testing",
                           StateReasonData=json.dumps({"recentDatapoints": [3.0], "threshold": 1.0}))
        wait_for(sm, 2)
        assert settled_activities(aas)[0]["Cause"] == "monitor alarm busy in state ALARM triggered policy step"
