"""Multi-model endpoints through the control plane: boto3 sagemaker + sagemaker-runtime + s3."""

from __future__ import annotations

import concurrent.futures
import gc
import io
import json
import re
import tarfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from botocore.exceptions import ClientError, WaiterError
from sklearn.linear_model import LinearRegression

from mainsail.backends.model_sources import container_model_source, multi_model_prefix
from mainsail.hosting.endpoints import ENDPOINT
from mainsail.routing.target_model import download_failed, model_name, target_url
from tests.control.helpers import IMAGE, ROLE, WAIT, Plane, deploy, make_model_dir

pytestmark = pytest.mark.slow

BUCKET = "models"
PREFIX = "mme/"
MB = 1024 * 1024
SCRIPT = """
import os
import joblib
from helper import OFFSET

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def predict_fn(data, model):
    return model.predict(data) + OFFSET
"""


def model_tar(tmp: Path, index: int, padding_mb: float = 0) -> bytes:
    """A model.tar.gz answering (index + 1) * x + 100 * index, padded with random bytes."""
    root = tmp / f"model-{index}"
    (root / "code").mkdir(parents=True)
    (root / "code" / "inference.py").write_text(SCRIPT)
    (root / "code" / "helper.py").write_text(f"OFFSET = {100 * index}\n")
    model = LinearRegression().fit([[0.0], [1.0]], [0.0, float(index + 1)])
    if padding_mb:
        model.padding_ = np.random.default_rng(index).random(int(padding_mb * MB / 8))
    joblib.dump(model, root / "model.joblib")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for item in sorted(root.iterdir()):
            tar.add(item, arcname=item.name)
    return buffer.getvalue()


def expected(index: int, x: float = 2.0) -> float:
    return (index + 1) * x + 100 * index


def create_mme(sm: Any, name: str, url: str, env: dict[str, str] | None = None) -> None:
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "Mode": "MultiModel", "ModelDataUrl": url,
                                      "Environment": env or {}})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)


def predict(rt: Any, endpoint: str, target: str, x: float = 2.0) -> Any:
    reply = rt.invoke_endpoint(EndpointName=endpoint, TargetModel=target, Body=json.dumps([[x]]),
                               ContentType="application/json", Accept="application/json")
    assert reply["InvokedProductionVariant"] == "AllTraffic"
    return json.loads(reply["Body"].read())


def predict_retrying(rt: Any, endpoint: str, target: str, timeout: float = 60) -> Any:
    """``predict``, tried again after a ModelNotReadyException (the tests' clients do not retry)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return predict(rt, endpoint, target)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ModelNotReadyException" or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def metric(text: str, name: str, endpoint: str) -> float:
    found = re.search(rf'^{name}_total{{EndpointName="{endpoint}",VariantName="AllTraffic"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def clients(plane: Plane) -> Iterator[Callable[[str], Any]]:
    """``plane.client``, with every client closed afterwards (their pooled sockets too)."""
    made: list[Any] = []

    def make(service: str) -> Any:
        made.append(plane.client(service))
        return made[-1]

    yield make
    for client in made:
        client.close()
    # botocore can drop a pooled connection without closing it after an error answer; collect it
    # here, quietly, rather than in whichever later test the collector happens to run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        made.clear()
        gc.collect()


def test_helpers() -> None:
    assert multi_model_prefix(container_model_source(
        {"ModelDataUrl": "s3://b/p/", "Mode": "MultiModel"}) or "") == "s3://b/p/"
    assert multi_model_prefix(container_model_source({"ModelDataUrl": "s3://b/m.tar.gz"}) or "") is None
    assert multi_model_prefix("/models", {"SAGEMAKER_MULTI_MODEL": "true"}) == "/models"
    assert target_url("s3://b/p/", "a.tar.gz") == target_url("s3://b/p", "a.tar.gz") == "s3://b/p/a.tar.gz"
    assert model_name("model-a.tar.gz") == "model-a.tar.gz"
    odd = model_name("team/x y.tar.gz")
    assert re.fullmatch(r"team_x_y\.tar\.gz-[0-9a-f]{12}", odd) and odd != model_name("team/x_y.tar.gz")
    assert target_url("s3://b/p/#uncompressed", "/team/m1/") == "s3://b/p/team/m1/"
    raw = {"ModelDataSource": {"S3DataSource": {"S3Uri": "s3://b/p", "S3DataType": "S3Prefix",
                                                "CompressionType": "None"}}, "Mode": "MultiModel"}
    assert multi_model_prefix(container_model_source(raw) or "") == "s3://b/p/#uncompressed"
    gz = {**raw, "ModelDataSource": {"S3DataSource": {**raw["ModelDataSource"]["S3DataSource"],
                                                      "CompressionType": "Gzip"}}}
    assert multi_model_prefix(container_model_source(gz) or "") == "s3://b/p/"
    assert download_failed("s3://b/p/x.tar.gz", "no such object").startswith(
        "Failed to download model data(bucket: b, key: p/x.tar.gz).")


def test_multi_model_endpoint_with_s3_eviction_and_reload(plane: Plane, clients: Callable[[str], Any],
                                                          tmp_path: Path) -> None:
    s3, sm, rt = clients("s3"), clients("sagemaker"), clients("sagemaker-runtime")
    s3.create_bucket(Bucket=BUCKET)
    for index in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}model-{'abc'[index]}.tar.gz",
                      Body=model_tar(tmp_path, index, padding_mb=9))
    # 3 x 9 MB do not fit in 25 MB: every third new model evicts the least recently used one
    create_mme(sm, "mme", f"s3://{BUCKET}/{PREFIX}", {"MAINSAIL_MULTI_MODEL_MEMORY_MB": "25"})

    for index in range(3):
        assert predict(rt, "mme", f"model-{'abc'[index]}.tar.gz") == [pytest.approx(expected(index))]
    assert predict(rt, "mme", "model-c.tar.gz") == [pytest.approx(expected(2))]  # loaded: a hit
    metrics = httpx.get(plane.url + "/metrics").text
    assert metric(metrics, "ModelCacheMiss", "mme") == 3
    assert metric(metrics, "ModelCacheHit", "mme") == 1
    assert 'TargetModelInvocations_total{EndpointName="mme",TargetModel="model-c.tar.gz",' \
           'VariantName="AllTraffic"} 2.0' in metrics

    # model-a was evicted by model-c; the next request reloads it transparently
    record = plane.store.get(ENDPOINT, "mme")
    assert record is not None
    instance = record["Instances"][0]
    loaded = httpx.get(f"http://127.0.0.1:{instance['port']}/models").json()["models"]
    assert "model-a.tar.gz" not in [m["modelName"] for m in loaded]
    assert predict(rt, "mme", "model-a.tar.gz", 3.0) == [pytest.approx(expected(0, 3.0))]
    assert metric(httpx.get(plane.url + "/metrics").text, "ModelCacheMiss", "mme") == 4

    # concurrent first requests for a new model: one loads it, the others may be told
    # ModelNotReadyException meanwhile; trying again as a client does, all are answered
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}sub/model-d.tar.gz", Body=model_tar(tmp_path / "d", 3))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: predict_retrying(rt, "mme", "sub/model-d.tar.gz"), range(6)))
    assert results == [[pytest.approx(expected(3))]] * 6

    with pytest.raises(ClientError) as missing:
        predict(rt, "mme", "model-zzz.tar.gz")
    error = missing.value.response
    assert error["Error"]["Code"] == "ValidationError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Message"].startswith(
        f"Failed to download model data(bucket: {BUCKET}, key: {PREFIX}model-zzz.tar.gz).")

    # a plain InvokeEndpoint on a multi-model endpoint is refused by the router
    with pytest.raises(ClientError) as plain:
        rt.invoke_endpoint(EndpointName="mme", Body=b"[[1.0]]", ContentType="application/json")
    assert plain.value.response["Error"]["Code"] == "ValidationError"


def test_target_model_on_a_single_model_endpoint(clients: Callable[[str], Any], tmp_path: Path) -> None:
    from tests.control.helpers import INFERENCE_OK

    sm, rt = clients("sagemaker"), clients("sagemaker-runtime")
    model_dir = make_model_dir(tmp_path / "single", INFERENCE_OK)
    deploy(sm, "single", model_dir)
    sm.get_waiter("endpoint_in_service").wait(EndpointName="single", WaiterConfig=WAIT)
    with pytest.raises(ClientError) as err:
        rt.invoke_endpoint(EndpointName="single", TargetModel="a.tar.gz", Body=b"[[1.0, 2.0]]",
                           ContentType="application/json")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert err.value.response["Error"]["Message"] == (
        "Endpoint single is not a multi-model endpoint and does not support target model header.")
    # without the header it serves as usual
    reply = rt.invoke_endpoint(EndpointName="single", Body=b"[[1.0, 2.0]]", ContentType="application/json")
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_multi_model_endpoint_from_a_local_directory(clients: Callable[[str], Any], tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for index in range(2):
        (models / f"m{index}.tar.gz").write_bytes(model_tar(tmp_path / "src", index))
    sm, rt = clients("sagemaker"), clients("sagemaker-runtime")
    create_mme(sm, "mme-local", f"file://{models}")
    assert predict(rt, "mme-local", "m1.tar.gz") == [pytest.approx(expected(1))]
    assert predict(rt, "mme-local", "m0.tar.gz") == [pytest.approx(expected(0))]
    with pytest.raises(ClientError) as missing:
        predict(rt, "mme-local", "m9.tar.gz")
    assert missing.value.response["Error"]["Message"].startswith(
        f"Failed to download model data(path: file://{models}/m9.tar.gz).")
    with pytest.raises(ClientError) as untargeted:  # a multi-model endpoint needs TargetModel
        rt.invoke_endpoint(EndpointName="mme-local", ContentType="text/csv", Body=b"1,2")
    assert untargeted.value.response["Error"]["Code"] == "ValidationError"
    assert "TargetModel" in untargeted.value.response["Error"]["Message"]


GATED = """
import os
import time
from pathlib import Path

import joblib

def model_fn(model_dir):
    gate = Path(Path(model_dir, "gate.txt").read_text())
    gate.with_suffix(".started").write_text("")
    deadline = time.monotonic() + 120
    while not gate.exists():  # the test opens the gate when it has seen what it wants
        if time.monotonic() > deadline:
            raise RuntimeError("the test never opened the gate")
        time.sleep(0.05)
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""


def gated_tar(tmp: Path, name: str) -> tuple[bytes, Path]:
    """A model.tar.gz whose model_fn waits until the returned gate file exists (y = x)."""
    root = tmp / name
    (root / "code").mkdir(parents=True)
    (root / "code" / "inference.py").write_text(GATED)
    gate = tmp / f"{name}.gate"
    (root / "gate.txt").write_text(str(gate))
    joblib.dump(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), root / "model.joblib")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for item in sorted(root.iterdir()):
            tar.add(item, arcname=item.name)
    return buffer.getvalue(), gate


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def not_ready(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(ClientError) as err:
        call()
    response: dict[str, Any] = err.value.response
    assert response["Error"]["Code"] == "ModelNotReadyException", response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 429
    return response


def test_model_not_ready_while_a_target_model_loads(plane: Plane, clients: Callable[[str], Any],
                                                    tmp_path: Path) -> None:
    s3, sm, rt = clients("s3"), clients("sagemaker"), clients("sagemaker-runtime")  # rt: max_attempts 1
    s3.create_bucket(Bucket="gated")
    gates = {}
    for name in ("first", "slow"):
        body, gates[name] = gated_tar(tmp_path, name)
        s3.put_object(Bucket="gated", Key=f"{name}.tar.gz", Body=body)
    create_mme(sm, "mme-gated", "s3://gated/", {"MAINSAIL_MULTI_MODEL_LOAD_WAIT_SECONDS": "5"})

    # the first request for a model waits for its load (within the endpoint's 5 s load wait) ...
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(predict, rt, "mme-gated", "first.tar.gz")
        wait_for(gates["first"].with_suffix(".started"))
        # ... while another request for the model being loaded is refused at once
        message = not_ready(lambda: predict(rt, "mme-gated", "first.tar.gz"))["Error"]["Message"]
        assert "still downloading or loading the target model" in message
        gates["first"].write_text("")
        assert first.result(timeout=60) == [pytest.approx(2.0)]
    assert predict(rt, "mme-gated", "first.tar.gz", 3.0) == [pytest.approx(3.0)]

    # a load that outlasts the wait: ModelNotReadyException, and the load goes on
    not_ready(lambda: predict(rt, "mme-gated", "slow.tar.gz"))
    assert gates["slow"].with_suffix(".started").exists()
    not_ready(lambda: predict(rt, "mme-gated", "slow.tar.gz"))
    record = plane.store.get(ENDPOINT, "mme-gated")
    assert record is not None
    port = record["Instances"][0]["port"]
    direct = httpx.post(f"http://127.0.0.1:{port}/models/slow.tar.gz/invoke", content=b"[[1.0]]",
                        headers={"content-type": "application/json"})
    assert direct.status_code == 429 and direct.json()["error"] == "ModelNotReady"
    gates["slow"].write_text("")
    assert predict_retrying(rt, "mme-gated", "slow.tar.gz") == [pytest.approx(2.0)]
    metrics = httpx.get(plane.url + "/metrics").text
    assert metric(metrics, "ModelNotReady", "mme-gated") >= 3
    # the miss is the request that waited for "first"; "slow" was loaded when it was answered
    assert metric(metrics, "ModelCacheMiss", "mme-gated") == 1
    assert metric(metrics, "ModelCacheHit", "mme-gated") == 2


def create_mme_from_source(sm: Any, name: str, uri: str, compression: str) -> None:
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": IMAGE, "Mode": "MultiModel",
        "ModelDataSource": {"S3DataSource": {"S3Uri": uri, "S3DataType": "S3Prefix",
                                             "CompressionType": compression}}})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)


def test_multi_model_endpoints_from_model_data_source(clients: Callable[[str], Any], tmp_path: Path) -> None:
    s3, sm, rt = clients("s3"), clients("sagemaker"), clients("sagemaker-runtime")
    s3.create_bucket(Bucket="mds")
    for index in range(2):
        # Gzip: each target model is a model.tar.gz under the prefix, as with ModelDataUrl
        s3.put_object(Bucket="mds", Key=f"archives/m{index}.tar.gz", Body=model_tar(tmp_path / "gz", index))
        # None: each target model is a folder of uncompressed model files under the prefix
        with tarfile.open(fileobj=io.BytesIO(model_tar(tmp_path / "raw", index))) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    body = tar.extractfile(member)
                    assert body is not None
                    s3.put_object(Bucket="mds", Key=f"folders/team/m{index}/{member.name}", Body=body.read())
    create_mme_from_source(sm, "mme-gzip", "s3://mds/archives", "Gzip")
    create_mme_from_source(sm, "mme-raw", "s3://mds/folders/", "None")
    for name in ("mme-gzip", "mme-raw"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)

    assert predict(rt, "mme-gzip", "m1.tar.gz") == [pytest.approx(expected(1))]
    assert predict(rt, "mme-gzip", "m0.tar.gz", 3.0) == [pytest.approx(expected(0, 3.0))]
    assert predict(rt, "mme-raw", "team/m1") == [pytest.approx(expected(1))]
    assert predict(rt, "mme-raw", "team/m0/", 3.0) == [pytest.approx(expected(0, 3.0))]
    for endpoint, target, key in (("mme-gzip", "m7.tar.gz", "archives/m7.tar.gz"),
                                  ("mme-raw", "team/m7", "folders/team/m7/")):
        with pytest.raises(ClientError) as missing:
            predict(rt, endpoint, target)
        assert missing.value.response["Error"]["Code"] == "ValidationError"
        assert missing.value.response["Error"]["Message"].startswith(
            f"Failed to download model data(bucket: mds, key: {key}).")

    # a multi-model ModelDataSource must be a prefix
    sm.create_model(ModelName="mme-object", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": IMAGE, "Mode": "MultiModel", "ModelDataSource": {"S3DataSource": {
            "S3Uri": "s3://mds/archives/m0.tar.gz", "S3DataType": "S3Object", "CompressionType": "Gzip"}}})
    sm.create_endpoint_config(EndpointConfigName="mme-object", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "mme-object", "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName="mme-object", EndpointConfigName="mme-object")
    with pytest.raises(WaiterError):
        sm.get_waiter("endpoint_in_service").wait(EndpointName="mme-object", WaiterConfig=WAIT)
    reason = sm.describe_endpoint(EndpointName="mme-object")["FailureReason"]
    assert "needs S3DataType S3Prefix" in reason
