"""Step scaling that acts, driven deterministically by SetAlarmState: the variant goes 1 -> 3 -> 1 through
UpdateEndpointWeightsAndCapacities' path while a bounded loopback load runs, and no request fails (a
scaled-in instance drains its in-flight requests before it stops)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.control.helpers import Plane
from tests.scaling.conftest import DIMENSION, ENDPOINT, RESOURCE, Load, counts, settled_activities, wait_for

pytestmark = pytest.mark.slow


def _step_policy(aas: Any, name: str, steps: list[dict[str, Any]]) -> str:
    arn: str = aas.put_scaling_policy(
        PolicyName=name, ServiceNamespace="sagemaker", ResourceId=RESOURCE, ScalableDimension=DIMENSION,
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={"AdjustmentType": "ChangeInCapacity", "Cooldown": 60,
                                        "MetricAggregationType": "Average", "StepAdjustments": steps})["PolicyARN"]
    return arn


def _alarm(cw: Any, name: str, comparison: str, policy_arn: str) -> None:
    cw.put_metric_alarm(AlarmName=name, Namespace="Custom/Load", MetricName="QueueDepth", Statistic="Average",
                        Period=60, EvaluationPeriods=1, Threshold=10.0, ComparisonOperator=comparison,
                        AlarmActions=[policy_arn])


def _breach(cw: Any, name: str, value: float) -> None:
    cw.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="testing a breach",
                       StateReasonData=json.dumps({"version": "1.0", "recentDatapoints": [value], "threshold": 10.0}))


def test_step_scaling_out_and_in_under_load(plane: Plane, endpoint: str) -> None:
    sm, aas, cw = plane.client("sagemaker"), plane.client("application-autoscaling"), plane.client("cloudwatch")
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=RESOURCE, ScalableDimension=DIMENSION,
                                 MinCapacity=1, MaxCapacity=3)
    out_arn = _step_policy(aas, "step-out", [
        {"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 5.0, "ScalingAdjustment": 1},
        {"MetricIntervalLowerBound": 5.0, "ScalingAdjustment": 2}])
    in_arn = _step_policy(aas, "step-in", [{"MetricIntervalUpperBound": 0.0, "ScalingAdjustment": -2}])
    _alarm(cw, "queue-high", "GreaterThanThreshold", out_arn)
    _alarm(cw, "queue-low", "LessThanThreshold", in_arn)
    described = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=RESOURCE)["ScalingPolicies"]
    assert {p["PolicyName"]: [a["AlarmName"] for a in p["Alarms"]] for p in described} == {
        "step-out": ["queue-high"], "step-in": ["queue-low"]}

    with Load(plane) as load:
        _breach(cw, "queue-high", 17.0)  # 7 above the threshold: the second step, +2
        seen = wait_for(sm, 3)
        assert ("Updating", 3, 1) in seen, seen  # DesiredInstanceCount moves first, then CurrentInstanceCount
        _breach(cw, "queue-low", 2.0)
        wait_for(sm, 1)
    assert load.failures == [] and load.ok > 20, (load.ok, load.failures[:3])

    activities = settled_activities(aas)
    assert [(a["Description"], a["Cause"], a["StatusCode"]) for a in activities] == [
        ("Setting desired instance count to 1.", "monitor alarm queue-low in state ALARM triggered policy step-in",
         "Successful"),
        ("Setting desired instance count to 3.", "monitor alarm queue-high in state ALARM triggered policy step-out",
         "Successful")]
    assert activities[0]["StatusMessage"] == ("Successfully set desired instance count to 1. "
                                              "Change successfully fulfilled by sagemaker.")
    assert activities[1]["EndTime"] >= activities[1]["StartTime"]
    history = cw.describe_alarm_history(AlarmName="queue-high", HistoryItemType="Action")["AlarmHistoryItems"]
    assert history and history[0]["HistorySummary"] == f"Successfully executed action {out_arn}"


def test_suspended_scale_out_and_bounds(fake_plane: Plane) -> None:
    """DynamicScalingOutSuspended holds a firing policy back; a step beyond MaxCapacity stops at it; a
    registration whose MinCapacity is above the variant's count scales it up (the cause says why)."""
    sm, aas = fake_plane.client("sagemaker"), fake_plane.client("application-autoscaling")
    cw = fake_plane.client("cloudwatch")
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=RESOURCE, ScalableDimension=DIMENSION,
                                 MinCapacity=1, MaxCapacity=2, SuspendedState={"DynamicScalingOutSuspended": True})
    arn = _step_policy(aas, "step-out", [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 5}])
    _alarm(cw, "queue-high", "GreaterThanThreshold", arn)
    _breach(cw, "queue-high", 11.0)
    history: list[Any] = []
    for _ in range(50):  # the action ran (and did nothing)
        history = cw.describe_alarm_history(AlarmName="queue-high", HistoryItemType="Action")["AlarmHistoryItems"]
        if history:
            break
        time.sleep(0.1)
    assert history
    assert aas.describe_scaling_activities(ServiceNamespace="sagemaker")["ScalingActivities"] == []
    assert counts(sm) == ("InService", 1, 1)

    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=RESOURCE, ScalableDimension=DIMENSION,
                                 SuspendedState={"DynamicScalingOutSuspended": False})
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)  # what was not given is kept
    assert target["SuspendedState"] == {"DynamicScalingInSuspended": False, "DynamicScalingOutSuspended": False,
                                        "ScheduledScalingSuspended": False}
    cw.set_alarm_state(AlarmName="queue-high", StateValue="OK", StateReason="reset")
    _breach(cw, "queue-high", 11.0)  # +5, clamped to MaxCapacity 2
    wait_for(sm, 2)
    first = settled_activities(aas)[0]
    assert first["Description"] == "Setting desired instance count to 2."

    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=RESOURCE, ScalableDimension=DIMENSION,
                                 MinCapacity=3, MaxCapacity=3)
    wait_for(sm, 3)
    first = settled_activities(aas)[0]
    assert (first["Cause"], first["StatusCode"]) == ("minimum capacity was set to 3", "Successful")


def test_scale_in_lets_requests_in_flight_finish(plane: Plane, endpoint: str) -> None:
    """ExactCapacity steps take the variant to 2 then back to 1 while long requests run on both instances:
    the instance scaled in leaves the serving set at once but stops only once its requests have answered."""
    sm, aas, cw = plane.client("sagemaker"), plane.client("application-autoscaling"), plane.client("cloudwatch")
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=RESOURCE, ScalableDimension=DIMENSION,
                                 MinCapacity=1, MaxCapacity=2)
    for name, comparison, capacity in (("to-two", "GreaterThanThreshold", 2), ("to-one", "LessThanThreshold", 1)):
        arn = aas.put_scaling_policy(
            PolicyName=name, ServiceNamespace="sagemaker", ResourceId=RESOURCE, ScalableDimension=DIMENSION,
            PolicyType="StepScaling", StepScalingPolicyConfiguration={
                "AdjustmentType": "ExactCapacity", "StepAdjustments": [{"ScalingAdjustment": capacity}]})["PolicyARN"]
        _alarm(cw, name, comparison, arn)
    _breach(cw, "to-two", 11.0)
    wait_for(sm, 2)

    results: list[object] = []

    def long_request() -> None:
        rt = plane.client("sagemaker-runtime")
        try:
            out = rt.invoke_endpoint(EndpointName=ENDPOINT, ContentType="application/json", Body="[[99, 0]]")
            results.append(json.loads(out["Body"].read()))
        except Exception as exc:  # the finding
            results.append(exc)

    threads = [threading.Thread(target=long_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.4)  # all four in flight, spread over both instances (least outstanding requests)
    _breach(cw, "to-one", 2.0)
    wait_for(sm, 1)
    for thread in threads:
        thread.join(30)
    assert len(results) == 4 and all(isinstance(r, list) for r in results), results


def test_a_real_breach_repeats_the_policy_once_each_cooldown(plane: Plane, endpoint: str) -> None:
    """A metric that stays above an alarm's threshold (PutMetricData every period) keeps the alarm in ALARM:
    CloudWatch runs the policy again at each evaluation, and it scales again once its cooldown (60 s: one
    real second) has passed, up to MaxCapacity."""
    sm, aas, cw = plane.client("sagemaker"), plane.client("application-autoscaling"), plane.client("cloudwatch")
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=RESOURCE, ScalableDimension=DIMENSION,
                                 MinCapacity=1, MaxCapacity=3)
    arn = _step_policy(aas, "step-out", [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}])
    _alarm(cw, "queue-high", "GreaterThanThreshold", arn)
    stop = threading.Event()

    def publish() -> None:
        for _ in range(300):  # bounded: a minute of real time at most
            cw.put_metric_data(Namespace="Custom/Load", MetricData=[{"MetricName": "QueueDepth", "Value": 25.0}])
            if stop.wait(0.2):
                return

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        wait_for(sm, 3, timeout=45)
    finally:
        stop.set()
        publisher.join(10)
    activities = settled_activities(aas)
    assert [a["Description"] for a in activities] == ["Setting desired instance count to 3.",
                                                      "Setting desired instance count to 2."]
    assert all(a["Cause"] == "monitor alarm queue-high in state ALARM triggered policy step-out" for a in activities)
