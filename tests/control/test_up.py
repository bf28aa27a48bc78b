"""`mainsail up` as users run it: the real CLI in a subprocess, driven by the real boto3 clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import joblib
import numpy as np
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def test_mainsail_up_serves_the_hosting_and_runtime_apis(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    X = np.random.default_rng(0).normal(size=(50, 3))
    joblib.dump(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int)), model_dir / "model.joblib")
    (model_dir / "code" / "inference.py").write_text(
        "import os, joblib\ndef model_fn(d):\n    return joblib.load(os.path.join(d, 'model.joblib'))\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mainsail.cli", "up", "--port", str(port), "--home",
                             str(tmp_path / "home")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(url + "/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        kw = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        sm, runtime = boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)
        sm.create_model(ModelName="m", ExecutionRoleArn="arn:aws:iam::123456789012:role/R",
                        PrimaryContainer={"Image": "sklearn", "ModelDataUrl": f"file://{model_dir}"})
        sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large"}])
        sm.create_endpoint(EndpointName="e", EndpointConfigName="c")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="e", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        answer = runtime.invoke_endpoint(EndpointName="e", ContentType="text/csv", Body="1.0,0.0,0.0")
        assert answer["Body"].read() == b"[1]"
        sm.delete_endpoint(EndpointName="e")
        sm.get_waiter("endpoint_deleted").wait(EndpointName="e", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()


def _start_up(port: int, home: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mainsail.cli", "up", "--port", str(port), "--home", str(home)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.1)


def _invoke_until_served(runtime: object, name: str, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            body: bytes = runtime.invoke_endpoint(  # type: ignore[attr-defined]
                EndpointName=name, ContentType="text/csv", Body="1.0,0.0,0.0")["Body"].read()
            return body
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_mainsail_up_restarts_bring_endpoints_back(tmp_path: Path) -> None:
    """A clean stop (SIGTERM: instances stopped, started again by the next `up`) and a kill
    (SIGKILL: instances keep running and the next `up` adopts them)."""
    from sklearn.linear_model import LogisticRegression

    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    X = np.random.default_rng(0).normal(size=(50, 3))
    joblib.dump(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int)), model_dir / "model.joblib")
    (model_dir / "code" / "inference.py").write_text(
        "import os, joblib\ndef model_fn(d):\n    return joblib.load(os.path.join(d, 'model.joblib'))\n")
    port, home, log = free_port(), tmp_path / "home", tmp_path / "up.log"
    kw = {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1", "aws_access_key_id": "x",
          "aws_secret_access_key": "x"}
    sm, runtime = boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)
    proc = _start_up(port, home, log)
    try:
        sm.create_model(ModelName="m", PrimaryContainer={"Image": "sklearn", "ModelDataUrl": str(model_dir)})
        sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
        sm.create_endpoint(EndpointName="e", EndpointConfigName="c")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="e", WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        assert _invoke_until_served(runtime, "e") == b"[1]"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        proc = _start_up(port, home, log)
        assert sm.describe_endpoint(EndpointName="e")["EndpointStatus"] == "InService"
        assert _invoke_until_served(runtime, "e") == b"[1]"
        pids = sorted(p.name for p in (home / "instances").glob("*.json"))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc = _start_up(port, home, log)
        assert _invoke_until_served(runtime, "e") == b"[1]"
        assert sorted(p.name for p in (home / "instances").glob("*.json")) == pids  # adopted, not restarted
        assert "adopted 1 of 1 instances" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert not list((home / "instances").glob("*.json"))  # the last clean stop stopped its instances
