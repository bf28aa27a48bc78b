"""CloudWatch on ``mainsail up --credentials``: signed calls in each protocol pass, a wrong secret is
refused, and a key's IAM policy decides on ``cloudwatch:<Operation>``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from mainsail.gateway.app import create_control_app
from mainsail.hosting.store import SQLiteStore
from mainsail.settings import ControlSettings
from tests.cloudwatch.helpers import PROTOCOLS, model_dir
from tests.conftest import ThreadedServer

ADMIN = ("AKIAADMIN00000000001", "admin-secret")
READER = ("AKIAREADER0000000001", "reader-secret")
CREDENTIALS = f"""
[admin]
aws_access_key_id = {ADMIN[0]}
aws_secret_access_key = {ADMIN[1]}

[reader]
aws_access_key_id = {READER[0]}
aws_secret_access_key = {READER[1]}
policy = reader.json
"""
READ_ONLY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["cloudwatch:Get*", "cloudwatch:List*", "cloudwatch:Describe*"], "Resource": "*"}]}


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("signed")
    (root / "credentials").write_text(CREDENTIALS)
    (root / "reader.json").write_text(json.dumps(READ_ONLY))
    store = SQLiteStore(root / "state.db")
    settings = ControlSettings(home=root / "home", credentials=root / "credentials")
    server = ThreadedServer(create_control_app(store, settings=settings))
    server.start()
    try:
        yield server.url, root
    finally:
        server.stop()
        store.close()


def _client(url: str, root: Path, protocol: str, key: tuple[str, str]) -> Any:
    session = botocore.session.get_session()
    if protocol != "smithy-rpc-v2-cbor":
        session.get_component("data_loader").search_paths.insert(0, str(model_dir(root / "models", protocol)))
    return boto3.Session(botocore_session=session).client(
        "cloudwatch", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key[0],
        aws_secret_access_key=key[1], config=Config(retries={"max_attempts": 1, "mode": "standard"}))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_signed_cloudwatch(signed: tuple[str, Path], protocol: str) -> None:
    url, root = signed
    admin = _client(url, root, protocol, ADMIN)
    admin.put_metric_data(Namespace="Signed", MetricData=[{"MetricName": "M", "Value": 1.0}])
    reader = _client(url, root, protocol, READER)
    assert [m["MetricName"] for m in reader.list_metrics(Namespace="Signed")["Metrics"]] == ["M"]
    with pytest.raises(ClientError) as exc:
        reader.put_metric_data(Namespace="Signed", MetricData=[{"MetricName": "M", "Value": 1.0}])
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    assert "cloudwatch:PutMetricData" in exc.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as exc:
        _client(url, root, protocol, (ADMIN[0], "wrong")).list_metrics()
    assert exc.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidSignature")


def test_signed_application_autoscaling(signed: tuple[str, Path]) -> None:
    """Application Auto Scaling sits behind the same gate: signed for its own service, and a key's policy
    decides on ``application-autoscaling:<Operation>`` (the reader's allows only CloudWatch reads)."""
    url, _ = signed

    def client(key: tuple[str, str]) -> Any:
        return boto3.client("application-autoscaling", endpoint_url=url, region_name="us-east-1",
                            aws_access_key_id=key[0], aws_secret_access_key=key[1],
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}))

    assert client(ADMIN).describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    with pytest.raises(ClientError) as exc:
        client(READER).describe_scalable_targets(ServiceNamespace="sagemaker")
    assert exc.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "application-autoscaling:DescribeScalableTargets" in exc.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as exc:
        client((ADMIN[0], "wrong")).describe_scalable_targets(ServiceNamespace="sagemaker")
    assert exc.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidSignatureException")
