"""The metrics SageMaker publishes, end to end: a control plane with one-second periods
(``MAINSAIL_METRICS_TIME_SCALE=60``), a real instance invoked with boto3, then the one-minute datapoints
read from the metric store and through CloudWatch's ``GetMetricStatistics``, and ``/metrics`` showing
the same totals; an asynchronous endpoint's queue sampled as it drains."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from mainsail.aws.cloudwatch.datapoints import Datapoint, dimensions_of
from mainsail.aws.cloudwatch.store import MetricStore
from tests.control.helpers import IMAGE, INFERENCE_OK, ROLE, WAIT, Plane, deploy, make_model_dir, s3_object

ENDPOINT = "metered"
DIMENSIONS = {"EndpointName": ENDPOINT, "VariantName": "AllTraffic"}
GOOD, BAD_TYPE, MODEL_ERROR = 5, 1, 1


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plane]:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    monkeypatch.setenv("MAINSAIL_METRICS_TIME_SCALE", "60")  # a one-minute period lasts a second
    with Plane(tmp_path) as p:
        yield p


def stored(store: MetricStore, namespace: str, metric: str) -> list[Datapoint]:
    points: list[Datapoint] = store.datapoints(namespace, metric, dimensions_of(DIMENSIONS), time.time() - 600,
                                               time.time() + 60)
    return points


def total(points: list[Datapoint]) -> tuple[float, float]:
    """(SampleCount, Sum) over every period."""
    return sum(p.sample_count for p in points), sum(p.sum for p in points)


def prometheus(text: str, name: str) -> float:
    labels = f'{{EndpointName="{ENDPOINT}",VariantName="AllTraffic"}}'
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_invocations_errors_latency_and_utilization(plane: Plane, tmp_path: Path) -> None:
    sm, rt = plane.client("sagemaker"), plane.client("sagemaker-runtime")
    deploy(sm, ENDPOINT, make_model_dir(tmp_path / "model", INFERENCE_OK))
    sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig=WAIT)
    began = datetime.now(UTC)
    for _ in range(GOOD):
        rt.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Body=b"1,1\n")
    with pytest.raises(ClientError) as exc:  # the instance answers 415: a 4xx
        rt.invoke_endpoint(EndpointName=ENDPOINT, ContentType="application/x-unknown", Body=b"???")
    assert exc.value.response["Error"]["Code"] == "ModelError"
    with pytest.raises(ClientError) as exc:  # three features for a two-feature model: the model fails, a 5xx
        rt.invoke_endpoint(EndpointName=ENDPOINT, ContentType="text/csv", Body=b"1,2,3\n")
    assert exc.value.response["Error"]["Code"] == "ModelError"
    requests = GOOD + BAD_TYPE + MODEL_ERROR

    store = MetricStore(plane.settings.home / "metrics.db")
    deadline = time.monotonic() + 30
    while True:  # the periods close every second; CPU needs two samples of the instance
        invocations = stored(store, "AWS/SageMaker", "Invocations")
        cpu = stored(store, "/aws/sagemaker/Endpoints", "CPUUtilization")
        if total(invocations)[1] == requests and cpu:
            break
        assert time.monotonic() < deadline, (total(invocations), cpu)
        time.sleep(0.2)

    assert total(invocations) == (requests, requests)
    assert {p.unit for p in invocations} == {"None"}
    assert total(stored(store, "AWS/SageMaker", "InvocationsPerInstance")) == (requests, requests)  # 1 instance
    assert total(stored(store, "AWS/SageMaker", "Invocation4XXErrors")) == (requests, BAD_TYPE)
    assert total(stored(store, "AWS/SageMaker", "Invocation5XXErrors")) == (requests, MODEL_ERROR)
    assert total(stored(store, "AWS/SageMaker", "InvocationModelErrors")) == (requests, BAD_TYPE + MODEL_ERROR)
    latency = stored(store, "AWS/SageMaker", "ModelLatency")
    assert total(latency)[0] == requests  # every request the instance answered
    assert {p.unit for p in latency} == {"Microseconds"}
    assert 50 < min(p.minimum for p in latency) <= max(p.maximum for p in latency) < 10_000_000
    overhead = stored(store, "AWS/SageMaker", "OverheadLatency")
    assert total(overhead)[0] == GOOD  # measured on the answers that came back
    assert 0 <= min(p.minimum for p in overhead) and max(p.maximum for p in overhead) < 1_000_000
    assert stored(store, "AWS/SageMaker", "ModelSetupTime") == []  # not serverless

    assert all(0 <= p.minimum and p.maximum <= 100 * 64 for p in cpu)
    memory = stored(store, "/aws/sagemaker/Endpoints", "MemoryUtilization")
    assert memory and all(0 < p.minimum and p.maximum < 100 for p in memory)  # of an ml.m5.large's 8 GiB
    assert all(p.sample_count == 1 for p in memory)  # one instance, one sample a period
    disk = stored(store, "/aws/sagemaker/Endpoints", "DiskUtilization")
    assert disk and all(0 < p.minimum and p.maximum <= 100 for p in disk)
    assert {p.unit for p in (*cpu, *memory, *disk)} == {"Percent"}

    # /metrics: the same totals
    text = httpx.get(plane.url + "/metrics").text
    assert prometheus(text, "Invocations_total") == requests
    assert prometheus(text, "Invocation4XXErrors_total") == BAD_TYPE
    assert prometheus(text, "Invocation5XXErrors_total") == MODEL_ERROR
    assert prometheus(text, "ModelLatency_count") == requests
    assert prometheus(text, "ModelLatency_sum") == pytest.approx(total(latency)[1])
    assert prometheus(text, "OverheadLatency_count") == GOOD

    # and CloudWatch's API over the store
    cloudwatch = plane.client("cloudwatch")
    dimensions = [{"Name": k, "Value": v} for k, v in DIMENSIONS.items()]

    def statistics(metric: str, statistic: str, namespace: str = "AWS/SageMaker") -> list[float]:
        answer = cloudwatch.get_metric_statistics(
            Namespace=namespace, MetricName=metric, Dimensions=dimensions, StartTime=began.timestamp() - 120,
            EndTime=time.time() + 60, Period=60, Statistics=[statistic])
        return [float(point[statistic]) for point in answer["Datapoints"]]

    assert sum(statistics("Invocations", "Sum")) == requests
    assert sum(statistics("Invocation5XXErrors", "Sum")) == MODEL_ERROR
    assert sum(statistics("ModelLatency", "SampleCount")) == requests
    assert all(0 < value < 100 for value in statistics("MemoryUtilization", "Average", "/aws/sagemaker/Endpoints"))
    store.close()


SLOW = """
import os, time
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def input_fn(body, content_type):
    time.sleep(0.5)
    return [[float(x) for x in line.split(",")] for line in body.strip().splitlines()]
"""


def test_async_backlog(plane: Plane, tmp_path: Path) -> None:
    sm, s3, rt = plane.client("sagemaker"), plane.client("s3"), plane.client("sagemaker-runtime")
    s3.create_bucket(Bucket="queue")
    s3.put_object(Bucket="queue", Key="in.csv", Body=b"1,0\n")
    sm.create_model(ModelName="queued", ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"file://{make_model_dir(tmp_path / 'm', SLOW)}"})
    sm.create_endpoint_config(
        EndpointConfigName="queued",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "queued", "InitialInstanceCount": 1,
                             "InstanceType": "ml.m5.large"}],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://queue/out/"},
                              "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1}})
    sm.create_endpoint(EndpointName="queued", EndpointConfigName="queued")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="queued", WaiterConfig=WAIT)
    answers = [rt.invoke_endpoint_async(EndpointName="queued", InputLocation="s3://queue/in.csv",
                                        ContentType="text/csv") for _ in range(4)]
    for answer in answers:  # one at a time, half a second each: the queue drains over two seconds
        s3_object(s3, answer["OutputLocation"])

    store = MetricStore(plane.settings.home / "metrics.db")
    endpoint = dimensions_of({"EndpointName": "queued"})
    variant = dimensions_of({"EndpointName": "queued", "VariantName": "AllTraffic"})

    def points(metric: str, dims: tuple[tuple[str, str], ...] = endpoint) -> list[Datapoint]:
        found: list[Datapoint] = store.datapoints("AWS/SageMaker", metric, dims, time.time() - 600, time.time() + 60)
        return found

    deadline = time.monotonic() + 20
    while sum(p.sample_count for p in points("ModelLatency", variant)) < len(answers):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.5)  # a period after the last: the queue sampled empty
    backlog = points("ApproximateBacklogSize")
    assert backlog and max(p.maximum for p in backlog) >= 2  # requests waited behind the running one
    assert backlog[-1].maximum == 0
    assert max(p.maximum for p in points("ApproximateAgeOfOldestRequest")) > 0.4
    assert {p.maximum for p in points("HasBacklogWithoutCapacity")} == {0.0}  # an instance serves throughout
    assert points("ApproximateBacklogSizePerInstance")
    # what SageMaker publishes of an async endpoint's requests: errors and ModelLatency, not Invocations
    assert points("Invocations", variant) == [] and points("InvocationsPerInstance", variant) == []
    assert sum(p.sample_count for p in points("Invocation4XXErrors", variant)) == len(answers)
    assert sum(p.sum for p in points("Invocation4XXErrors", variant)) == 0
    store.close()
