"""Endpoints end to end: real boto3 clients, the control app in a thread, real ``mainsail serve``
instances started by the ``LocalBackend`` and driven by the ``Reconciler``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from mainsail.backends.local import LocalBackend
from mainsail.hosting import endpoints as ep
from mainsail.hosting.store import SQLiteStore
from tests.control.helpers import INFERENCE_BAD, INFERENCE_OK, REGION, WAIT, Plane, deploy, make_model_dir

_deploy, _model_dir = deploy, make_model_dir


def _arn(name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{name.lower()}"


def test_endpoint_lifecycle_and_invoke(plane: Plane, tmp_path: Path) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    model_dir = _model_dir(tmp_path / "model", INFERENCE_OK)
    assert _deploy(sm, "Lin-Reg", model_dir) == _arn("Lin-Reg")
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint(EndpointName="Lin-Reg", EndpointConfigName="Lin-Reg")
    assert exc.value.response["Error"]["Message"] == (
        f'Cannot create already existing endpoint "{_arn("Lin-Reg")}".')
    sm.get_waiter("endpoint_in_service").wait(EndpointName="Lin-Reg", WaiterConfig=WAIT)
    desc = sm.describe_endpoint(EndpointName="Lin-Reg")
    assert desc["EndpointStatus"] == "InService"
    assert desc["EndpointConfigName"] == "Lin-Reg"
    (variant,) = desc["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic"
    assert variant["CurrentInstanceCount"] == variant["DesiredInstanceCount"] == 1
    assert variant["CurrentWeight"] == 1.0
    assert "Instances" not in desc and "Tags" not in desc

    listed = sm.list_endpoints()["Endpoints"]
    assert [(e["EndpointName"], e["EndpointStatus"]) for e in listed] == [("Lin-Reg", "InService")]

    out = rt.invoke_endpoint(EndpointName="Lin-Reg", ContentType="text/csv", Accept="text/csv",
                             Body=b"1,1\n2,0\n")
    assert out["InvokedProductionVariant"] == "AllTraffic"
    assert out["ContentType"].startswith("text/csv")
    values = [float(x) for x in out["Body"].read().decode().split()]
    assert values == pytest.approx([5.0, 4.0])
    out = rt.invoke_endpoint(EndpointName="Lin-Reg", ContentType="application/json",
                             Accept="application/json", Body=json.dumps([[0, 1]]))
    assert out["ContentType"].startswith("application/json")
    assert json.loads(out["Body"].read()) == pytest.approx([3.0])

    with pytest.raises(ClientError) as exc:
        rt.invoke_endpoint(EndpointName="Lin-Reg", ContentType="application/x-unknown",
                           Body=b"???")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert exc.value.response["Error"]["Code"] == "ModelError"
    assert 400 <= exc.value.response["OriginalStatusCode"] < 500
    assert "LogStreamArn" in exc.value.response

    record = plane.store.get(ep.ENDPOINT, "Lin-Reg")
    assert record is not None
    pid = record["Instances"][0]["pid"]
    sm.delete_endpoint(EndpointName="Lin-Reg")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="Lin-Reg", WaiterConfig=WAIT)
    with pytest.raises(ClientError) as exc:
        sm.describe_endpoint(EndpointName="Lin-Reg")
    assert exc.value.response["Error"] == {
        "Code": "ValidationException",
        "Message": f'Could not find endpoint "{_arn("Lin-Reg")}".'}
    with pytest.raises(ProcessLookupError):  # the instance's process group is gone
        os.killpg(pid, 0)


def test_model_load_failure_marks_endpoint_failed(plane: Plane, tmp_path: Path) -> None:
    sm = plane.client("sagemaker")
    _deploy(sm, "broken", _model_dir(tmp_path / "bad", INFERENCE_BAD))
    deadline = time.monotonic() + 40
    while (desc := sm.describe_endpoint(EndpointName="broken"))["EndpointStatus"] == "Creating":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert desc["EndpointStatus"] == "Failed"
    assert "boom: the weights are corrupt" in desc["FailureReason"]
    sm.delete_endpoint(EndpointName="broken")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="broken", WaiterConfig=WAIT)


def test_missing_endpoint_errors(plane: Plane) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    with pytest.raises(ClientError) as exc:
        rt.invoke_endpoint(EndpointName="nope", ContentType="text/csv", Body=b"1,2")
    assert exc.value.response["Error"]["Code"] == "ValidationError"
    assert exc.value.response["Error"]["Message"] == "Endpoint nope of account 123456789012 not found."
    for call in (sm.describe_endpoint, sm.delete_endpoint):
        with pytest.raises(ClientError) as exc:
            call(EndpointName="nope")
        assert exc.value.response["Error"]["Message"] == f'Could not find endpoint "{_arn("nope")}".'
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint(EndpointName="e1", EndpointConfigName="missing")
    assert "Could not find endpoint configuration" in exc.value.response["Error"]["Message"]


def test_list_endpoints_pagination(plane: Plane, tmp_path: Path) -> None:
    sm = plane.client("sagemaker")
    for name in ("p1", "p2", "p3"):
        _deploy(sm, name, tmp_path, url=f"file://{tmp_path}/missing")  # fail fast, no processes
    first = sm.list_endpoints(MaxResults=2, SortBy="Name", SortOrder="Ascending")
    assert [e["EndpointName"] for e in first["Endpoints"]] == ["p1", "p2"]
    second = sm.list_endpoints(MaxResults=2, SortBy="Name", SortOrder="Ascending",
                               NextToken=first["NextToken"])
    assert [e["EndpointName"] for e in second["Endpoints"]] == ["p3"]
    assert "NextToken" not in second


def test_local_backend_extracts_model_archive(tmp_path: Path) -> None:
    import tarfile

    from mainsail.backends.base import InstanceSpec, ModelSourceError
    src = _model_dir(tmp_path / "src", INFERENCE_OK)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in src.rglob("*"):
            tar.add(path, arcname=str(path.relative_to(src)))
    backend = LocalBackend(tmp_path / "home")
    spec = InstanceSpec(endpoint="e", variant="v", index=0, model_data_url=str(archive))
    target = backend._model_dir(spec)
    assert (target / "code" / "inference.py").read_text() == INFERENCE_OK
    assert (target / "model.joblib").is_file()
    with pytest.raises(ModelSourceError):
        backend._model_dir(InstanceSpec(endpoint="e", variant="v", index=0,
                                        model_data_url=f"file://{tmp_path}/missing"))


def test_router_picks_by_weight_target_and_outstanding_requests(tmp_path: Path) -> None:
    import random

    from mainsail.backends.base import Address
    from mainsail.routing.router import Router
    from mainsail.routing.table import Table

    def at(port: int) -> Address:
        return Address("127.0.0.1", port)

    store = SQLiteStore(tmp_path / "s.db")
    router = Router(store, LocalBackend(tmp_path).transport(), rng=random.Random(0))
    record = {"EndpointStatus": "InService",
              "ProductionVariants": [{"VariantName": "a", "CurrentWeight": 0.0},
                                     {"VariantName": "b", "CurrentWeight": 1.0,
                                      "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}}],
              "Instances": [{"variant": "a", "port": 1, "ready": True}, {"variant": "b", "port": 2, "ready": True},
                            {"variant": "b", "port": 3, "ready": True}, {"variant": "b", "port": 4, "ready": False}]}
    table = Table.of(record)
    traffic = router.traffic
    picks = [traffic.pick(table, None) for _ in range(30)]
    assert {(v.name, address) for v, address in picks} <= {("b", at(2)), ("b", at(3))}  # type: ignore[misc]
    assert traffic.pick(table, "a")[1] == at(1)  # TargetVariant overrides a zero weight
    assert traffic.pick(table, "zzz") == "The variant zzz is not present in the endpoint."
    with traffic.busy(at(2)), traffic.busy(at(2)):  # least outstanding requests: port 3 is idle
        assert traffic.in_flight(at(2)) == 2
        assert {traffic.pick(table, "b")[1] for _ in range(10)} == {at(3)}  # type: ignore[index]
    assert traffic.in_flight(at(2)) == 0
    empty = Table.of({"EndpointStatus": "InService", "ProductionVariants": [{"VariantName": "a"}],
                      "Instances": [{"variant": "a", "port": 1, "ready": False}]})
    assert traffic.pick(empty, None) == ""
    store.close()
