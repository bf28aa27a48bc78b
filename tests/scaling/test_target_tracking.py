"""Target tracking on SageMakerVariantInvocationsPerInstance: AWS's documented boto3 snippet runs as
written against ``mainsail up``, the alarms it makes are CloudWatch alarms like any other, a real bounded
load scales the variant out through them, the scale-out cooldown holds a scale-in back, and deleting the
policy deletes its alarms."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.control.helpers import Plane
from tests.scaling.conftest import ENDPOINT, RESOURCE, Load, counts, settled_activities, wait_for

pytestmark = pytest.mark.slow


def _aws_snippet(client: Any, endpoint_name: str) -> Any:
    """SageMaker's documented auto-scaling example (register_scalable_target, then a target tracking
    policy on SageMakerVariantInvocationsPerInstance), unmodified but for the client handed in."""
    resource_id = 'endpoint/' + endpoint_name + '/variant/' + 'AllTraffic'
    response = client.register_scalable_target(
        ServiceNamespace='sagemaker',
        ResourceId=resource_id,
        ScalableDimension='sagemaker:variant:DesiredInstanceCount',
        MinCapacity=1,
        MaxCapacity=4
    )
    response = client.put_scaling_policy(
        PolicyName='Invocations-ScalingPolicy',
        ServiceNamespace='sagemaker',
        ResourceId=resource_id,
        ScalableDimension='sagemaker:variant:DesiredInstanceCount',
        PolicyType='TargetTrackingScaling',
        TargetTrackingScalingPolicyConfiguration={
            'TargetValue': 10.0,
            'PredefinedMetricSpecification': {
                'PredefinedMetricType': 'SageMakerVariantInvocationsPerInstance',
            },
            'ScaleInCooldown': 600,
            'ScaleOutCooldown': 300
        }
    )
    return response


def test_documented_snippet_then_a_real_load_scales_out(plane: Plane, endpoint: str) -> None:
    sm, aas, cw = plane.client("sagemaker"), plane.client("application-autoscaling"), plane.client("cloudwatch")
    response = _aws_snippet(aas, endpoint)
    names = [a["AlarmName"] for a in response["Alarms"]]
    assert len(names) == 2
    high, low = names
    assert high.startswith(f"TargetTracking-{RESOURCE}-AlarmHigh-") and low.startswith(f"TargetTracking-{RESOURCE}"
                                                                                         "-AlarmLow-")
    alarms = {a["AlarmName"]: a for a in cw.describe_alarms(AlarmNamePrefix="TargetTracking-")["MetricAlarms"]}
    assert set(alarms) == {high, low}
    assert (alarms[high]["MetricName"], alarms[high]["Namespace"], alarms[high]["Statistic"]) == (
        "InvocationsPerInstance", "AWS/SageMaker", "Sum")
    assert {d["Name"]: d["Value"] for d in alarms[high]["Dimensions"]} == {"EndpointName": endpoint,
                                                                         "VariantName": "AllTraffic"}
    assert (alarms[high]["EvaluationPeriods"], alarms[high]["Threshold"], alarms[high]["ComparisonOperator"]) == (
        3, 10.0, "GreaterThanThreshold")
    assert (alarms[low]["EvaluationPeriods"], alarms[low]["Threshold"], alarms[low]["ComparisonOperator"]) == (
        15, 9.0, "LessThanThreshold")
    assert alarms[high]["AlarmActions"] == [response["PolicyARN"]]
    policy = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    assert policy["PolicyName"] == "Invocations-ScalingPolicy" and policy["Alarms"] == response["Alarms"]

    # about 25 requests a (scaled) minute on one instance, over a target of 10: three minutes (3 s) later
    # AlarmHigh fires and the variant scales out to ceil(1 * 25 / 10) or so
    with Load(plane, rate=12.0) as load:
        deadline = time.monotonic() + 45
        while (state := counts(sm))[0] != "InService" or state[2] < 2 or state[1] != state[2]:
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
    assert load.failures == [], load.failures[:3]
    activity = settled_activities(aas)[-1]
    assert activity["Cause"].startswith(f"monitor alarm TargetTracking-{RESOURCE}-AlarmHigh-")
    assert activity["Cause"].endswith(" in state ALARM triggered policy Invocations-ScalingPolicy")
    assert activity["StatusCode"] == "Successful"
    scaled_to = counts(sm)[1]

    # the scale-out cooldown (300 s: 5 real seconds) holds a scale-in back; once it has passed, AlarmLow scales in
    def low_breach() -> None:
        cw.set_alarm_state(AlarmName=low, StateValue="OK", StateReason="reset")
        cw.set_alarm_state(AlarmName=low, StateValue="ALARM", StateReason="testing",
                           StateReasonData=json.dumps({"recentDatapoints": [2.0], "threshold": 9.0}))

    low_breach()
    time.sleep(0.5)
    assert counts(sm)[1] == scaled_to
    time.sleep(max(0.0, activity["StartTime"].timestamp() + 5.5 - time.time()))
    low_breach()
    wait_for(sm, 1)  # ceil(scaled_to * 2 / 10)
    assert settled_activities(aas)[0]["Cause"].startswith(f"monitor alarm TargetTracking-{RESOURCE}-AlarmLow-")

    aas.delete_scaling_policy(PolicyName="Invocations-ScalingPolicy", ServiceNamespace="sagemaker",
                              ResourceId=RESOURCE, ScalableDimension="sagemaker:variant:DesiredInstanceCount")
    assert cw.describe_alarms(AlarmNamePrefix="TargetTracking-")["MetricAlarms"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []


def test_disable_scale_in_makes_no_low_alarm_and_deregister_deletes_alarms(fake_plane: Plane) -> None:
    aas, cw = fake_plane.client("application-autoscaling"), fake_plane.client("cloudwatch")
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=RESOURCE,
                                 ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=1,
                                 MaxCapacity=2)
    out = aas.put_scaling_policy(
        PolicyName="custom", ServiceNamespace="sagemaker", ResourceId=RESOURCE,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount", PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 50.0, "DisableScaleIn": True,
            "CustomizedMetricSpecification": {"MetricName": "CPUUtilization", "Namespace": "/aws/sagemaker/Endpoints",
                                              "Dimensions": [{"Name": "EndpointName", "Value": ENDPOINT},
                                                             {"Name": "VariantName", "Value": "AllTraffic"}],
                                              "Statistic": "Average", "Unit": "Percent"}})
    assert [a["AlarmName"].split("-Alarm")[1][:4] for a in out["Alarms"]] == ["High"]
    alarm = cw.describe_alarms(AlarmNames=[out["Alarms"][0]["AlarmName"]])["MetricAlarms"][0]
    assert (alarm["MetricName"], alarm["Statistic"], alarm["Unit"]) == ("CPUUtilization", "Average", "Percent")
    aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=RESOURCE,
                                   ScalableDimension="sagemaker:variant:DesiredInstanceCount")
    assert cw.describe_alarms(AlarmNamePrefix="TargetTracking-")["MetricAlarms"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
