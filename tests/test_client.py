"""mainsail's Python API (deploy / endpoint / Endpoint) against a real `mainsail up` subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
from botocore.exceptions import ClientError

import mainsail
from mainsail.client import DeploymentFailed, Endpoint, MainsailClientError, ModelInvocationError
from mainsail.errors import MainsailError
from tests.conftest import free_port
from tests.control.helpers import INFERENCE_BAD, UpProcess, make_model_dir

pytestmark = pytest.mark.slow

# model_fn as in the control-plane tests, plus an input_fn that also takes {"instances": [...]}.
INFERENCE = """
import io, json, os
import joblib
import numpy as np

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def input_fn(body, content_type):
    if content_type == "application/json":
        data = json.loads(body)
        return np.array(data["instances"] if isinstance(data, dict) else data, dtype=float)
    if content_type == "text/csv":
        return np.genfromtxt(io.StringIO(body), delimiter=",", ndmin=2)
    if content_type == "application/x-npy":
        return np.load(io.BytesIO(body), allow_pickle=False)
    raise ValueError(f"unsupported content type {content_type}")
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `mainsail up` subprocess for the module."""
    up = UpProcess(tmp_path_factory.mktemp("up") / "home")
    try:
        yield up.url
    finally:
        assert up.stop() == 0, up.log_text()


@pytest.fixture(scope="module")
def sm(url: str) -> Any:
    return boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                        aws_secret_access_key="x")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two model directories: y = 2a + 3b, and the same scaled by 10."""
    root = tmp_path_factory.mktemp("models")
    return make_model_dir(root / "first", INFERENCE), make_model_dir(root / "second", INFERENCE, scale=10.0)


def _gone(call: Any, **kwargs: Any) -> bool:
    try:
        call(**kwargs)
    except ClientError as exc:
        return "Could not find" in exc.response["Error"]["Message"]
    return False


def test_deploy_invoke_update_attach_delete(url: str, sm: Any, models: tuple[Path, Path]) -> None:
    first, second = models
    ep = mainsail.deploy(first, "skl", url=url, environment={"MAINSAIL_TEST": "1"}, timeout=120)
    assert isinstance(ep, Endpoint) and ep.name == "skl" and ep.url == url
    assert ep.status == "InService"
    described = ep.describe()
    assert described["EndpointName"] == "skl" and "ResponseMetadata" not in described
    container = sm.describe_model(ModelName="skl")["PrimaryContainer"]
    assert container["ModelDataUrl"] == first.resolve().as_uri()
    assert container["Environment"] == {"MAINSAIL_TEST": "1"}

    # every kind of body
    answer = ep.invoke({"instances": [[1.0, 0.0]]})
    assert answer.json() == pytest.approx([2.0])
    assert answer.variant == "AllTraffic" and answer.content_type == "application/json"
    assert answer.text == answer.body.decode()
    assert ep.invoke([[1.0, 0.0], [0.0, 1.0]]).json() == pytest.approx([2.0, 3.0])
    assert ep.invoke("[[0.0, 1.0]]").json() == pytest.approx([3.0])
    assert ep.invoke("1.0,0.0\n0.0,1.0", content_type="text/csv").json() == pytest.approx([2.0, 3.0])
    assert ep.invoke(b"[[1.0, 1.0]]").json() == pytest.approx([5.0])
    frame = pd.DataFrame({"a": [1.0, 0.0, 2.0], "b": [0.0, 1.0, 2.0]})
    assert ep.invoke(frame).json() == pytest.approx([2.0, 3.0, 10.0])
    assert ep.invoke(np.array([[1.0, 0.0], [2.0, 2.0]])).json() == pytest.approx([2.0, 10.0])
    as_csv = ep.invoke([[1.0, 0.0]], accept="text/csv", target_variant="AllTraffic")
    assert as_csv.content_type.startswith("text/csv") and float(as_csv.text) == pytest.approx(2.0)

    # the model's own error: ModelError with the original status and message
    with pytest.raises(ModelInvocationError) as failed:
        ep.invoke("not,a,number", content_type="text/csv")
    assert failed.value.code == "ModelError" and failed.value.status_code == 424
    assert failed.value.original_status_code == 500
    assert failed.value.original_message is not None and "ModelError" in failed.value.original_message
    assert "/aws/sagemaker/Endpoints/skl" in (failed.value.log_stream_arn or "")
    assert isinstance(failed.value, MainsailClientError) and isinstance(failed.value, MainsailError)

    # blue/green: a new model and config named skl-<timestamp>, the old ones removed once it serves
    assert ep.update(model=second, timeout=120) is ep
    config = ep.describe()["EndpointConfigName"]
    assert config.startswith("skl-") and config != "skl"
    assert ep.invoke([[1.0, 0.0]]).json() == pytest.approx([20.0])
    new_model = sm.describe_model(ModelName=config)["PrimaryContainer"]
    assert new_model["ModelDataUrl"] == second.resolve().as_uri()
    assert new_model["Environment"] == {"MAINSAIL_TEST": "1"}
    assert _gone(sm.describe_endpoint_config, EndpointConfigName="skl")
    assert _gone(sm.describe_model, ModelName="skl")

    # capacity only: UpdateEndpointWeightsAndCapacities, same config
    ep.update(instances=2, timeout=120)
    variant = ep.describe()["ProductionVariants"][0]
    assert (variant["CurrentInstanceCount"], variant["DesiredInstanceCount"]) == (2, 2)
    assert ep.describe()["EndpointConfigName"] == config

    # an environment change is a blue/green update too, keeping the 2 instances
    ep.update(environment={"EXTRA": "yes"}, timeout=120)
    config2 = ep.describe()["EndpointConfigName"]
    assert config2 != config and config2.startswith("skl-")
    assert sm.describe_model(ModelName=config2)["PrimaryContainer"]["Environment"] == {
        "MAINSAIL_TEST": "1", "EXTRA": "yes"}
    assert sm.describe_endpoint_config(EndpointConfigName=config2)["ProductionVariants"][0][
        "InitialInstanceCount"] == 2
    assert ep.invoke([[0.0, 1.0]]).json() == pytest.approx([30.0])

    attached = mainsail.endpoint("skl", url=url)
    assert attached.status == "InService"
    assert attached.invoke([[1.0, 1.0]]).json() == pytest.approx([50.0])

    attached.delete()
    assert _gone(sm.describe_endpoint, EndpointName="skl")
    assert all(not c["EndpointConfigName"].startswith("skl") for c in sm.list_endpoint_configs()["EndpointConfigs"])
    assert all(not m["ModelName"].startswith("skl") for m in sm.list_models()["Models"])
    with pytest.raises(MainsailClientError, match="not found"):
        mainsail.endpoint("skl", url=url)


def test_a_model_that_cannot_load_fails_the_deploy_with_its_reason(url: str, sm: Any, tmp_path: Path) -> None:
    broken = make_model_dir(tmp_path / "broken", INFERENCE_BAD)
    with pytest.raises(DeploymentFailed) as failed:
        mainsail.deploy(str(broken), "broken", url=url, timeout=120)
    assert "boom: the weights are corrupt" in str(failed.value)
    assert failed.value.status == "Failed"
    assert "boom: the weights are corrupt" in (failed.value.failure_reason or "")
    failed.value.endpoint.delete()
    assert _gone(sm.describe_endpoint, EndpointName="broken")
    assert _gone(sm.describe_endpoint_config, EndpointConfigName="broken")
    assert _gone(sm.describe_model, ModelName="broken")


def test_a_failed_update_is_rolled_back(url: str, sm: Any, models: tuple[Path, Path], tmp_path: Path) -> None:
    broken = make_model_dir(tmp_path / "broken", INFERENCE_BAD)
    ep = mainsail.deploy(models[0], "rollback", url=url, timeout=120)
    try:
        with pytest.raises(DeploymentFailed, match="rolled back") as failed:
            ep.update(model=broken, timeout=120)
        assert "boom: the weights are corrupt" in (failed.value.failure_reason or "")
        assert ep.describe()["EndpointConfigName"] == "rollback"
        assert ep.invoke([[1.0, 0.0]]).json() == pytest.approx([2.0])
        assert [m["ModelName"] for m in sm.list_models(NameContains="rollback")["Models"]] == ["rollback"]
    finally:
        ep.delete()
    assert _gone(sm.describe_model, ModelName="rollback")


def test_api_errors_carry_the_aws_code(url: str, models: tuple[Path, Path], sm: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MainsailClientError) as missing:
        Endpoint("ghost", url).invoke([[1.0, 0.0]])
    assert missing.value.code == "ValidationError" and "ghost" in missing.value.message
    with pytest.raises(MainsailClientError) as described:
        Endpoint("ghost", url).describe()
    assert described.value.code == "ValidationException" and described.value.status_code == 400
    with pytest.raises(MainsailClientError, match="ValidationException|instanceType") as bad_type:
        mainsail.deploy(models[0], "half", url=url, instance_type="ml.nope.large")
    assert bad_type.value.code == "ValidationException"
    assert _gone(sm.describe_model, ModelName="half")  # the model it had created was removed

    sm.create_model(ModelName="taken", ExecutionRoleArn="arn:aws:iam::123456789012:role/R",
                    PrimaryContainer={"Image": "x", "ModelDataUrl": models[0].as_uri()})
    try:
        with pytest.raises(MainsailClientError, match="model taken already exists") as taken:
            mainsail.deploy(models[0], "taken", url=url)
        assert taken.value.code == "AlreadyExists"
    finally:
        sm.delete_model(ModelName="taken")

    with pytest.raises(MainsailClientError, match="no such model directory") as nowhere:
        mainsail.deploy("/nowhere/at/all", "x", url=url)
    assert nowhere.value.code == "InvalidModel"
    with pytest.raises(MainsailClientError, match="unsupported model URL"):
        mainsail.deploy("http://example.com/model.tar.gz", "x", url=url)

    monkeypatch.setenv("MAINSAIL_URL", url)
    assert Endpoint("x").url == url
    monkeypatch.delenv("MAINSAIL_URL")
    assert Endpoint("x").url == "http://127.0.0.1:8700"


def test_no_control_plane_is_a_client_error() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MainsailClientError) as failed:
        mainsail.endpoint("e", url=nowhere)
    assert failed.value.message == f"no control plane at {nowhere}: start it with `mainsail up`"
    assert failed.value.code == "ConnectionError"
