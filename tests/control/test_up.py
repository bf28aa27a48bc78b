"""`mainsail up` as users run it: the real CLI in a subprocess, driven by the real boto3 clients."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from tests.control.helpers import UpProcess

pytestmark = pytest.mark.slow
WAIT = {"Delay": 1, "MaxAttempts": 60}


def _model_dir(root: Path) -> Path:
    from sklearn.linear_model import LogisticRegression

    (root / "code").mkdir(parents=True)
    X = np.random.default_rng(0).normal(size=(50, 3))
    joblib.dump(LogisticRegression().fit(X, (X[:, 0] > 0).astype(int)), root / "model.joblib")
    (root / "code" / "inference.py").write_text(
        "import os, joblib\ndef model_fn(d):\n    return joblib.load(os.path.join(d, 'model.joblib'))\n")
    return root


def _deploy(up: UpProcess, model_url: str) -> tuple[Any, Any]:
    sm, runtime = up.client("sagemaker"), up.client("sagemaker-runtime")
    sm.create_model(ModelName="m", ExecutionRoleArn="arn:aws:iam::123456789012:role/R",
                    PrimaryContainer={"Image": "sklearn", "ModelDataUrl": model_url})
    sm.create_endpoint_config(EndpointConfigName="c", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "m", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName="e", EndpointConfigName="c")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="e", WaiterConfig=WAIT)
    return sm, runtime


def _invoke_until_served(runtime: Any, name: str, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            body: bytes = runtime.invoke_endpoint(EndpointName=name, ContentType="text/csv",
                                                  Body="1.0,0.0,0.0")["Body"].read()
            return body
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_mainsail_up_serves_the_hosting_and_runtime_apis(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path / "model")
    up = UpProcess(tmp_path / "home")
    try:
        sm, runtime = _deploy(up, f"file://{model_dir}")
        assert runtime.invoke_endpoint(EndpointName="e", ContentType="text/csv", Body="1.0,0.0,0.0")["Body"].read() \
            == b"[1]"
        sm.delete_endpoint(EndpointName="e")
        sm.get_waiter("endpoint_deleted").wait(EndpointName="e", WaiterConfig=WAIT)
    finally:
        assert up.stop() == 0, up.log_text()


def test_mainsail_up_restarts_bring_endpoints_back(tmp_path: Path) -> None:
    """A clean stop (SIGTERM: instances stopped, started again by the next `up`) and a kill
    (SIGKILL: instances keep running and the next `up` adopts them)."""
    model_dir = _model_dir(tmp_path / "model")
    home = tmp_path / "home"
    up = UpProcess(home)
    try:
        sm, runtime = _deploy(up, str(model_dir))
        assert _invoke_until_served(runtime, "e") == b"[1]"
        assert up.stop() == 0
        up = UpProcess(home, port=up.port)
        # the waiter returns at once (the endpoint stays InService) while its instance starts again: the first
        # request, not retried, waits for the instance rather than fail with "no instance ready"
        sm.get_waiter("endpoint_in_service").wait(EndpointName="e", WaiterConfig=WAIT)
        assert runtime.invoke_endpoint(EndpointName="e", ContentType="text/csv", Body="1.0,0.0,0.0")[
            "Body"].read() == b"[1]"
        pids = sorted(p.name for p in (home / "instances").glob("*.json"))
        up.stop(signal.SIGKILL)
        up = UpProcess(home, port=up.port)
        assert _invoke_until_served(runtime, "e") == b"[1]"
        assert sorted(p.name for p in (home / "instances").glob("*.json")) == pids  # adopted, not restarted
        assert "adopted 1 of 1 instances" in up.log_text(100_000)
    finally:
        assert up.stop() == 0, up.log_text()
    assert not list((home / "instances").glob("*.json"))  # the last clean stop stopped its instances


def test_mainsail_up_freezes_its_start_up_objects_out_of_the_collectors_walks() -> None:
    """``mainsail up`` (``run_up``: ``freeze_start_up``) loads the service models it checks requests against,
    then freezes everything alive: a full collection no longer walks tens of thousands of start-up objects
    with the event loop stopped (docs/reliability.md, the soak). In a fresh interpreter, as in that process."""
    code = ("import gc; from mainsail.gateway.app import PRELOADED_MODELS, preload_models; "
            "from mainsail.aws import shapes; preload_models(True); "
            "print(gc.get_freeze_count(), set(PRELOADED_MODELS) <= set(shapes._models))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    frozen, loaded = out.stdout.split()
    assert int(frozen) > 20_000 and loaded == "True"
    code = ("import gc; from mainsail.gateway.app import preload_models; preload_models(False); "
            "print(gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["0"]  # an app that does not own its process (tests, embedding) freezes nothing
