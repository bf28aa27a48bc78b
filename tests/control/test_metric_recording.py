"""The runtime API's metrics without a server: the recorder's periods, ``/metrics`` over the same
numbers, the publisher's flushes, and the samplers (instances' /proc, async queues)."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest

from mainsail.aws.cloudwatch.datapoints import Datapoint, TimeScale, dimensions_of
from mainsail.aws.cloudwatch.store import MetricStore
from mainsail.backends.base import Address
from mainsail.backends.process_usage import GroupUsage, cpu_percent, disk_percent, group_usage
from mainsail.gateway.publisher import MetricPublisher
from mainsail.hosting.endpoints import ENDPOINT
from mainsail.hosting.instance_metrics import InstanceSampler
from mainsail.hosting.instance_types import memory_bytes
from mainsail.hosting.store import SQLiteStore
from mainsail.jobs.async_backlog import backlog_datapoints
from mainsail.jobs.async_inference import ASYNC_REQUEST
from mainsail.routing.metrics import RouterMetrics
from mainsail.routing.recorder import Recorder

DIMS = dimensions_of({"EndpointName": "ep", "VariantName": "v"})
A, B = Address("127.0.0.1", 9001), Address("127.0.0.1", 9002)


def by_name(points: list[Datapoint]) -> dict[str, Datapoint]:
    named = {p.metric_name: p for p in points}
    assert len(named) == len(points)
    return named


def test_a_period_is_what_was_added_since_the_last_take() -> None:
    recorder = Recorder()
    series = recorder.variant("ep", "v")
    assert recorder.variant("ep", "v") is series
    for latency, address in ((1000.0, A), (3000.0, B), (2000.0, A)):
        series.invoked(address, 2)
        series.model_latency.add(latency)
    series.failed(415)
    series.failed(500)
    series.overhead_latency.add(0.0)

    first = by_name(recorder.take(60.0))
    assert set(first) == {"Invocations", "Invocation4XXErrors", "Invocation5XXErrors", "InvocationModelErrors",
                          "InvocationsPerInstance", "ModelLatency", "OverheadLatency"}
    assert all(p.timestamp == 60.0 and p.dimensions == DIMS and p.namespace == "AWS/SageMaker"
               for p in first.values())
    invocations = first["Invocations"]
    assert (invocations.sample_count, invocations.sum, invocations.unit) == (3, 3, "None")
    errors_4xx, model_errors = first["Invocation4XXErrors"], first["InvocationModelErrors"]
    assert (errors_4xx.sample_count, errors_4xx.sum, errors_4xx.minimum, errors_4xx.maximum) == (3, 1, 0, 1)
    assert errors_4xx.average == pytest.approx(1 / 3)
    assert (model_errors.sample_count, model_errors.sum) == (3, 2)
    per_instance = first["InvocationsPerInstance"]
    assert (per_instance.sample_count, per_instance.sum) == (3, 1.5)  # 1/2 per request: 2 instances
    latency = first["ModelLatency"]
    assert (latency.unit, latency.sample_count, latency.sum, latency.minimum, latency.maximum) == (
        "Microseconds", 3, 6000, 1000, 3000)
    assert latency.distribution is not None
    assert latency.distribution.quantile(0.5) == pytest.approx(2000, rel=0.01)
    assert first["OverheadLatency"].minimum == 0.0

    assert recorder.take(120.0) == []  # nothing since
    series.invoked(A, 1)
    series.model_latency.add(5000.0)
    second = by_name(recorder.take(120.0))
    assert second["Invocations"].sum == 1 and second["InvocationsPerInstance"].sum == 1.0
    assert (second["ModelLatency"].minimum, second["ModelLatency"].maximum) == (5000, 5000)
    assert second["Invocation4XXErrors"].sum == 0 and second["Invocation4XXErrors"].maximum == 0
    # the totals keep growing: /metrics reads them
    assert (series.invocations, series.errors_4xx, series.model_latency.count) == (4, 1, 4)


def test_multi_model_serverless_and_async_variants() -> None:
    recorder = Recorder()
    series = recorder.variant("mme", "v")
    series.cache_hits, series.cache_misses = 3, 1
    series.loading_wait.add(250_000.0)
    for _ in range(4):
        series.invoked(A, 1)
    series.failed(429, model=False)  # ModelNotReadyException: the router's answer, not the model's
    recorder.variant("sls", "v").model_setup_time.add(1_500_000.0)
    queued = recorder.variant("queue", "v")
    queued.asynchronous = True
    queued.invoked(A, 1)
    queued.model_latency.add(10.0)
    points = recorder.take(0.0)
    mme = by_name([p for p in points if ("EndpointName", "mme") in p.dimensions])
    assert (mme["ModelCacheHit"].sample_count, mme["ModelCacheHit"].average) == (4, 0.75)
    assert mme["ModelLoadingWaitTime"].sum == 250_000.0
    assert (mme["Invocation4XXErrors"].sum, mme["InvocationModelErrors"].sum) == (1, 0)
    sls = by_name([p for p in points if ("EndpointName", "sls") in p.dimensions])
    assert set(sls) == {"ModelSetupTime"}
    # SageMaker publishes no Invocations, InvocationsPerInstance or InvocationModelErrors for async endpoints
    assert set(by_name([p for p in points if ("EndpointName", "queue") in p.dimensions])) == {
        "Invocation4XXErrors", "Invocation5XXErrors", "ModelLatency"}


def sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in\n{text}"
    return float(found.group(1))


def test_slash_metrics_reads_the_same_totals() -> None:
    recorder = Recorder()
    series = recorder.variant("ep", "v")
    for latency in (40.0, 50.0, 51.0, 2_000_000.0, 90_000_000.0):
        series.invoked(A, 1)
        series.model_latency.add(latency)
    series.failed(404)
    series.target_invocations["m.tar.gz"] = 2
    series.cache_hits = 2
    recorder.take(0.0)  # taking a period changes no total
    text = RouterMetrics(recorder).render().decode()
    labels = '{EndpointName="ep",VariantName="v"}'
    assert sample(text, "Invocations_total" + labels) == 5
    assert sample(text, "Invocation4XXErrors_total" + labels) == 1
    assert "Invocation5XXErrors_total{" not in text  # nothing counted: no sample, as before
    assert sample(text, 'InvocationsPerInstance_total{EndpointName="ep",Instance="9001",VariantName="v"}') == 5
    assert sample(text, "ModelLatency_count" + labels) == 5
    assert sample(text, "ModelLatency_sum" + labels) == pytest.approx(92_000_141.0)
    # Prometheus' buckets count values <= the bound, exactly
    bucket = 'ModelLatency_bucket{EndpointName="ep",VariantName="v",le="%s"}'
    assert [sample(text, bucket % le) for le in ("50.0", "100.0", "2.5e+06", "6e+07", "+Inf")] == [2, 3, 4, 4, 5]
    assert sample(text, 'TargetModelInvocations_total{EndpointName="ep",TargetModel="m.tar.gz",VariantName="v"}') == 2
    assert sample(text, "ModelCacheHit_total" + labels) == 2


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_publisher_stamps_each_period_and_flushes_on_stop() -> None:
    store = MetricStore(":memory:")
    recorder = Recorder()
    scale = TimeScale(60.0)  # one-second periods
    period = scale.period_start(time.time())  # the store keeps 15 days: no older timestamps
    clock = FakeClock(period + 0.25)
    sampled: list[float] = []

    def sampler(timestamp: float) -> list[Datapoint]:
        sampled.append(timestamp)
        point = Datapoint("/aws/sagemaker/Endpoints", "MemoryUtilization", DIMS, timestamp, "Percent")
        point.add(12.5)
        return [point]

    def broken(timestamp: float) -> list[Datapoint]:
        raise RuntimeError("a sampler's failure costs only its own metrics")

    publisher = MetricPublisher(recorder, store, scale, samplers=(broken, sampler), clock=clock)

    async def run() -> None:
        series = recorder.variant("ep", "v")
        series.invoked(A, 1)
        await publisher.publish(period)  # what the periodic task does at each period's end
        series.invoked(A, 1)
        series.invoked(A, 1)
        publisher.start()
        await asyncio.sleep(0)
        await publisher.stop()  # the period under way (the same, by the clock), without sampling

    asyncio.run(run())
    assert sampled == [period]
    (invocations,) = store.datapoints("AWS/SageMaker", "Invocations", DIMS, 0, period + 10)
    assert (invocations.timestamp, invocations.sum) == (period, 3)  # two flushes of one period, merged
    (memory,) = store.datapoints("/aws/sagemaker/Endpoints", "MemoryUtilization", DIMS, 0, period + 10)
    assert memory.average == 12.5
    store.close()


def test_publisher_runs_once_per_period() -> None:
    store = MetricStore(":memory:")
    recorder = Recorder()
    stamps: list[float] = []

    def sampler(timestamp: float) -> list[Datapoint]:
        stamps.append(timestamp)
        return []

    publisher = MetricPublisher(recorder, store, TimeScale(3600.0), samplers=(sampler,))  # periods of 1/60 s

    async def run() -> None:
        publisher.start()
        await asyncio.sleep(0.2)
        await publisher.stop()

    asyncio.run(run())
    assert 3 <= len(stamps) <= 13
    assert stamps == sorted(set(stamps))  # one publish per period, in order
    steps = [(b - a) * 60 for a, b in zip(stamps, stamps[1:], strict=False)]  # in periods: 1 unless the loop lagged
    assert all(round(step) >= 1 and step == pytest.approx(round(step), abs=1e-3) for step in steps)
    store.close()


def test_process_group_usage_from_proc(tmp_path: Path) -> None:
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    usage = group_usage({os.getpgrp()})
    assert usage is not None
    mine = usage[os.getpgrp()]
    assert mine.memory_bytes > 10 * 2**20  # this interpreter, with pytest loaded
    assert any(pid == os.getpid() for pid, _ in mine.cpu)
    sum(i * i for i in range(300_000))  # some CPU
    later = group_usage({os.getpgrp()})
    assert later is not None
    assert cpu_percent(mine, later[os.getpgrp()], 1.0) is not None
    assert cpu_percent(mine, later[os.getpgrp()], 0.0) is None
    disk = disk_percent(str(tmp_path))
    assert disk is not None and 0 <= disk <= 100
    assert disk_percent(str(tmp_path / "missing")) is None


def test_cpu_percent_sums_cores_and_counts_new_processes_from_zero() -> None:
    before = GroupUsage({(1, 10): 5.0, (2, 11): 1.0})
    after = GroupUsage({(1, 10): 6.0, (2, 11): 2.0, (3, 99): 0.5})  # two busy cores, and a new worker
    assert cpu_percent(before, after, 1.0) == pytest.approx(250.0)


def test_instance_memory_by_type() -> None:
    assert memory_bytes("ml.m5.large") == 8 * 2**30
    assert memory_bytes("ml.c5.9xlarge") == 72 * 2**30
    assert memory_bytes("ml.t2.medium") == 4 * 2**30
    assert memory_bytes("ml.p3.2xlarge") == 61 * 2**30
    assert memory_bytes("ml.g7.xlarge") is None  # not known: MemoryUtilization is left out


def test_instance_sampler_averages_a_variants_instances(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    instances = [{"variant": "v", "pid": pid, "port": pid, "log_path": "", "ready": True, "model_dir": str(tmp_path)}
                 for pid in (101, 102)]
    store.put(ENDPOINT, "ep", {"EndpointName": "ep", "EndpointStatus": "InService",
                               "ProductionVariants": [{"VariantName": "v"}],
                               "Specs": {"v": {"instance_type": "ml.m5.large"}},
                               "Instances": [*instances, {**instances[0], "pid": 103, "ready": False}]})
    store.put(ENDPOINT, "sls", {"EndpointName": "sls", "EndpointStatus": "InService",
                                "ProductionVariants": [{"VariantName": "v",
                                                        "CurrentServerlessConfig": {"MemorySizeInMB": 1024}}],
                                "Instances": [{**instances[0], "pid": 201, "port": 201}]})
    ticks = {101: 0.0, 102: 0.0, 201: 0.0}
    clock = FakeClock(10.0)

    def usage(groups: set[int]) -> dict[int, GroupUsage]:
        assert groups == {101, 102, 201}  # ready instances only
        return {pid: GroupUsage({(pid, 1): ticks[pid]}, memory_bytes=2**30 if pid < 200 else 2**28)
                for pid in groups}

    sampler = InstanceSampler(store, usage=usage, clock=clock)
    first = by_name([p for p in sampler.sample(0.0) if ("EndpointName", "ep") in p.dimensions])
    assert set(first) == {"MemoryUtilization", "DiskUtilization"}  # no CPU without an earlier sample
    assert first["MemoryUtilization"].sample_count == 2 and first["MemoryUtilization"].average == 12.5  # 1 of 8 GiB
    assert first["MemoryUtilization"].namespace == "/aws/sagemaker/Endpoints"
    assert first["MemoryUtilization"].unit == "Percent"
    ticks.update({101: 1.0, 102: 0.5, 201: 9.0})
    clock.now = 12.0
    points = sampler.sample(60.0)
    cpu = by_name([p for p in points if ("EndpointName", "ep") in p.dimensions])["CPUUtilization"]
    assert (cpu.sample_count, cpu.minimum, cpu.maximum, cpu.average) == (2, 25.0, 50.0, 37.5)
    serverless = by_name([p for p in points if ("EndpointName", "sls") in p.dimensions])
    assert set(serverless) == {"MemoryUtilization"}  # what SageMaker publishes for serverless
    assert serverless["MemoryUtilization"].average == 25.0  # 256 MB of 1024
    store.close()


def test_async_backlog_metrics(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    config = {"OutputConfig": {"S3OutputPath": "s3://b/out"}}
    store.put(ENDPOINT, "busy", {"EndpointName": "busy", "AsyncInferenceConfig": config,
                                 "ProductionVariants": [{"VariantName": "v", "CurrentInstanceCount": 2}]})
    store.put(ENDPOINT, "cold", {"EndpointName": "cold", "AsyncInferenceConfig": config,
                                 "ProductionVariants": [{"VariantName": "v", "CurrentInstanceCount": 0}]})
    store.put(ENDPOINT, "idle", {"EndpointName": "idle", "AsyncInferenceConfig": config,
                                 "ProductionVariants": [{"VariantName": "v", "CurrentInstanceCount": 1}]})
    store.put(ENDPOINT, "realtime", {"EndpointName": "realtime", "ProductionVariants": [{"VariantName": "v"}]})
    for n, (endpoint, at) in enumerate((("busy", 100.0), ("busy", 130.0), ("busy", 140.0), ("cold", 150.0))):
        store.insert(ASYNC_REQUEST, f"{endpoint}/{n}", {"EndpointName": endpoint, "EnqueuedAt": at})
    points = backlog_datapoints(store, 120.0, now=160.0)

    def of(endpoint: str) -> dict[str, float | None]:
        dims = dimensions_of({"EndpointName": endpoint})
        return {p.metric_name: p.average for p in points if p.dimensions == dims}

    assert of("busy") == {"ApproximateBacklogSize": 3, "ApproximateBacklogSizePerInstance": 1.5,
                          "ApproximateAgeOfOldestRequest": 60.0, "HasBacklogWithoutCapacity": 0}
    assert of("cold") == {"ApproximateBacklogSize": 1, "ApproximateAgeOfOldestRequest": 10.0,
                          "HasBacklogWithoutCapacity": 1}
    assert of("idle") == {"ApproximateBacklogSize": 0, "ApproximateBacklogSizePerInstance": 0,
                          "HasBacklogWithoutCapacity": 0}
    assert of("realtime") == {}
    assert {p.timestamp for p in points} == {120.0}
    assert {p.unit for p in points if p.metric_name == "ApproximateAgeOfOldestRequest"} == {"Seconds"}
    store.close()
