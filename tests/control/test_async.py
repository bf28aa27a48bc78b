"""Asynchronous inference through boto3: InvokeEndpointAsync queues the request durably and answers
202 with where the result will be; the result (or the failure) lands in S3 (mainsail's own store);
requests still queued when the control plane stops run after it starts again."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.control.helpers import IMAGE, ROLE, WAIT, Plane, deploy, make_model_dir, s3_object

pytestmark = pytest.mark.slow

SCRIPT = """
import os, time
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def input_fn(body, content_type):
    rows = [[float(x) for x in line.split(",")] for line in body.strip().splitlines()]
    if rows[0][0] < 0:
        raise ValueError("negative inputs are not allowed")
    if rows[0][0] == 7:
        time.sleep(1.0)
    return rows
"""


def _async_endpoint(plane: Plane, name: str, model_dir: Path, concurrency: int = 4, *,
                    environment: dict[str, str] | None = None) -> Any:
    sm = plane.client("sagemaker")
    s3 = plane.client("s3")
    for bucket in ("async-in", "async-out"):
        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError:
            pass
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"file://{model_dir}",
                                      "Environment": environment or {}})
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
                             "InstanceType": "ml.m5.large"}],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://async-out/results/",
                                               "S3FailurePath": "s3://async-out/failures/"},
                              "ClientConfig": {"MaxConcurrentInvocationsPerInstance": concurrency}})
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    return s3


def test_async_results_and_failures(plane: Plane, tmp_path: Path) -> None:
    s3 = _async_endpoint(plane, "later", make_model_dir(tmp_path / "m", SCRIPT))
    rt = plane.client("sagemaker-runtime")
    s3.put_object(Bucket="async-in", Key="ok.csv", Body=b"1,0\n0,1\n")
    s3.put_object(Bucket="async-in", Key="bad.csv", Body=b"-1,0\n")
    ok = rt.invoke_endpoint_async(EndpointName="later", InputLocation="s3://async-in/ok.csv", ContentType="text/csv",
                                  Accept="application/json")
    assert ok["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert ok["OutputLocation"] == f"s3://async-out/results/{ok['InferenceId']}.out"
    assert ok["FailureLocation"] == f"s3://async-out/failures/{ok['InferenceId']}-error.out"
    assert json.loads(s3_object(s3, ok["OutputLocation"])) == pytest.approx([2.0, 3.0])

    bad = rt.invoke_endpoint_async(EndpointName="later", InputLocation="s3://async-in/bad.csv",
                                   ContentType="text/csv", InferenceId="my-id-1")
    assert bad["InferenceId"] == "my-id-1"
    assert b"negative inputs are not allowed" in s3_object(s3, bad["FailureLocation"])
    missing = rt.invoke_endpoint_async(EndpointName="later", InputLocation="s3://async-in/nope.csv",
                                       ContentType="text/csv")
    assert b"Could not read the input s3://async-in/nope.csv" in s3_object(s3, missing["FailureLocation"])

    named = rt.invoke_endpoint_async(EndpointName="later", InputLocation="s3://async-in/ok.csv",
                                     ContentType="text/csv", S3OutputPathExtension="daily", Filename="run.json")
    assert named["OutputLocation"] == "s3://async-out/results/daily/run.json"
    assert json.loads(s3_object(s3, named["OutputLocation"])) == pytest.approx([2.0, 3.0])

    with pytest.raises(ClientError) as exc:
        rt.invoke_endpoint_async(EndpointName="ghost", InputLocation="s3://async-in/ok.csv")
    assert exc.value.response["Error"]["Code"] == "ValidationError"
    deploy(plane.client("sagemaker"), "sync", make_model_dir(tmp_path / "s", SCRIPT))
    plane.client("sagemaker").get_waiter("endpoint_in_service").wait(EndpointName="sync", WaiterConfig=WAIT)
    with pytest.raises(ClientError) as exc:
        rt.invoke_endpoint_async(EndpointName="sync", InputLocation="s3://async-in/ok.csv")
    assert "not an asynchronous inference endpoint" in exc.value.response["Error"]["Message"]


def test_queued_requests_survive_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    first = Plane(tmp_path).__enter__()
    try:
        s3 = _async_endpoint(first, "durable", make_model_dir(tmp_path / "m", SCRIPT), concurrency=1)
        s3.put_object(Bucket="async-in", Key="slow.csv", Body=b"7,0\n")
        rt = first.client("sagemaker-runtime")
        answers = [rt.invoke_endpoint_async(EndpointName="durable", InputLocation="s3://async-in/slow.csv",
                                            ContentType="text/csv") for _ in range(4)]
    finally:
        first.__exit__(None, None, None)  # stops while most requests still wait in the queue
    with Plane(tmp_path) as second:
        s3 = second.client("s3")
        for answer in answers:
            assert json.loads(s3_object(s3, answer["OutputLocation"], timeout=60)) == pytest.approx([14.0])


def test_async_endpoint_scales_to_zero_while_its_queue_is_empty(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    monkeypatch.setenv("MAINSAIL_ASYNC_IDLE_SECONDS", "1.5")
    with Plane(tmp_path) as plane:
        s3 = _async_endpoint(plane, "sleepy", make_model_dir(tmp_path / "m", SCRIPT))
        s3.put_object(Bucket="async-in", Key="ok.csv", Body=b"1,0\n")

        def instances() -> int:
            record = plane.store.get("endpoint", "sleepy")
            assert record is not None
            return len(record["Instances"])

        deadline = time.monotonic() + 30
        while instances():  # idle with an empty queue: no instance
            assert time.monotonic() < deadline
            time.sleep(0.1)
        rt = plane.client("sagemaker-runtime")
        answer = rt.invoke_endpoint_async(EndpointName="sleepy", InputLocation="s3://async-in/ok.csv",
                                          ContentType="text/csv")
        assert json.loads(s3_object(s3, answer["OutputLocation"], timeout=60)) == pytest.approx([2.0])
        metrics = httpx.get(plane.url + "/metrics").text
        assert 'ModelSetupTime_count{EndpointName="sleepy",VariantName="AllTraffic"} 1.0' in metrics
        deadline = time.monotonic() + 30
        while instances():  # and back to zero once idle again
            assert time.monotonic() < deadline
            time.sleep(0.1)


# Answers with the instance's own settings, as its process sees them.
ENV_SCRIPT = """
import json, os

def model_fn(model_dir):
    return None

def transform_fn(model, body, content_type, accept):
    names = ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "SAGEMAKER_MAX_PAYLOAD_IN_MB")
    return json.dumps({name: os.environ.get(name) for name in names}), "application/json"
"""


def test_async_instances_run_with_the_longest_invocation_timeout(plane: Plane, tmp_path: Path) -> None:
    rt = plane.client("sagemaker-runtime")
    s3 = _async_endpoint(plane, "patient", make_model_dir(tmp_path / "a", ENV_SCRIPT))
    _async_endpoint(plane, "capped", make_model_dir(tmp_path / "b", ENV_SCRIPT),
                    environment={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "120", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "50"})
    s3.put_object(Bucket="async-in", Key="any.csv", Body=b"1,0\n")

    def settings(endpoint: str) -> dict[str, str | None]:
        answer = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation="s3://async-in/any.csv",
                                          ContentType="text/csv")
        found: dict[str, str | None] = json.loads(s3_object(s3, answer["OutputLocation"]))
        return found

    # The instance's own 60 s default would cut an invocation that InvocationTimeoutSeconds (up to
    # 3600 s, enforced by the control plane) still allows.
    assert settings("patient") == {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "3600", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024"}
    # The model's Environment wins.
    assert settings("capped") == {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "120", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "50"}
    # A real-time endpoint's instance keeps the defaults (neither variable set).
    sm = plane.client("sagemaker")
    deploy(sm, "prompt", make_model_dir(tmp_path / "c", ENV_SCRIPT))
    sm.get_waiter("endpoint_in_service").wait(EndpointName="prompt", WaiterConfig=WAIT)
    reply = rt.invoke_endpoint(EndpointName="prompt", Body=b"1,0\n", ContentType="text/csv")
    assert json.loads(reply["Body"].read()) == {"SAGEMAKER_MODEL_SERVER_TIMEOUT": None,
                                                "SAGEMAKER_MAX_PAYLOAD_IN_MB": None}
