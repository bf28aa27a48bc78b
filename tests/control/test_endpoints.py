"""Endpoints end to end: real boto3 clients, the control app in a thread, real ``mainsail serve``
instances started by the ``LocalBackend`` and driven by the ``Reconciler``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import joblib
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from sklearn.linear_model import LinearRegression

from mainsail.control import SQLiteStore, create_control_app
from mainsail.control import endpoints as ep
from mainsail.control.backends import LocalBackend
from mainsail.control.reconciler import Reconciler
from tests.conftest import ThreadedServer

REGION = "us-east-1"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mainsail:latest"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
WAIT = {"Delay": 1, "MaxAttempts": 30}

INFERENCE_OK = """
import os
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""

INFERENCE_BAD = """
def model_fn(model_dir):
    raise RuntimeError("boom: the weights are corrupt")
"""


class Plane(ThreadedServer):
    """Control app + reconciler + local backend, with boto3 clients."""

    def __init__(self, home: Path) -> None:
        self.store = SQLiteStore(home / "state.db")
        self.backend = LocalBackend(home)
        self.reconciler = Reconciler(self.store, self.backend, interval=0.1)
        super().__init__(create_control_app(self.store), lifespan="on")

    def __enter__(self) -> Plane:
        self.start()
        self.reconciler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.reconciler.stop(stop_instances=True)
        self.backend.stop_all()
        self.stop()
        self.store.close()

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id="x", aws_secret_access_key="x",
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}))


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plane]:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    with Plane(tmp_path) as p:
        yield p


def _model_dir(root: Path, script: str) -> Path:
    root.mkdir()
    (root / "code").mkdir()
    (root / "code" / "inference.py").write_text(script)
    model = LinearRegression().fit([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.0, 2.0, 3.0])
    joblib.dump(model, root / "model.joblib")
    return root


def _deploy(sm: Any, name: str, model_dir: Path, url: str | None = None) -> str:
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE,
                                      "ModelDataUrl": url or f"file://{model_dir}",
                                      "Environment": {"MAINSAIL_TEST": "1"}})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}])
    arn: str = sm.create_endpoint(EndpointName=name, EndpointConfigName=name)["EndpointArn"]
    return arn


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


def test_s3_model_data_fails_clearly(plane: Plane, tmp_path: Path) -> None:
    sm = plane.client("sagemaker")
    _deploy(sm, "remote", tmp_path, url="s3://bucket/model.tar.gz")
    desc = sm.describe_endpoint(EndpointName="remote")
    assert desc["EndpointStatus"] == "Failed"
    assert "s3://" in desc["FailureReason"] and "not supported" in desc["FailureReason"]


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
        _deploy(sm, name, tmp_path, url="s3://bucket/model.tar.gz")  # fail fast, no processes
    first = sm.list_endpoints(MaxResults=2, SortBy="Name", SortOrder="Ascending")
    assert [e["EndpointName"] for e in first["Endpoints"]] == ["p1", "p2"]
    second = sm.list_endpoints(MaxResults=2, SortBy="Name", SortOrder="Ascending",
                               NextToken=first["NextToken"])
    assert [e["EndpointName"] for e in second["Endpoints"]] == ["p3"]
    assert "NextToken" not in second


def test_local_backend_extracts_model_archive(tmp_path: Path) -> None:
    import tarfile

    from mainsail.control.backends import InstanceSpec, ModelSourceError

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


def test_pick_instance_follows_weights() -> None:
    import random

    record = {"ProductionVariants": [{"VariantName": "a", "CurrentWeight": 0.0},
                                     {"VariantName": "b", "CurrentWeight": 1.0}],
              "Instances": [{"variant": "a", "port": 1}, {"variant": "b", "port": 2}]}
    rng = random.Random(0)
    picks = [ep.pick_instance(record, rng) for _ in range(20)]
    assert {p["variant"] for p in picks if p is not None} == {"b"} and None not in picks
    assert ep.pick_instance({"ProductionVariants": [], "Instances": []}) is None
