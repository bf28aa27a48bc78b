"""What the control-plane tests share: a control plane in a thread (app + router + reconciler +
local backend, or another backend such as :class:`tests.fakes.FakeBackend`) with real boto3 clients,
and small scikit-learn model directories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import joblib
from botocore.config import Config
from botocore.exceptions import ClientError
from sklearn.linear_model import LinearRegression

from mainsail.backends.local import LocalBackend
from mainsail.gateway.app import create_control_app
from mainsail.hosting.reconciler import Reconciler
from mainsail.hosting.store import SQLiteStore
from mainsail.routing.router import Router
from mainsail.settings import ControlSettings
from tests.conftest import ThreadedServer, free_port

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
    """Control app + reconciler + a backend (the local one by default), with boto3 clients, assembled
    as ``mainsail up`` assembles them (``gateway.server.run_up``): the settings read once (the test's
    environment, ``home`` and ``serverless_idle`` winning) and passed to each part; the router, async
    inference and the reconciler get the backend's transport."""

    def __init__(self, home: Path, *, serverless_idle: float | None = None, backend: Any = None,
                 interval: float = 0.1, credentials: Path | None = None) -> None:
        given = {"home": home, "serverless_idle_seconds": serverless_idle, "credentials": credentials}
        self.settings = ControlSettings(**{k: v for k, v in given.items() if v is not None})
        self.store = SQLiteStore(home / "state.db")
        self.backend = backend if backend is not None else LocalBackend(
            home, max_model_bytes=self.settings.model_data_max_bytes, s3=self.settings.s3,
            max_workers=self.settings.max_instance_workers)
        self.router = Router(self.store, self.backend.transport(), async_idle=self.settings.async_idle_seconds,
                             model_data=self.backend.model_data)
        self.reconciler = Reconciler(self.store, self.backend, interval=interval, traffic=self.router.traffic,
                                     serverless_idle=self.settings.serverless_idle_seconds,
                                     async_idle=self.settings.async_idle_seconds)
        super().__init__(create_control_app(self.store, self.router, settings=self.settings), lifespan="on")

    def __enter__(self) -> Plane:
        self.start()
        self.reconciler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # in `mainsail up`'s order (gateway.server.run_up): the server and what its lifespan runs (async
        # inference leaves unfinished requests queued), then the instances
        self.stop()
        self.reconciler.stop(stop_instances=True)
        self.backend.stop_all()
        self.store.close()

    def client(self, service: str, key: str = "x", secret: str = "x", **config: Any) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret,
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}, **config))


def make_model_dir(root: Path, script: str, scale: float = 1.0) -> Path:
    root.mkdir()
    (root / "code").mkdir()
    (root / "code" / "inference.py").write_text(script)
    model = LinearRegression().fit([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.0, 2.0 * scale, 3.0 * scale])
    joblib.dump(model, root / "model.joblib")
    return root


def deploy(sm: Any, name: str, model_dir: Path, url: str | None = None) -> str:
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE,
                                      "ModelDataUrl": url or f"file://{model_dir}",
                                      "Environment": {"MAINSAIL_TEST": "1"}})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}])
    arn: str = sm.create_endpoint(EndpointName=name, EndpointConfigName=name)["EndpointArn"]
    return arn




class UpProcess:
    """A real `mainsail up` (the CLI, in its own process group) on a free loopback port over ``home``."""

    def __init__(self, home: Path, *, port: int | None = None, env: dict[str, str] | None = None,
                 timeout: float = 30, args: tuple[str, ...] = ()) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"{'https' if '--certfile' in args else 'http'}://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        self.log = home.parent / f"up-{home.name}.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mainsail.cli", "up", "--port", str(self.port), "--home", str(home), *args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MAINSAIL_HOME": str(home), **(env or {})})
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.post(self.url + "/", timeout=1, verify=False)
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline and self.proc.poll() is None, self.log_text()
                time.sleep(0.1)

    def log_text(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal it and wait; kills the group if it does not exit in time. The exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id="x",
                            aws_secret_access_key="x", config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def s3_object(s3: Any, location: str, timeout: float = 30) -> bytes:
    """The body of the object at ``s3://bucket/key``, polled for until it exists (async results)."""
    bucket, key = location[len("s3://"):].split("/", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            return body
        except ClientError:
            assert time.monotonic() < deadline, f"no object at {location}"
            time.sleep(0.1)
