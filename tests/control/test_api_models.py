"""The control plane's Model / EndpointConfig / tag operations, driven by the real boto3 client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from mainsail.gateway.app import create_control_app
from mainsail.hosting.store import SQLiteStore
from tests.conftest import ThreadedServer

REGION = "us-east-1"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mainsail:latest"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


class ControlServer(ThreadedServer):
    """``create_control_app`` served by uvicorn in a thread on a free loopback port."""

    def __init__(self, db: Path) -> None:
        self.store = SQLiteStore(db)
        super().__init__(create_control_app(self.store), lifespan="off")

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.store.close()

    def client(self, region: str = REGION) -> Any:
        return boto3.client("sagemaker", endpoint_url=self.url, region_name=region,
                            aws_access_key_id="x", aws_secret_access_key="x")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    with ControlServer(tmp_path / "state.db") as srv:
        yield srv


@pytest.fixture
def sm(server: ControlServer) -> Any:
    return server.client()


def _model_arn(name: str, region: str = REGION) -> str:
    return f"arn:aws:sagemaker:{region}:123456789012:model/{name.lower()}"


def _config_arn(name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:123456789012:endpoint-config/{name.lower()}"


def _create_model(sm: Any, name: str, **extra: Any) -> Any:
    return sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                           PrimaryContainer={"Image": IMAGE,
                                             "ModelDataUrl": "s3://bucket/model.tar.gz",
                                             "Environment": {"A": "1"}}, **extra)


def _variant(**extra: Any) -> dict[str, Any]:
    return {"VariantName": "AllTraffic", "ModelName": "m1", "InitialInstanceCount": 1,
            "InstanceType": "ml.m5.large", **extra}


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = exc.value.response["Error"]
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return err["Code"], err["Message"]


def test_model_create_describe_delete(sm: Any) -> None:
    out = _create_model(sm, "My-Model")
    assert out["ModelArn"] == _model_arn("My-Model")
    desc = sm.describe_model(ModelName="My-Model")
    assert desc["ModelName"] == "My-Model"
    assert desc["ModelArn"] == _model_arn("My-Model")
    assert desc["PrimaryContainer"]["Image"] == IMAGE
    assert desc["PrimaryContainer"]["Environment"] == {"A": "1"}
    assert desc["ExecutionRoleArn"] == ROLE
    assert desc["EnableNetworkIsolation"] is False
    assert abs(desc["CreationTime"].timestamp() - time.time()) < 60
    assert "VpcConfig" not in desc and "Containers" not in desc and "Tags" not in desc
    sm.delete_model(ModelName="My-Model")
    with pytest.raises(ClientError) as exc:
        sm.describe_model(ModelName="My-Model")
    assert _error(exc) == ("ValidationException",
                           f'Could not find model "{_model_arn("My-Model")}".')
    with pytest.raises(ClientError) as exc:
        sm.delete_model(ModelName="My-Model")
    assert _error(exc) == ("ValidationException",
                           f'Could not find model "{_model_arn("My-Model")}".')


def test_model_duplicate_and_region_in_arn(server: ControlServer) -> None:
    sm = server.client("eu-west-1")
    assert _create_model(sm, "dup")["ModelArn"] == _model_arn("dup", "eu-west-1")
    with pytest.raises(ClientError) as exc:
        _create_model(sm, "dup")
    assert _error(exc) == ("ValidationException",
                           f'Cannot create already existing model "{_model_arn("dup", "eu-west-1")}".')


@pytest.mark.parametrize("name", ["bad_name", "-lead", "a" * 64])
def test_model_name_validation(sm: Any, name: str) -> None:
    with pytest.raises(ClientError) as exc:
        _create_model(sm, name)
    code, message = _error(exc)
    assert code == "ValidationException"
    assert message.startswith(f"1 validation error detected: Value '{name}' at 'modelName' "
                              "failed to satisfy constraint: Member must ")


def test_list_models_pagination_sort_filter(sm: Any) -> None:
    for name in ("alpha", "beta", "gamma"):
        _create_model(sm, name)
    assert sm.list_models()["Models"][0]["ModelName"] == "gamma"  # newest first by default
    names, token = [], None
    while True:
        page = sm.list_models(MaxResults=1, SortBy="Name", SortOrder="Ascending",
                              **({"NextToken": token} if token else {}))
        assert len(page["Models"]) == 1
        names.append(page["Models"][0]["ModelName"])
        token = page.get("NextToken")
        if not token:
            break
    assert names == ["alpha", "beta", "gamma"]
    summary = sm.list_models(NameContains="ET")["Models"]
    assert [m["ModelName"] for m in summary] == ["beta"]
    assert set(summary[0]) == {"ModelName", "ModelArn", "CreationTime"}
    paginated = sm.get_paginator("list_models").paginate(PaginationConfig={"PageSize": 2})
    assert sorted(m["ModelName"] for p in paginated for m in p["Models"]) == names


def test_endpoint_config_lifecycle(sm: Any) -> None:
    _create_model(sm, "m1")
    out = sm.create_endpoint_config(EndpointConfigName="Cfg-1", ProductionVariants=[_variant()])
    assert out["EndpointConfigArn"] == _config_arn("Cfg-1")
    desc = sm.describe_endpoint_config(EndpointConfigName="Cfg-1")
    assert desc["EndpointConfigName"] == "Cfg-1"
    variant = desc["ProductionVariants"][0]
    assert variant["VariantName"] == "AllTraffic" and variant["InstanceType"] == "ml.m5.large"
    assert variant["InitialVariantWeight"] == 1.0 and variant["InitialInstanceCount"] == 1
    assert "DataCaptureConfig" not in desc and "AsyncInferenceConfig" not in desc
    sm.create_endpoint_config(
        EndpointConfigName="serverless",
        ProductionVariants=[{"VariantName": "v", "ModelName": "m1",
                             "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}}])
    configs = sm.list_endpoint_configs(SortBy="Name", SortOrder="Ascending", MaxResults=1)
    assert [c["EndpointConfigName"] for c in configs["EndpointConfigs"]] == ["Cfg-1"]
    rest = sm.list_endpoint_configs(SortBy="Name", SortOrder="Ascending", MaxResults=1,
                                    NextToken=configs["NextToken"])
    assert [c["EndpointConfigName"] for c in rest["EndpointConfigs"]] == ["serverless"]
    assert "NextToken" not in rest
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint_config(EndpointConfigName="Cfg-1", ProductionVariants=[_variant()])
    assert _error(exc) == ("ValidationException", 'Cannot create already existing endpoint '
                           f'configuration "{_config_arn("Cfg-1")}".')
    sm.delete_endpoint_config(EndpointConfigName="Cfg-1")
    for call in (sm.describe_endpoint_config, sm.delete_endpoint_config):
        with pytest.raises(ClientError) as exc:
            call(EndpointConfigName="Cfg-1")
        assert _error(exc) == ("ValidationException", 'Could not find endpoint configuration '
                               f'"{_config_arn("Cfg-1")}".')


def test_endpoint_config_validation(sm: Any) -> None:
    _create_model(sm, "m1")
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint_config(EndpointConfigName="c",
                                  ProductionVariants=[_variant(InstanceType="ml.bogus.large")])
    code, message = _error(exc)
    assert code == "ValidationException"
    assert message.startswith("1 validation error detected: Value 'ml.bogus.large' at "
                              "'productionVariants.1.member.instanceType' failed to satisfy "
                              "constraint: Member must satisfy enum value set: [ml.t2.medium, ")
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint_config(EndpointConfigName="c",
                                  ProductionVariants=[_variant(VariantName="bad_variant",
                                                               ModelName="bad_model")])
    code, message = _error(exc)
    assert message.startswith("2 validation errors detected: Value 'bad_variant' at "
                              "'productionVariants.1.member.variantName'")
    assert "; Value 'bad_model' at 'productionVariants.1.member.modelName'" in message
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint_config(EndpointConfigName="c",
                                  ProductionVariants=[_variant(VariantName=f"v{i}")
                                                      for i in range(11)])
    assert "Member must have length less than or equal to 10" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint_config(EndpointConfigName="c_x", ProductionVariants=[_variant()])
    assert "'endpointConfigName'" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        sm.create_endpoint_config(EndpointConfigName="c",
                                  ProductionVariants=[_variant(ModelName="nope")])
    assert _error(exc) == ("ValidationException", f'Could not find model "{_model_arn("nope")}".')
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []


def test_server_checks_minimums_botocore_would_catch(server: ControlServer) -> None:
    body = {"EndpointConfigName": "c", "ProductionVariants": [_variant(InitialVariantWeight=-1,
                                                                       InitialInstanceCount=0)]}
    r = httpx.post(server.url, json=body, headers={
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "SageMaker.CreateEndpointConfig"})
    assert r.status_code == 400
    assert r.json() == {"__type": "ValidationException", "Message": (
        "2 validation errors detected: Value '0' at 'productionVariants.1.member."
        "initialInstanceCount' failed to satisfy constraint: Member must have value greater than "
        "or equal to 1; Value '-1' at 'productionVariants.1.member.initialVariantWeight' failed "
        "to satisfy constraint: Member must have value greater than or equal to 0")}


def test_tags_add_list_delete(sm: Any) -> None:
    model_arn = _create_model(sm, "Tagged", Tags=[{"Key": "team", "Value": "ml"}])["ModelArn"]
    assert sm.list_tags(ResourceArn=model_arn)["Tags"] == [{"Key": "team", "Value": "ml"}]
    sm.add_tags(ResourceArn=model_arn, Tags=[{"Key": "team", "Value": "risk"},
                                             {"Key": "env", "Value": "dev"}])
    tags = sm.list_tags(ResourceArn=model_arn)["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("env", "dev"), ("team", "risk")]
    sm.delete_tags(ResourceArn=model_arn, TagKeys=["team", "env"])
    assert sm.list_tags(ResourceArn=model_arn)["Tags"] == []
    with pytest.raises(ClientError) as exc:
        sm.list_tags(ResourceArn=_model_arn("missing"))
    assert _error(exc) == ("ValidationException",
                           f'Could not find model "{_model_arn("missing")}".')


def test_unknown_operation_and_bad_body(server: ControlServer) -> None:
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    r = httpx.post(server.url, headers={**headers, "X-Amz-Target": "SageMaker.Nope"}, content="{}")
    assert r.status_code == 400
    assert r.json()["__type"] == "UnknownOperationException"
    assert r.headers["content-type"].startswith("application/x-amz-json-1.1")
    assert r.headers["x-amzn-requestid"]
    r = httpx.post(server.url, headers={**headers, "X-Amz-Target": "SageMaker.ListModels"},
                   content="not json")
    assert r.status_code == 400 and r.json()["__type"] == "SerializationException"


def test_records_persist_across_apps(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with ControlServer(db) as first:
        sm = first.client()
        _create_model(sm, "m1")
        sm.create_endpoint_config(EndpointConfigName="cfg", ProductionVariants=[_variant()])
    with ControlServer(db) as second:
        sm = second.client()
        assert sm.describe_model(ModelName="m1")["PrimaryContainer"]["Image"] == IMAGE
        desc = sm.describe_endpoint_config(EndpointConfigName="cfg")
        assert desc["ProductionVariants"][0]["ModelName"] == "m1"


def test_sqlite_store_insert_is_atomic_across_threads(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    results: list[bool] = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        store.insert("model", "same", {"n": i}))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.update("model", "same", lambda r: {**r, "x": 1}) is not None
    assert store.get("model", "same") is not None and store.list("model")[0]["x"] == 1
    assert store.update("model", "absent", lambda r: r) is None
    assert store.delete("model", "same") and not store.delete("model", "same")
    store.close()
