"""Serverless variants end to end, through boto3 against real instances: the model is checked at
creation, the instance stops when idle (scale to zero), and the next request starts one (a cold
start, timed as ModelSetupTime) which then serves warm.

The rest is tested without processes on the in-memory backend: scaling to zero and back again, a
second cold start, throttling over MaxConcurrency (429, never a hang) and an instance over
MemorySizeInMB failing the request in flight and being replaced (tests/hosting/test_reconciler.py,
test_fake_backend_routing.py); how the local backend measures an instance's memory is in
tests/control/test_local_backend.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mainsail.hosting import endpoints as ep
from tests.control.helpers import IMAGE, INFERENCE_OK, ROLE, WAIT, Plane, make_model_dir

pytestmark = pytest.mark.slow


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
    sm = _serverless(plane, "sls", make_model_dir(tmp_path / "m", INFERENCE_OK))
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
