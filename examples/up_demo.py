"""The control-plane part of `make demo`: `mainsail up`, then the real boto3 clients, as seed 003 deploys.

Starts `mainsail up` on a free loopback port with its own home folder, and with boto3's `sagemaker` and
`sagemaker-runtime` clients pointed at it: CreateModel, CreateEndpointConfig, CreateEndpoint, the
`endpoint_in_service` waiter, InvokeEndpoint with CSV and with JSON, then DeleteEndpoint,
DeleteEndpointConfig and DeleteModel. Prints each call and its answer, and stops what it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROLE = "arn:aws:iam::123456789012:role/DemoRole"


def _call(label: str, fn: Any, **kwargs: Any) -> Any:
    shown = {k: v for k, v in kwargs.items() if k != "Body"}
    print(f">>> {label}({', '.join(f'{k}={v!r}' for k, v in shown.items())})")
    answer = fn(**kwargs)
    if isinstance(answer, dict):
        answer = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
    return answer


def _wait_up(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def run(model_dir: Path, port: int, csv_body: str, json_body: dict[str, Any]) -> int:
    """Deploy ``model_dir`` through a fresh `mainsail up` on ``port`` and invoke it; 0 when all went well."""
    import boto3  # the demo's only AWS dependency, from the `s3` extra

    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="mainsail-demo-home-") as home:
        print(f"\n$ mainsail up --port {port}   (state, logs and S3 under a temporary MAINSAIL_HOME)")
        up = subprocess.Popen([sys.executable, "-m", "mainsail.cli", "up", "--port", str(port),
                               "--log-level", "warning"], env={**os.environ, "MAINSAIL_HOME": home})
        try:
            if not _wait_up(url, up):
                print("mainsail up did not start", file=sys.stderr)
                return 1
            kw: dict[str, Any] = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="demo",
                                      aws_secret_access_key="demo")
            sm, runtime = boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)
            name = "abuse-demo"
            print(_call("sm.create_model", sm.create_model, ModelName=name, ExecutionRoleArn=ROLE,
                        PrimaryContainer={"Image": "xgboost", "ModelDataUrl": f"file://{model_dir}"}))
            print(_call("sm.create_endpoint_config", sm.create_endpoint_config, EndpointConfigName=name,
                        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name,
                                             "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}]))
            print(_call("sm.create_endpoint", sm.create_endpoint, EndpointName=name, EndpointConfigName=name))
            started = time.monotonic()
            print(">>> sm.get_waiter('endpoint_in_service').wait(EndpointName=...)")
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name)
            status = sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
            print(f"{status} after {time.monotonic() - started:.1f} s")
            for content_type, body in (("text/csv", csv_body), ("application/json", json.dumps(json_body))):
                print(f"    Body: {body.strip()}")
                answer = _call("runtime.invoke_endpoint", runtime.invoke_endpoint, EndpointName=name,
                               ContentType=content_type, Accept="application/json", Body=body)
                print(f"<- {answer['InvokedProductionVariant']}: {answer['Body'].read().decode().strip()}")
            print(_call("sm.delete_endpoint", sm.delete_endpoint, EndpointName=name))
            sm.get_waiter("endpoint_deleted").wait(EndpointName=name)
            print(_call("sm.delete_endpoint_config", sm.delete_endpoint_config, EndpointConfigName=name))
            print(_call("sm.delete_model", sm.delete_model, ModelName=name))
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(60)
            print("mainsail up stopped")
    return 0
