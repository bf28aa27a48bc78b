"""Multi-model endpoints through the control plane: boto3 sagemaker + sagemaker-runtime + s3."""

from __future__ import annotations

import concurrent.futures
import gc
import io
import json
import re
import tarfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from botocore.exceptions import ClientError
from sklearn.linear_model import LinearRegression

from mainsail.control.endpoints import ENDPOINT
from mainsail.control.modeldata import container_model_source, multi_model_prefix
from mainsail.control.multimodel import download_failed, model_name, target_url
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

    # concurrent first requests for a new model: all answered, loaded once on the instance
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}sub/model-d.tar.gz", Body=model_tar(tmp_path / "d", 3))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: predict(rt, "mme", "sub/model-d.tar.gz"), range(6)))
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
