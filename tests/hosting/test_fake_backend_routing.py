"""The control plane unchanged over a second backend: the real app, router, reconciler, async inference
and batch transform, with real boto3 clients, over the in-memory :class:`tests.fakes.FakeBackend`,
whose transport answers in process. Whatever works here needs nothing of the local backend: weights
and TargetVariant, least outstanding requests, model errors, a crashed instance replaced, the payload
limit, serverless cold starts, throttling and the memory limit, InvokeEndpointAsync's streamed
exchange, a transform job's requests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from mainsail.backends.base import Address, Upstream, address_of
from mainsail.hosting import endpoints as ep
from mainsail.jobs.transform.runner import TransformRunner
from mainsail.routing.forwarding import instance_label
from tests.control.helpers import IMAGE, ROLE, Plane, s3_object
from tests.fakes import FakeBackend, FakeInstance, FakeModel

WAIT = {"Delay": 1, "MaxAttempts": 10}
SERVERLESS = {"MemorySizeInMB": 1024, "MaxConcurrency": 2}


def _rows(body: bytes, content_type: str) -> list[list[float]]:
    if content_type.startswith("application/json"):
        rows: list[list[float]] = json.loads(body)
        return rows
    return [[float(x) for x in line.split(",")] for line in body.decode().strip().splitlines()]


def linear(fake: FakeInstance, path: str, body: bytes, headers: dict[str, str]) -> Upstream:
    """What the tests' scikit-learn model answers: 2·x0 + 3·x1 per row (times 10 for a model named
    ``*-x10``), as JSON, or CSV lines for a CSV Accept; a 415 for content it cannot read."""
    content_type = headers.get("content-type", "")
    if not content_type.startswith(("text/csv", "application/json")):
        return Upstream(415, {"content-type": "text/plain"}, b"unsupported content type")
    scale = 10.0 if fake.spec.model_data_url.endswith("-x10") else 1.0
    values = [scale * (2 * x0 + 3 * x1) for x0, x1 in _rows(body, content_type)]
    out = {"content-type": "application/json"}
    if "x-amzn-sagemaker-custom-attributes" in headers:
        out["x-amzn-sagemaker-custom-attributes"] = "seen:" + headers["x-amzn-sagemaker-custom-attributes"]
    if headers.get("accept") == "text/csv":
        return Upstream(200, {**out, "content-type": "text/csv"}, "".join(f"{v:g}\n" for v in values).encode())
    return Upstream(200, out, json.dumps(values).encode())


async def slow_or_greedy(fake: FakeInstance, path: str, body: bytes, headers: dict[str, str]) -> Upstream:
    """``77,…`` takes a while; ``99,…`` grows over 1 GB and holds on until the instance is stopped."""
    if body.startswith(b"99,"):
        fake.memory = 1400 * 2**20
        deadline = time.monotonic() + 10
        while fake.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    if body.startswith(b"77,"):
        await asyncio.sleep(0.5)
    return linear(fake, path, body, headers)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def plane(home: Path) -> Iterator[Plane]:
    with Plane(home, backend=FakeBackend(), interval=0.02) as p:
        yield p


def _fake(plane: Plane) -> FakeBackend:
    backend: FakeBackend = plane.backend
    return backend


def _model(plane: Plane, name: str, url: str | None = None, **behaviour: Any) -> None:
    url = url or f"file:///models/{name}"
    _fake(plane).models[url] = FakeModel(**{"answer": linear, **behaviour})
    plane.client("sagemaker").create_model(ModelName=name, ExecutionRoleArn=ROLE,
                                           PrimaryContainer={"Image": IMAGE, "ModelDataUrl": url})


def _endpoint(plane: Plane, name: str, *variants: dict[str, Any], **extra: Any) -> None:
    sm = plane.client("sagemaker")
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        v if "ServerlessConfig" in v else {"InstanceType": "ml.m5.large", "InitialInstanceCount": 1, **v}
        for v in variants], **extra)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)


def _deploy(plane: Plane, name: str, **variant: Any) -> None:
    _model(plane, name)
    _endpoint(plane, name, {"VariantName": "AllTraffic", "ModelName": name, **variant})


def _invoke(plane: Plane, name: str, body: str = "[[1, 0]]", **kw: Any) -> tuple[str, list[float]]:
    """JSON rows, or CSV ones (``"1,0"``); the variant and the JSON answer."""
    content_type = "application/json" if body.startswith("[") else "text/csv"
    out = plane.client("sagemaker-runtime").invoke_endpoint(
        EndpointName=name, ContentType=content_type, Accept="application/json", Body=body, **kw)
    return out["InvokedProductionVariant"], json.loads(out["Body"].read())


def _instances(plane: Plane, name: str) -> list[dict[str, Any]]:
    record = plane.store.get(ep.ENDPOINT, name)
    assert record is not None
    instances: list[dict[str, Any]] = record["Instances"]
    return instances


def test_invoke_by_weight_and_target_variant_over_another_backend(plane: Plane) -> None:
    rt = plane.client("sagemaker-runtime")
    _model(plane, "churn")
    _model(plane, "churn-b", "file:///models/churn-b-x10")
    _endpoint(plane, "churn", {"VariantName": "A", "ModelName": "churn", "InitialVariantWeight": 3.0},
              {"VariantName": "B", "ModelName": "churn-b", "InitialVariantWeight": 1.0})
    out = rt.invoke_endpoint(EndpointName="churn", ContentType="text/csv", Accept="text/csv", Body="1,0\n0,1\n",
                             CustomAttributes="trace=1", TargetVariant="B")
    assert out["InvokedProductionVariant"] == "B" and out["ContentType"].startswith("text/csv")
    assert out["Body"].read() == b"20\n30\n" and out["CustomAttributes"] == "seen:trace=1"
    assert _invoke(plane, "churn", TargetVariant="A") == ("A", pytest.approx([2.0]))
    seen = Counter(_invoke(plane, "churn")[0] for _ in range(60))
    assert set(seen) == {"A", "B"} and seen["A"] > seen["B"]
    with pytest.raises(ClientError) as exc:
        _invoke(plane, "churn", TargetVariant="C")
    assert exc.value.response["Error"]["Code"] == "ValidationError"
    (request,) = [r for f in _fake(plane).instances if f.spec.variant == "B" for r in f.requests][:1]
    assert request[0] == "/invocations" and request[2]["x-amzn-sagemaker-custom-attributes"] == "trace=1"
    metrics = httpx.get(plane.url + "/metrics").text
    for item in _instances(plane, "churn"):  # per instance, by host and port on another backend
        assert f'Instance="{address_of(item)}"' in metrics
    assert instance_label(Address("127.0.0.1", 8123)) == "8123"  # by port on this machine, as before


def test_an_error_answer_is_the_runtime_model_error(plane: Plane) -> None:
    _deploy(plane, "picky")
    with pytest.raises(ClientError) as exc:
        plane.client("sagemaker-runtime").invoke_endpoint(EndpointName="picky", ContentType="application/x-unknown",
                                                          Body=b"???")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert exc.value.response["Error"]["Code"] == "ModelError"
    assert exc.value.response["OriginalStatusCode"] == 415 and "LogStreamArn" in exc.value.response


def test_a_crashed_instance_is_replaced_and_serves(plane: Plane) -> None:
    sm = plane.client("sagemaker")
    _deploy(plane, "phoenix")
    (instance,) = _instances(plane, "phoenix")
    crashed = _fake(plane).at(address_of(instance))
    assert crashed is not None
    crashed.crash("killed")
    deadline = time.monotonic() + 10
    while True:
        record = plane.store.get(ep.ENDPOINT, "phoenix")
        assert record is not None and record["EndpointStatus"] == "InService", record
        fresh = [i for i in record["Instances"] if i["pid"] != instance["pid"] and i["ready"]]
        if fresh:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _invoke(plane, "phoenix") == ("AllTraffic", pytest.approx([2.0]))
    assert sm.describe_endpoint(EndpointName="phoenix")["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    assert crashed.stopped and crashed.requests == []


def test_least_outstanding_requests_spreads_over_instances(plane: Plane) -> None:
    sm = plane.client("sagemaker")
    _model(plane, "lor")
    _endpoint(plane, "lor", {"VariantName": "AllTraffic", "ModelName": "lor", "InitialInstanceCount": 2,
                             "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}})
    desc = sm.describe_endpoint(EndpointName="lor")
    assert desc["ProductionVariants"][0]["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    for _ in range(20):
        _invoke(plane, "lor")
    labels = {instance_label(address_of(i)) for i in _instances(plane, "lor")}
    metrics = httpx.get(plane.url + "/metrics").text
    used = {label for label in labels if f'Instance="{label}",VariantName="AllTraffic"' in metrics
            or f'EndpointName="lor",Instance="{label}"' in metrics}
    assert used == labels  # ties break at random: both instances took requests


def test_runtime_limits_and_endpoint_tags(plane: Plane) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    _deploy(plane, "tagged")
    arn = sm.describe_endpoint(EndpointName="tagged")["EndpointArn"]
    with pytest.raises(ClientError) as exc:
        rt.invoke_endpoint(EndpointName="tagged", ContentType="text/csv", Body=b"1," * (3 * 1024 * 1024 + 1))
    assert exc.value.response["Error"]["Code"] == "ValidationError"
    assert "6291456 bytes" in exc.value.response["Error"]["Message"]
    assert _invoke(plane, "tagged")[1] == pytest.approx([2.0])  # and the next request is served
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


def _wait_scaled_to_zero(plane: Plane, name: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _instances(plane, name):
        assert time.monotonic() < deadline, plane.store.get(ep.ENDPOINT, name)
        time.sleep(0.02)


def test_serverless_cold_start_warm_reuse_and_scale_to_zero(home: Path) -> None:
    with Plane(home, backend=FakeBackend(), interval=0.02, serverless_idle=0.3) as plane:
        sm = plane.client("sagemaker")
        _deploy(plane, "sls", ServerlessConfig=SERVERLESS)
        desc = sm.describe_endpoint(EndpointName="sls")
        assert desc["ProductionVariants"][0]["CurrentServerlessConfig"] == SERVERLESS
        _wait_scaled_to_zero(plane, "sls")  # the instance that checked the model stops once idle
        assert sm.describe_endpoint(EndpointName="sls")["ProductionVariants"][0]["CurrentInstanceCount"] == 0
        assert _invoke(plane, "sls")[1] == pytest.approx([2.0])  # cold start, through Traffic
        (first,) = _instances(plane, "sls")
        assert _invoke(plane, "sls", "[[0, 1]]")[1] == pytest.approx([3.0])  # warm: same instance
        assert _instances(plane, "sls") == [first]
        metrics = httpx.get(plane.url + "/metrics").text
        assert 'ModelSetupTime_count{EndpointName="sls",VariantName="AllTraffic"} 1.0' in metrics
        _wait_scaled_to_zero(plane, "sls")
        assert _invoke(plane, "sls")[1] == pytest.approx([2.0])  # and back again
        assert 'ModelSetupTime_count{EndpointName="sls",VariantName="AllTraffic"} 2.0' in httpx.get(
            plane.url + "/metrics").text
        assert len(_fake(plane).instances) == 3


def test_requests_over_max_concurrency_are_throttled(plane: Plane) -> None:
    _model(plane, "narrow", answer=slow_or_greedy)
    _endpoint(plane, "narrow", {"VariantName": "AllTraffic", "ModelName": "narrow",
                                "ServerlessConfig": {**SERVERLESS, "MaxConcurrency": 1}})
    _invoke(plane, "narrow")
    outcomes: list[str] = []

    def call() -> None:
        try:
            outcomes.append(str(_invoke(plane, "narrow", "77,0")[1]))
        except ClientError as exc:
            outcomes.append(f"{exc.response['ResponseMetadata']['HTTPStatusCode']} {exc.response['Error']['Code']}")

    threads = [threading.Thread(target=call) for _ in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert time.monotonic() - started < 20  # no hang
    assert sorted(outcomes).count("429 ThrottlingException") >= 1, outcomes
    assert any(o.startswith("[") for o in outcomes), outcomes
    assert _invoke(plane, "narrow")[1] == pytest.approx([2.0])  # and it serves on


def test_an_instance_over_memory_size_fails_the_request_and_is_replaced(plane: Plane) -> None:
    _model(plane, "tight", answer=slow_or_greedy)
    _endpoint(plane, "tight", {"VariantName": "AllTraffic", "ModelName": "tight", "ServerlessConfig": SERVERLESS})
    _invoke(plane, "tight")
    (before,) = _instances(plane, "tight")
    with pytest.raises(ClientError) as exc:
        _invoke(plane, "tight", "99,0")
    assert exc.value.response["Error"]["Code"] == "ModelError"
    assert "MemorySizeInMB (1024 MB)" in exc.value.response["Error"]["Message"]
    assert _invoke(plane, "tight")[1] == pytest.approx([2.0])  # a new instance
    assert [i["pid"] for i in _instances(plane, "tight")] != [before["pid"]]


def test_async_inference_streams_through_the_backends_transport(plane: Plane) -> None:
    s3, rt = plane.client("s3"), plane.client("sagemaker-runtime")
    for bucket in ("async-in", "async-out"):
        s3.create_bucket(Bucket=bucket)
    _model(plane, "later")
    _endpoint(plane, "later", {"VariantName": "AllTraffic", "ModelName": "later"},
              AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://async-out/results/",
                                                     "S3FailurePath": "s3://async-out/failures/"}})
    s3.put_object(Bucket="async-in", Key="ok.csv", Body=b"1,0\n0,1\n")
    s3.put_object(Bucket="async-in", Key="bad.csv", Body=b"1,0\n")
    ok = rt.invoke_endpoint_async(EndpointName="later", InputLocation="s3://async-in/ok.csv", ContentType="text/csv",
                                  Accept="application/json")
    assert json.loads(s3_object(s3, ok["OutputLocation"])) == pytest.approx([2.0, 3.0])
    bad = rt.invoke_endpoint_async(EndpointName="later", InputLocation="s3://async-in/bad.csv",
                                   ContentType="text/plain")
    assert b"unsupported content type" in s3_object(s3, bad["FailureLocation"])


def test_a_transform_job_posts_through_the_backends_transport(plane: Plane, home: Path) -> None:
    sm, s3 = plane.client("sagemaker"), plane.client("s3")
    backend = _fake(plane)
    runner = TransformRunner(plane.store, backend, home, interval=0.02)
    runner.start()
    try:
        s3.create_bucket(Bucket="data")
        s3.put_object(Bucket="data", Key="in/rows.csv", Body=b"1,0\n0,1\n1,1\n")
        _model(plane, "lin")
        sm.create_transform_job(
            TransformJobName="batch", ModelName="lin", BatchStrategy="MultiRecord",
            TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://data/in/"}},
                            "ContentType": "text/csv", "SplitType": "Line"},
            TransformOutput={"S3OutputPath": "s3://data/out/", "Accept": "text/csv", "AssembleWith": "Line"},
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
        sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName="batch", WaiterConfig=WAIT)
        assert sm.describe_transform_job(TransformJobName="batch")["TransformJobStatus"] == "Completed"
        assert s3_object(s3, "s3://data/out/rows.csv.out") == b"2\n3\n5\n"
        (instance,) = [f for f in backend.instances if f.spec.variant == "transform"]
        assert instance.stopped and [r[0] for r in instance.requests] == ["/invocations"]
        assert backend.transport().blocking_clients == 1
    finally:
        runner.stop()
