"""Serverless variants through boto3: the model is checked at creation, the instance stops when idle
(scale to zero), the next request starts one (a cold start, timed as ModelSetupTime), requests over
MaxConcurrency are throttled (429, never a hang), and an instance over MemorySizeInMB fails the
request in flight with a clear error and is replaced."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from mainsail.hosting import endpoints as ep
from tests.control.helpers import IMAGE, ROLE, WAIT, Plane, make_model_dir

pytestmark = pytest.mark.slow

SLOW_OR_GREEDY = """
import os, time
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def input_fn(body, content_type):
    return body

def predict_fn(data, model):
    rows = [[float(x) for x in line.split(",")] for line in data.strip().splitlines()]
    if rows[0][0] == 99:      # hold ~1.4 GB for a while: over a 1024 MB MemorySizeInMB
        hog = bytearray(1400 * 2**20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        time.sleep(10)
    if rows[0][0] == 77:      # a slow request
        time.sleep(1.5)
    return model.predict(rows)
"""


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plane]:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    with Plane(tmp_path, serverless_idle=1.5) as p:
        yield p


def _serverless(plane: Plane, name: str, model_dir: Path, *, memory: int = 2048, concurrency: int = 2) -> Any:
    sm = plane.client("sagemaker")
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"file://{model_dir}"})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name,
        "ServerlessConfig": {"MemorySizeInMB": memory, "MaxConcurrency": concurrency}}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    return sm


def _pids(plane: Plane, name: str) -> list[int]:
    record = plane.store.get(ep.ENDPOINT, name)
    assert record is not None
    return [int(i["pid"]) for i in record["Instances"]]


def _wait_scaled_to_zero(plane: Plane, name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _pids(plane, name):
        assert time.monotonic() < deadline, plane.store.get(ep.ENDPOINT, name)
        time.sleep(0.1)


def _invoke(plane: Plane, name: str, body: str = "1,0") -> list[float]:
    out = plane.client("sagemaker-runtime").invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=body)
    result: list[float] = json.loads(out["Body"].read())
    return result


def test_cold_start_warm_reuse_and_scale_to_zero(plane: Plane, tmp_path: Path) -> None:
    sm = _serverless(plane, "sls", make_model_dir(tmp_path / "m", SLOW_OR_GREEDY))
    desc = sm.describe_endpoint(EndpointName="sls")
    assert desc["ProductionVariants"][0]["CurrentServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 2}
    _wait_scaled_to_zero(plane, "sls")  # the instance that checked the model stops once idle
    assert sm.describe_endpoint(EndpointName="sls")["ProductionVariants"][0]["CurrentInstanceCount"] == 0

    assert _invoke(plane, "sls") == pytest.approx([2.0])  # cold start
    (pid,) = _pids(plane, "sls")
    assert _invoke(plane, "sls", "0,1") == pytest.approx([3.0])  # warm: same instance
    assert _pids(plane, "sls") == [pid]
    metrics = httpx.get(plane.url + "/metrics").text
    assert 'ModelSetupTime_count{EndpointName="sls",VariantName="AllTraffic"} 1.0' in metrics
    _wait_scaled_to_zero(plane, "sls")
    assert _invoke(plane, "sls") == pytest.approx([2.0])  # and back again
    assert 'ModelSetupTime_count{EndpointName="sls",VariantName="AllTraffic"} 2.0' in httpx.get(
        plane.url + "/metrics").text


def test_requests_over_max_concurrency_are_throttled(plane: Plane, tmp_path: Path) -> None:
    _serverless(plane, "narrow", make_model_dir(tmp_path / "m", SLOW_OR_GREEDY), concurrency=1)
    _invoke(plane, "narrow")  # warm
    outcomes: list[str] = []

    def call() -> None:
        try:
            outcomes.append(str(_invoke(plane, "narrow", "77,0")))
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
    assert _invoke(plane, "narrow") == pytest.approx([2.0])  # and it serves on


def test_instance_over_memory_size_fails_the_request_and_is_replaced(plane: Plane, tmp_path: Path) -> None:
    _serverless(plane, "tight", make_model_dir(tmp_path / "m", SLOW_OR_GREEDY), memory=1024)
    _invoke(plane, "tight")
    (pid,) = _pids(plane, "tight")
    with pytest.raises(ClientError) as exc:
        _invoke(plane, "tight", "99,0")
    assert exc.value.response["Error"]["Code"] == "ModelError"
    assert "MemorySizeInMB (1024 MB)" in exc.value.response["Error"]["Message"]
    assert _invoke(plane, "tight") == pytest.approx([2.0])  # a new instance
    assert _pids(plane, "tight") != [pid]
