"""Traffic and change: two variants with weights, TargetVariant, blue/green UpdateEndpoint (with no
failed request under load, and a rollback when the new model cannot load),
UpdateEndpointWeightsAndCapacities, a crashed instance replaced, per-endpoint metrics, the payload
limit, tags on endpoints; all through the real boto3 clients against real instances."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from mainsail.hosting import endpoints as ep
from tests.control.helpers import IMAGE, INFERENCE_BAD, INFERENCE_OK, ROLE, WAIT, Plane, deploy, make_model_dir

pytestmark = pytest.mark.slow


def _model(sm: Any, name: str, model_dir: Path) -> None:
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"file://{model_dir}"})


def _invoke(rt: Any, name: str, **kw: Any) -> tuple[str, list[float]]:
    out = rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Accept="application/json",
                             Body=json.dumps([[1, 0]]), **kw)
    return out["InvokedProductionVariant"], json.loads(out["Body"].read())


def _wait_status(sm: Any, name: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (desc := sm.describe_endpoint(EndpointName=name))["EndpointStatus"] not in statuses:
        assert time.monotonic() < deadline, desc
        time.sleep(0.2)
    result: dict[str, Any] = desc
    return result


def test_seed_003_lifecycle_with_a_second_variant(plane: Plane, tmp_path: Path) -> None:
    """Seed 003's boto3 flow: create, wait, invoke CSV and JSON, update with a second variant and
    weights, invoke with TargetVariant, shift weights, delete, wait deleted, clean up."""
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    deploy(sm, "churn", make_model_dir(tmp_path / "a", INFERENCE_OK))
    sm.get_waiter("endpoint_in_service").wait(EndpointName="churn", WaiterConfig=WAIT)
    out = rt.invoke_endpoint(EndpointName="churn", ContentType="text/csv", Body="1,0")
    assert json.loads(out["Body"].read().decode()) == pytest.approx([2.0])
    assert _invoke(rt, "churn") == ("AllTraffic", pytest.approx([2.0]))

    _model(sm, "churn-b", make_model_dir(tmp_path / "b", INFERENCE_OK, scale=10.0))
    sm.create_endpoint_config(EndpointConfigName="churn-ab", ProductionVariants=[
        {"VariantName": "A", "ModelName": "churn", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large",
         "InitialVariantWeight": 3.0},
        {"VariantName": "B", "ModelName": "churn-b", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large",
         "InitialVariantWeight": 1.0}])
    sm.update_endpoint(EndpointName="churn", EndpointConfigName="churn-ab")
    with pytest.raises(ClientError) as exc:  # one update at a time
        sm.update_endpoint(EndpointName="churn", EndpointConfigName="churn-ab")
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert "Cannot update in-progress endpoint" in exc.value.response["Error"]["Message"]
    sm.get_waiter("endpoint_in_service").wait(EndpointName="churn", WaiterConfig=WAIT)
    desc = sm.describe_endpoint(EndpointName="churn")
    assert desc["EndpointConfigName"] == "churn-ab" and "PendingDeploymentSummary" not in desc
    assert [(v["VariantName"], v["CurrentWeight"], v["CurrentInstanceCount"]) for v in desc["ProductionVariants"]] \
        == [("A", 3.0, 1), ("B", 1.0, 1)]
    assert desc["ProductionVariants"][1]["DeployedImages"][0]["SpecifiedImage"] == IMAGE

    assert _invoke(rt, "churn", TargetVariant="B") == ("B", pytest.approx([20.0]))
    assert _invoke(rt, "churn", TargetVariant="A") == ("A", pytest.approx([2.0]))
    seen = Counter(_invoke(rt, "churn")[0] for _ in range(60))
    assert set(seen) == {"A", "B"} and seen["A"] > seen["B"]
    with pytest.raises(ClientError) as exc:
        _invoke(rt, "churn", TargetVariant="C")
    assert exc.value.response["Error"]["Code"] == "ValidationError"

    sm.update_endpoint_weights_and_capacities(EndpointName="churn", DesiredWeightsAndCapacities=[
        {"VariantName": "A", "DesiredWeight": 0.0}, {"VariantName": "B", "DesiredInstanceCount": 2}])
    sm.get_waiter("endpoint_in_service").wait(EndpointName="churn", WaiterConfig=WAIT)
    desc = sm.describe_endpoint(EndpointName="churn")
    assert [(v["VariantName"], v["CurrentWeight"], v["DesiredWeight"], v["CurrentInstanceCount"])
            for v in desc["ProductionVariants"]] == [("A", 0.0, 0.0, 1), ("B", 1.0, 1.0, 2)]
    assert {_invoke(rt, "churn")[0] for _ in range(20)} == {"B"}
    assert _invoke(rt, "churn", TargetVariant="A")[0] == "A"  # a zero weight still takes targeted calls
    with pytest.raises(ClientError) as exc:
        sm.update_endpoint_weights_and_capacities(EndpointName="churn", DesiredWeightsAndCapacities=[
            {"VariantName": "Z", "DesiredWeight": 1.0}])
    assert exc.value.response["Error"]["Code"] == "ValidationException" and "Z" in str(exc.value)

    metrics = httpx.get(plane.url + "/metrics").text
    assert 'Invocations_total{EndpointName="churn",VariantName="B"}' in metrics
    assert 'ModelLatency_count{EndpointName="churn",VariantName="A"}' in metrics
    assert 'Invocation4XXErrors_total' in metrics and "InvocationsPerInstance_total" in metrics

    sm.delete_endpoint(EndpointName="churn")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="churn", WaiterConfig=WAIT)
    for config in ("churn", "churn-ab"):
        sm.delete_endpoint_config(EndpointConfigName=config)
    for model in ("churn", "churn-b"):
        sm.delete_model(ModelName=model)
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []


def test_update_endpoint_loses_no_request_under_load(plane: Plane, tmp_path: Path) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    deploy(sm, "live", make_model_dir(tmp_path / "v1", INFERENCE_OK))
    sm.get_waiter("endpoint_in_service").wait(EndpointName="live", WaiterConfig=WAIT)
    old_pids = [i["pid"] for i in plane.store.get(ep.ENDPOINT, "live")["Instances"]]  # type: ignore[index]
    _model(sm, "live-v2", make_model_dir(tmp_path / "v2", INFERENCE_OK, scale=10.0))
    sm.create_endpoint_config(EndpointConfigName="live-v2", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "live-v2", "InitialInstanceCount": 2,
         "InstanceType": "ml.m5.large"}])

    results: list[float | str] = []
    stop = threading.Event()

    def load() -> None:  # bounded: stops when the update is done, or after 60 s
        with httpx.Client(base_url=plane.url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                r = client.post("/endpoints/live/invocations", content=b"1,0",
                                headers={"content-type": "text/csv"})
                results.append(json.loads(r.content)[0] if r.status_code == 200 else f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        sm.update_endpoint(EndpointName="live", EndpointConfigName="live-v2")
        assert sm.describe_endpoint(EndpointName="live")["EndpointStatus"] in ("Updating", "InService")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="live", WaiterConfig=WAIT)
        time.sleep(1.0)  # traffic on the new instances while the old one drains
    finally:
        stop.set()
        for t in threads:
            t.join(70)
    failures = [r for r in results if isinstance(r, str)]
    assert not failures, failures[:5]
    served = [round(float(r), 6) for r in results]
    assert 2.0 in served and 20.0 in served  # by v1, then by v2
    assert served[-1] == 20.0
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in old_pids):  # the old instance drained and stopped
        assert time.monotonic() < deadline
        time.sleep(0.2)
    desc = sm.describe_endpoint(EndpointName="live")
    assert desc["EndpointConfigName"] == "live-v2"
    assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert _invoke(rt, "live")[1] == pytest.approx([20.0])


def test_failed_update_rolls_back_to_the_serving_config(plane: Plane, tmp_path: Path) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    deploy(sm, "steady", make_model_dir(tmp_path / "good", INFERENCE_OK))
    sm.get_waiter("endpoint_in_service").wait(EndpointName="steady", WaiterConfig=WAIT)
    _model(sm, "steady-bad", make_model_dir(tmp_path / "bad", INFERENCE_BAD))
    sm.create_endpoint_config(EndpointConfigName="steady-bad", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "steady-bad", "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}])
    sm.update_endpoint(EndpointName="steady", EndpointConfigName="steady-bad")
    desc = sm.describe_endpoint(EndpointName="steady")
    if desc["EndpointStatus"] == "Updating":
        assert desc["PendingDeploymentSummary"]["EndpointConfigName"] == "steady-bad"
        assert _invoke(rt, "steady")[1] == pytest.approx([2.0])  # the old config serves meanwhile
    desc = _wait_status(sm, "steady", "InService", "Failed")
    assert desc["EndpointStatus"] == "InService"
    assert desc["EndpointConfigName"] == "steady"
    assert "boom: the weights are corrupt" in desc["FailureReason"]
    assert _invoke(rt, "steady")[1] == pytest.approx([2.0])


def test_crashed_instance_is_replaced(plane: Plane, tmp_path: Path) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    deploy(sm, "phoenix", make_model_dir(tmp_path / "m", INFERENCE_OK))
    sm.get_waiter("endpoint_in_service").wait(EndpointName="phoenix", WaiterConfig=WAIT)
    (instance,) = plane.store.get(ep.ENDPOINT, "phoenix")["Instances"]  # type: ignore[index]
    os.killpg(instance["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        record = plane.store.get(ep.ENDPOINT, "phoenix")
        assert record is not None and record["EndpointStatus"] == "InService", record
        fresh = [i for i in record["Instances"] if i["pid"] != instance["pid"] and i["ready"]]
        if fresh:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert _invoke(rt, "phoenix") == ("AllTraffic", pytest.approx([2.0]))
    assert sm.describe_endpoint(EndpointName="phoenix")["ProductionVariants"][0]["CurrentInstanceCount"] == 1


def test_least_outstanding_requests_spreads_over_instances(plane: Plane, tmp_path: Path) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    _model(sm, "lor", make_model_dir(tmp_path / "m", INFERENCE_OK))
    sm.create_endpoint_config(EndpointConfigName="lor", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "lor", "InitialInstanceCount": 2, "InstanceType": "ml.m5.large",
         "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}])
    sm.create_endpoint(EndpointName="lor", EndpointConfigName="lor")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="lor", WaiterConfig=WAIT)
    desc = sm.describe_endpoint(EndpointName="lor")
    assert desc["ProductionVariants"][0]["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    for _ in range(20):
        _invoke(rt, "lor")
    ports = {str(i["port"]) for i in plane.store.get(ep.ENDPOINT, "lor")["Instances"]}  # type: ignore[index]
    metrics = httpx.get(plane.url + "/metrics").text
    used = {port for port in ports if f'Instance="{port}",VariantName="AllTraffic"' in metrics
            or f'EndpointName="lor",Instance="{port}"' in metrics}
    assert used == ports  # ties break at random: both instances took requests


def test_runtime_limits_and_endpoint_tags(plane: Plane, tmp_path: Path) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    arn = deploy(sm, "tagged", make_model_dir(tmp_path / "m", INFERENCE_OK))
    sm.get_waiter("endpoint_in_service").wait(EndpointName="tagged", WaiterConfig=WAIT)
    with pytest.raises(ClientError) as exc:
        rt.invoke_endpoint(EndpointName="tagged", ContentType="text/csv", Body=b"1," * (3 * 1024 * 1024 + 1))
    assert exc.value.response["Error"]["Code"] == "ValidationError"
    assert "6291456 bytes" in exc.value.response["Error"]["Message"]
    assert _invoke(rt, "tagged")[1] == pytest.approx([2.0])  # and the next request is served
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "team", "Value": "risk"}])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "risk"}]
    sm.delete_tags(ResourceArn=arn, TagKeys=["team"])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == []
    with pytest.raises(ClientError) as exc:
        sm.update_endpoint(EndpointName="ghost", EndpointConfigName="tagged")
    assert exc.value.response["Error"]["Message"].startswith('Could not find endpoint "')
    with pytest.raises(ClientError) as exc:
        sm.update_endpoint(EndpointName="tagged", EndpointConfigName="ghost")
    assert "Could not find endpoint configuration" in exc.value.response["Error"]["Message"]


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
