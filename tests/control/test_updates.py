"""Traffic and change end to end, through the real boto3 clients against real instances: seed 003's
flow (two variants with weights, TargetVariant, UpdateEndpointWeightsAndCapacities, per-endpoint
metrics) and a blue/green UpdateEndpoint with no failed request under load.

The state machine behind them (blue/green, rollback when the new model cannot start, capacity updates,
a crashed instance replaced) is tested without processes on the in-memory backend
(tests/hosting/test_rollout.py, test_reconciler.py), and so are least outstanding requests, the
payload limit and endpoint tags (tests/hosting/test_fake_backend_routing.py)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from mainsail.hosting import endpoints as ep
from tests.control.helpers import IMAGE, INFERENCE_OK, ROLE, WAIT, Plane, deploy, make_model_dir

pytestmark = pytest.mark.slow


def _model(sm: Any, name: str, model_dir: Path) -> None:
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"file://{model_dir}"})


def _invoke(rt: Any, name: str, **kw: Any) -> tuple[str, list[float]]:
    out = rt.invoke_endpoint(EndpointName=name, ContentType="application/json", Accept="application/json",
                             Body=json.dumps([[1, 0]]), **kw)
    return out["InvokedProductionVariant"], json.loads(out["Body"].read())


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


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
