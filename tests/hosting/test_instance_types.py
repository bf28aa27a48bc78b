"""How many model-server workers an instance runs: the vCPU table, the decision, and what reaches the
backend through the real hosting API (boto3 against the control app over :class:`tests.fakes.FakeBackend`,
which records each instance's ``InstanceSpec``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mainsail.hosting.instance_types import VCPU_EXCEPTIONS, model_server_workers, vcpus
from mainsail.hosting.resources import INSTANCE_TYPES
from tests.control.helpers import IMAGE, ROLE, Plane
from tests.fakes import FakeBackend

WAIT = {"Delay": 1, "MaxAttempts": 10}

#: vCPUs as AWS publishes them for the EC2 type of the same name, one or more per family kind.
PUBLISHED = {
    "ml.t2.medium": 2, "ml.t2.large": 2, "ml.t2.2xlarge": 8, "ml.m4.xlarge": 4, "ml.m4.10xlarge": 40,
    "ml.m4.16xlarge": 64, "ml.m5.large": 2, "ml.m5.xlarge": 4, "ml.m5.12xlarge": 48, "ml.m5.24xlarge": 96,
    "ml.c4.large": 2, "ml.c4.8xlarge": 36, "ml.c5.9xlarge": 36, "ml.c5.18xlarge": 72, "ml.c5d.18xlarge": 72,
    "ml.p2.xlarge": 4, "ml.p2.8xlarge": 32, "ml.p2.16xlarge": 64, "ml.p3.2xlarge": 8, "ml.p3.8xlarge": 32,
    "ml.p3.16xlarge": 64, "ml.g4dn.xlarge": 4, "ml.g4dn.12xlarge": 48, "ml.g4dn.16xlarge": 64,
    "ml.inf1.xlarge": 4, "ml.inf1.6xlarge": 24, "ml.inf1.24xlarge": 96, "ml.inf2.48xlarge": 192,
    "ml.dl1.24xlarge": 96, "ml.c6i.32xlarge": 128, "ml.g5.48xlarge": 192, "ml.p4d.24xlarge": 96,
    "ml.p5.4xlarge": 16, "ml.p5.48xlarge": 192, "ml.trn1.2xlarge": 8, "ml.trn1.32xlarge": 128,
    "ml.r8g.medium": 1, "ml.c8g.medium": 1, "ml.r7gd.medium": 1, "ml.c7g.16xlarge": 64,
    "ml.p6e-gb200.36xlarge": 144, "ml.p6-b200.48xlarge": 192,
}


def test_every_instance_type_has_a_vcpu_count() -> None:
    missing = [t for t in INSTANCE_TYPES if not vcpus(t)]
    assert missing == []
    assert set(VCPU_EXCEPTIONS) <= set(INSTANCE_TYPES)


@pytest.mark.parametrize(("instance_type", "expected"), sorted(PUBLISHED.items()))
def test_vcpus_as_aws_publishes_them(instance_type: str, expected: int) -> None:
    assert instance_type in INSTANCE_TYPES
    assert vcpus(instance_type) == expected


def test_a_name_without_an_ec2_size_has_no_vcpu_count() -> None:
    assert vcpus("ml.m5.huge") is None
    assert vcpus("m5.large") is None


def test_the_models_worker_variable_wins() -> None:
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "3"}
    assert model_server_workers("ml.m5.24xlarge", env) is None
    assert model_server_workers(None, env) is None  # serverless too
    assert model_server_workers("ml.m5.large", env, multi_model=True) is None
    assert model_server_workers("ml.m5.xlarge", {"SAGEMAKER_MODEL_SERVER_WORKERS": " "}) == 4  # blank: unset


def test_otherwise_one_worker_per_vcpu() -> None:
    assert model_server_workers("ml.m5.large", {}) == 2
    assert model_server_workers("ml.c5.18xlarge", {"OTHER": "1"}) == 72
    assert model_server_workers("ml.t2.medium", {}) == 2
    assert model_server_workers("ml.m5.huge", {}) == 1


def test_serverless_and_multi_model_instances_run_one_worker() -> None:
    assert model_server_workers(None, {}) == 1
    assert model_server_workers("ml.c5.9xlarge", {}, multi_model=True) == 1


# -- through the hosting API ------------------------------------------------------------------


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plane]:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    with Plane(tmp_path, backend=FakeBackend(), interval=0.02) as p:
        yield p


def _model(plane: Plane, name: str, **container: Any) -> None:
    plane.client("sagemaker").create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": IMAGE, "ModelDataUrl": f"file:///models/{name}", **container})


def _config(plane: Plane, name: str, model: str, **variant: Any) -> None:
    plane.client("sagemaker").create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": model, **variant}])


def _workers(plane: Plane, endpoint: str) -> list[int | None]:
    backend: FakeBackend = plane.backend
    return [f.spec.workers for f in backend.running(endpoint)]


def test_the_backend_is_asked_for_the_workers_of_each_variants_instance_type(plane: Plane) -> None:
    sm = plane.client("sagemaker")
    _model(plane, "plain")
    _model(plane, "pinned", Environment={"SAGEMAKER_MODEL_SERVER_WORKERS": "3"})
    _model(plane, "many", Mode="MultiModel")
    for name, model, variant in [
        ("large", "plain", {"InstanceType": "ml.m5.large", "InitialInstanceCount": 2}),
        ("pinned", "pinned", {"InstanceType": "ml.m5.4xlarge", "InitialInstanceCount": 1}),
        ("many", "many", {"InstanceType": "ml.c5.9xlarge", "InitialInstanceCount": 1}),
        ("serverless", "plain", {"ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 2}}),
    ]:
        _config(plane, name, model, **variant)
        sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    for name in ("large", "pinned", "many", "serverless"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    assert _workers(plane, "large") == [2, 2]
    assert _workers(plane, "pinned") == [None]  # the instance reads the model's variable itself
    assert _workers(plane, "many") == [1]
    assert _workers(plane, "serverless") == [1]

    # an update's new instances run what the new config's instance type gives them
    _config(plane, "large-2", "plain", InstanceType="ml.c5.9xlarge", InitialInstanceCount=1)
    sm.update_endpoint(EndpointName="large", EndpointConfigName="large-2")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="large", WaiterConfig=WAIT)
    deadline = time.monotonic() + 10
    while _workers(plane, "large") != [36] and time.monotonic() < deadline:  # the old ones drain
        time.sleep(0.02)
    assert _workers(plane, "large") == [36]
