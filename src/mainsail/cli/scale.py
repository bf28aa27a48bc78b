"""``mainsail scale ENDPOINT``: target tracking for a variant in one command, through boto3's
``application-autoscaling`` client: RegisterScalableTarget (the instance count's bounds), then
PutScalingPolicy (TargetTrackingScaling on the variant's invocations per instance, or on another of its
metrics), printing what was done. See docs/autoscaling.md.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mainsail.cli.remote import Api, Fail, UrlOption, handled
from mainsail.client import aws as client
from mainsail.client.aws import DEFAULT_URL

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
#: --metric names Application Auto Scaling predefines for SageMaker variants
PREDEFINED = {"InvocationsPerInstance": "SageMakerVariantInvocationsPerInstance"}
#: the instance metrics (namespace /aws/sagemaker/Endpoints); any other --metric is one of AWS/SageMaker's
INSTANCE_METRICS = ("CPUUtilization", "MemoryUtilization", "DiskUtilization", "GPUUtilization",
                    "GPUMemoryUtilization")


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def policy_configuration(endpoint: str, variant: str, metric: str, target: float, *,
                         scale_in_cooldown: int | None = None, scale_out_cooldown: int | None = None,
                         disable_scale_in: bool = False) -> dict[str, Any]:
    """TargetTrackingScalingPolicyConfiguration: a predefined metric where there is one, else the variant's
    metric as a customized one (its Average)."""
    config: dict[str, Any] = {"TargetValue": target}
    if metric in PREDEFINED:
        config["PredefinedMetricSpecification"] = {"PredefinedMetricType": PREDEFINED[metric]}
    else:
        config["CustomizedMetricSpecification"] = {
            "MetricName": metric, "Statistic": "Average",
            "Namespace": "/aws/sagemaker/Endpoints" if metric in INSTANCE_METRICS else "AWS/SageMaker",
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]}
    if scale_in_cooldown is not None:
        config["ScaleInCooldown"] = scale_in_cooldown
    if scale_out_cooldown is not None:
        config["ScaleOutCooldown"] = scale_out_cooldown
    if disable_scale_in:
        config["DisableScaleIn"] = True
    return config


def only_variant(api: Api, endpoint: str) -> str:
    """The endpoint's one variant; a Fail naming them when there are several (or the endpoint is missing)."""
    described = client.describe_or_none(api.sm.describe_endpoint, EndpointName=endpoint)
    if described is None:
        raise Fail(f"endpoint {endpoint} not found at {api.url}")
    names = [str(pv["VariantName"]) for pv in described.get("ProductionVariants", [])]
    if len(names) != 1:
        raise Fail(f"endpoint {endpoint} has variants {', '.join(names) or '(none)'}: name one with --variant", 2)
    return names[0]


def scale(
    endpoint: Annotated[str, typer.Argument(help="Endpoint name", show_default=False)],
    min_capacity: Annotated[int, typer.Option("--min", min=1, help="Fewest instances", show_default=False)],
    max_capacity: Annotated[int, typer.Option("--max", min=1, help="Most instances", show_default=False)],
    target: Annotated[float, typer.Option(
        "--target", help="The metric's target value (invocations per instance per minute by default)",
        show_default=False)],
    variant: Annotated[str | None, typer.Option(
        "--variant", "-v", help="The variant to scale [default: the endpoint's only variant]")] = None,
    metric: Annotated[str, typer.Option(
        "--metric", help="The variant's metric to track: InvocationsPerInstance (predefined), or another "
                         "SageMaker metric such as CPUUtilization (its Average)")] = "InvocationsPerInstance",
    policy_name: Annotated[str | None, typer.Option(
        "--policy-name", help="The scaling policy's name [default: <metric>-target-tracking]")] = None,
    scale_in_cooldown: Annotated[int | None, typer.Option(
        "--scale-in-cooldown", min=0, help="Seconds after a scale-in before the next one")] = None,
    scale_out_cooldown: Annotated[int | None, typer.Option(
        "--scale-out-cooldown", min=0, help="Seconds after a scale-out before the next one")] = None,
    disable_scale_in: Annotated[bool, typer.Option(
        "--disable-scale-in", help="Only ever add instances")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Scale a variant between --min and --max instances to keep a metric at --target
    (RegisterScalableTarget + a TargetTrackingScaling policy)."""
    api = Api(url)
    with handled(url):
        if min_capacity > max_capacity:
            raise Fail(f"--min {min_capacity} is above --max {max_capacity}", 2)
        if target <= 0:
            raise Fail(f"--target {target:g}: give a positive value", 2)
        variant = variant or only_variant(api, endpoint)
        resource = resource_id(endpoint, variant)
        api.autoscaling.register_scalable_target(
            ServiceNamespace=NAMESPACE, ResourceId=resource, ScalableDimension=DIMENSION,
            MinCapacity=min_capacity, MaxCapacity=max_capacity)
        typer.echo(f"registered {resource}: {min_capacity} to {max_capacity} instances")
        name = policy_name or f"{metric}-target-tracking"
        config = policy_configuration(endpoint, variant, metric, target, scale_in_cooldown=scale_in_cooldown,
                                      scale_out_cooldown=scale_out_cooldown, disable_scale_in=disable_scale_in)
        answer = api.autoscaling.put_scaling_policy(
            PolicyName=name, ServiceNamespace=NAMESPACE, ResourceId=resource, ScalableDimension=DIMENSION,
            PolicyType="TargetTrackingScaling", TargetTrackingScalingPolicyConfiguration=config)
        typer.echo(f"policy {name}: keeps {metric} at {target:g} ({answer.get('PolicyARN', '-')})")
        for alarm in answer.get("Alarms", []):
            typer.echo(f"  alarm {alarm.get('AlarmName')}")


def register(app: typer.Typer) -> None:
    """Add ``scale`` to ``app``."""
    app.command()(scale)
