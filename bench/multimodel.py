"""Multi-model endpoints: first-load and warm latency of ``InvokeEndpoint`` with a ``TargetModel``.

``python -m bench multimodel`` starts one ``mainsail up`` (``--log-level warning``), uploads ``models``
small scikit-learn ``model.tar.gz`` (a ``LinearRegression`` and an ``inference.py``, each answering
differently) under ``s3://bench-mme/models/`` in mainsail's own S3, and creates one multi-model
endpoint (``Mode: MultiModel``, one instance) over that prefix, all with boto3. Then, with a raw
keep-alive HTTP client on ``POST /endpoints/NAME/invocations`` (and boto3 for the warm loop too):

* **first load**: the first request for each target model: the router gets 404 from the instance,
  fetches the object from S3, extracts it, ``POST /models``, then invokes. The very first model also
  pays for importing scikit-learn in the instance, so it is reported on its own;
* **reload**: after ``DELETE /models/{name}`` on the instance (what an LRU eviction does), the next
  request: the model data is cached on disk, so this is the load alone;
* **warm**: ``warm_requests`` requests round-robin over the loaded models, one at a time.

Nothing is left running: ``mainsail up`` is stopped with SIGTERM (it stops its instance), then the
instance's process group is killed if anything of it is left.
"""

from __future__ import annotations

import http.client
import io
import json
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.control import boto3_client, code_state, instance_from_state, make_sure_stopped, start_up
from bench.procs import stop
from bench.report import machine_summary, versions
from bench.serve import HOST

ENDPOINT = "bench-mme"
BUCKET = "bench-mme"
PREFIX = "models/"
SCRIPT = """
import os
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""


@dataclass
class MultiModelBenchmark:
    command: str
    models: int
    first_ms: float = 0.0
    first_load_ms: list[float] = field(default_factory=list)
    reload_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)
    warm_boto3_ms: list[float] = field(default_factory=list)
    endpoint_s: float = 0.0
    wall_s: float = 0.0
    errors: int = 0
    started: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def model_tar(index: int) -> bytes:
    import joblib
    from sklearn.linear_model import LinearRegression

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "code").mkdir()
        (root / "code" / "inference.py").write_text(SCRIPT)
        joblib.dump(LinearRegression().fit([[0.0], [1.0]], [0.0, float(index + 1)]), root / "model.joblib")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for item in sorted(root.iterdir()):
                tar.add(item, arcname=item.name)
    return buffer.getvalue()


def target(index: int) -> str:
    return f"model-{index}.tar.gz"


class Invoker:
    """One keep-alive connection to ``mainsail up``'s runtime route."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)

    def __call__(self, index: int, x: float = 2.0) -> float:
        body = json.dumps([[x]]).encode()
        started = time.perf_counter()
        self.conn.request("POST", f"/endpoints/{ENDPOINT}/invocations", body=body, headers={
            "Content-Type": "application/json", "Accept": "application/json",
            "X-Amzn-SageMaker-Target-Model": target(index)})
        response = self.conn.getresponse()
        payload = response.read()
        elapsed = (time.perf_counter() - started) * 1e3
        if response.status != 200 or abs(json.loads(payload)[0] - (index + 1) * x) > 1e-6:
            raise RuntimeError(f"model {index}: {response.status} {payload[:200]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


def run_multimodel_benchmark(*, models: int = 8, warm_requests: int = 500, command: str = "",
                             log: Callable[[str], None] = print) -> MultiModelBenchmark:
    bench = MultiModelBenchmark(command=command, models=models)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mainsail-bench-mme-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        home.mkdir()
        up = start_up(home, tmp / "up.log")
        info = None
        try:
            url = f"http://{HOST}:{up.port}"
            s3, sm, rt = boto3_client("s3", url), boto3_client("sagemaker", url), boto3_client("sagemaker-runtime", url)
            s3.create_bucket(Bucket=BUCKET)
            for index in range(models):
                s3.put_object(Bucket=BUCKET, Key=PREFIX + target(index), Body=model_tar(index))
            sm.create_model(ModelName=ENDPOINT, ExecutionRoleArn="arn:aws:iam::123456789012:role/Bench",
                            PrimaryContainer={"Image": "mainsail", "Mode": "MultiModel",
                                              "ModelDataUrl": f"s3://{BUCKET}/{PREFIX}"})
            sm.create_endpoint_config(EndpointConfigName=ENDPOINT, ProductionVariants=[{
                "VariantName": "AllTraffic", "ModelName": ENDPOINT, "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large"}])
            started = time.monotonic()
            sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=ENDPOINT)
            sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT,
                                                      WaiterConfig={"Delay": 1, "MaxAttempts": 120})
            bench.endpoint_s = time.monotonic() - started
            info = instance_from_state(home, ENDPOINT)
            assert info is not None, "the endpoint's instance is not in the state"
            log(f"endpoint InService in {bench.endpoint_s:.1f} s; instance on port {info.port}")
            invoke = Invoker(up.port)
            instance = http.client.HTTPConnection(HOST, info.port, timeout=30)
            try:
                bench.first_ms = invoke(0)
                bench.first_load_ms = [invoke(i) for i in range(1, models)]
                log(f"first load: {bench.first_ms:.1f} ms (model 0), "
                    f"median {statistics.median(bench.first_load_ms):.1f} ms")
                for index in range(models):
                    instance.request("DELETE", f"/models/{target(index)}")
                    response = instance.getresponse()
                    response.read()
                    assert response.status == 200, response.status
                    bench.reload_ms.append(invoke(index))
                log(f"reload: median {statistics.median(bench.reload_ms):.1f} ms")
                for n in range(warm_requests):
                    bench.warm_ms.append(invoke(n % models))
                body = json.dumps([[2.0]]).encode()
                for n in range(min(warm_requests, 200)):
                    started_call = time.perf_counter()
                    reply = rt.invoke_endpoint(EndpointName=ENDPOINT, TargetModel=target(n % models), Body=body,
                                               ContentType="application/json", Accept="application/json")
                    reply["Body"].read()
                    bench.warm_boto3_ms.append((time.perf_counter() - started_call) * 1e3)
                log(f"warm: p50 {statistics.median(bench.warm_ms):.2f} ms (raw), "
                    f"{statistics.median(bench.warm_boto3_ms):.2f} ms (boto3)")
            finally:
                invoke.close()
                instance.close()
        finally:
            stop(up, grace_s=30.0)
            make_sure_stopped(info)
    bench.wall_s = time.monotonic() - began
    return bench


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def results_table(bench: MultiModelBenchmark) -> str:
    rows = [("first load, first model (imports scikit-learn)", [bench.first_ms]),
            ("first load, each other model (S3 fetch + extract + load)", bench.first_load_ms),
            ("reload after unload/eviction (data cached on disk)", bench.reload_ms),
            ("warm, raw HTTP keep-alive", bench.warm_ms),
            ("warm, boto3 invoke_endpoint", bench.warm_boto3_ms)]
    lines = ["| request | n | p50 ms | p90 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for label, values in rows:
        if values:
            lines.append(f"| {label} | {len(values)} | {statistics.median(values):.2f} | "
                         f"{_pct(values, 0.9):.2f} | {max(values):.2f} |")
    return "\n".join(lines)


def render_multimodel_section(bench: MultiModelBenchmark) -> str:
    return "\n".join([
        "## Multi-model endpoints (TargetModel)",
        "",
        f"`{bench.command}` on {bench.started}, {bench.wall_s:.0f} s in all; code {code_state()}.",
        "",
        f"One `mainsail up`, one multi-model endpoint (one instance, `mainsail serve --multi-model`) over "
        f"`s3://{BUCKET}/{PREFIX}` in mainsail's own S3, {bench.models} scikit-learn `model.tar.gz` "
        "(LinearRegression + `inference.py`). Requests one at a time on `POST /endpoints/NAME/invocations` "
        "with `X-Amzn-SageMaker-Target-Model`; latency seen by the client. The endpoint was InService "
        f"{bench.endpoint_s:.1f} s after CreateEndpoint.",
        "",
        results_table(bench),
        "",
        "A first load is the router's 404 from the instance, the S3 download and extraction (cached by "
        "content), `POST /models` (the script imported under a private module name, the model loaded), "
        "then the invocation again; a reload only checks the object's ETag (HEAD) before loading the cached "
        "data. A warm request is one forward to the instance's `/models/{name}/invoke` (no single-model "
        "endpoint was measured alongside in this run; see the control section for that hop).",
        "",
        machine_summary(),
        "",
        versions(),
    ])
