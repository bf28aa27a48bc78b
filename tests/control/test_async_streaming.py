"""Asynchronous inference streams its payloads: a 200 MB input goes from S3 (mainsail's own store) to
the instance, and a 200 MB result from the instance to S3, without the control plane (a real
`mainsail up`) holding either. Its resident memory is sampled from /proc while each request runs."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from tests.control.helpers import IMAGE, ROLE, WAIT, Plane, UpProcess

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                                   reason="reads the control plane's memory from /proc")]

MB = 1024 * 1024
PAYLOAD = 200 * MB
#: what the control plane may grow by while a 200 MB request runs (it held the whole body before)
ALLOWED_GROWTH = 64 * MB

# JSON: the body's size and digest; application/octet-stream: the body itself, echoed
SCRIPT = """
import hashlib, json

def model_fn(model_dir):
    return None

def transform_fn(model, body, content_type, accept):
    if accept == "application/octet-stream":
        return body, "application/octet-stream"
    return json.dumps({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}), "application/json"
"""


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@contextmanager
def _peak_rss(pid: int) -> Iterator[dict[str, int]]:
    """The process's resident memory before the block and its peak during it (bytes): VmHWM reset
    through clear_refs where the kernel allows, and VmRSS sampled every 10 ms in any case."""
    out = {"before": _status_kb(pid, "VmRSS") * 1024, "peak": 0}
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        hwm = True
    except OSError:
        hwm = False
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            out["peak"] = max(out["peak"], _status_kb(pid, "VmRSS") * 1024)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        stop.set()
        sampler.join()
        if hwm:
            out["peak"] = max(out["peak"], _status_kb(pid, "VmHWM") * 1024)


def _wait_for(s3: Any, location: str, timeout: float = 180) -> dict[str, Any]:
    """The HeadObject of ``s3://bucket/key`` once it is there."""
    bucket, key = location[len("s3://"):].split("/", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            head: dict[str, Any] = s3.head_object(Bucket=bucket, Key=key)
            return head
        except s3.exceptions.ClientError:
            assert time.monotonic() < deadline, f"no object at s3://{bucket}/{key}"
            time.sleep(0.2)


def _digest_of_object(s3: Any, bucket: str, key: str) -> tuple[int, str]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: body.read(MB), b""):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def script_model(tmp_path: Path) -> Path:
    """A model directory whose code/inference.py is SCRIPT."""
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(SCRIPT)
    return model_dir


def deploy_async(sm: Any, name: str, model_dir: Path, *, failures: bool = True,
                 env: dict[str, str] | None = None) -> None:
    """An async endpoint ``name`` serving ``model_dir``, results under s3://<name>-out/, waited for."""
    container: dict[str, Any] = {"Image": IMAGE, "ModelDataUrl": f"file://{model_dir}"}
    if env:
        container["Environment"] = env
    output = {"S3OutputPath": f"s3://{name}-out/results/"}
    if failures:
        output["S3FailurePath"] = f"s3://{name}-out/failures/"
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container)
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
                             "InstanceType": "ml.m5.large"}],
        AsyncInferenceConfig={"OutputConfig": output})
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[UpProcess]:
    process = UpProcess(tmp_path / "home")
    try:
        yield process
    finally:
        process.stop()


def test_a_200_mb_payload_is_streamed_both_ways(up: UpProcess, tmp_path: Path) -> None:
    model_dir = script_model(tmp_path)
    sm, s3, rt = up.client("sagemaker"), up.client("s3"), up.client("sagemaker-runtime")
    for bucket in ("big-in", "big-out"):
        s3.create_bucket(Bucket=bucket)
    deploy_async(sm, "big", model_dir)

    source = tmp_path / "input.bin"
    digest = hashlib.sha256()
    with source.open("wb") as fh:
        block = os.urandom(MB)
        for i in range(PAYLOAD // MB):
            chunk = i.to_bytes(8, "big") + block[8:]  # no two megabytes alike
            digest.update(chunk)
            fh.write(chunk)
    expected = digest.hexdigest()
    s3.upload_file(str(source), "big-in", "input.bin",
                   Config=TransferConfig(multipart_chunksize=16 * MB, max_concurrency=2))
    source.unlink()

    pid = up.proc.pid
    # a large input, a small answer
    with _peak_rss(pid) as memory:
        answer = rt.invoke_endpoint_async(EndpointName="big", InputLocation="s3://big-in/input.bin",
                                          ContentType="application/octet-stream", Accept="application/json")
        _wait_for(s3, answer["OutputLocation"])
        bucket, key = answer["OutputLocation"][len("s3://"):].split("/", 1)
    summary = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert summary == {"bytes": PAYLOAD, "sha256": expected}, up.log_text()
    growth = memory["peak"] - memory["before"]
    print(f"\n200 MB in, summary out: control plane RSS {memory['before'] / MB:.0f} MB, "
          f"peak {memory['peak'] / MB:.0f} MB (+{growth / MB:.0f} MB)")
    assert growth < ALLOWED_GROWTH

    # a large input, a large answer (the instance echoes it)
    with _peak_rss(pid) as memory:
        answer = rt.invoke_endpoint_async(EndpointName="big", InputLocation="s3://big-in/input.bin",
                                          ContentType="application/octet-stream",
                                          Accept="application/octet-stream")
        head = _wait_for(s3, answer["OutputLocation"])
        bucket, key = answer["OutputLocation"][len("s3://"):].split("/", 1)
    growth = memory["peak"] - memory["before"]
    print(f"200 MB in, 200 MB out: control plane RSS {memory['before'] / MB:.0f} MB, "
          f"peak {memory['peak'] / MB:.0f} MB (+{growth / MB:.0f} MB)")
    assert head["ContentLength"] == PAYLOAD
    assert head["ContentType"] == "application/octet-stream"
    assert _digest_of_object(s3, bucket, key) == (PAYLOAD, expected)
    assert growth < ALLOWED_GROWTH


def test_real_s3_input_is_streamed_chunked_and_the_result_uploaded_in_parts(moto_url: str, tmp_path: Path) -> None:
    """With S3 elsewhere (AWS_ENDPOINT_URL_S3: moto here), the input is get_object's streaming body,
    sent to the instance chunked (its size unknown to the reader), and the result a multipart upload."""
    import boto3
    import httpx

    httpx.post(moto_url + "/moto-api/reset")
    up = UpProcess(tmp_path / "home", env={"AWS_ENDPOINT_URL_S3": moto_url})
    try:
        model_dir = script_model(tmp_path)
        s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        for bucket in ("real-in", "real-out"):
            s3.create_bucket(Bucket=bucket)
        payload = os.urandom(MB) * 20 + b"tail"  # over two 8 MB parts
        s3.put_object(Bucket="real-in", Key="input.bin", Body=payload)
        sm, rt = up.client("sagemaker"), up.client("sagemaker-runtime")
        deploy_async(sm, "real", model_dir, failures=False)

        summary = rt.invoke_endpoint_async(EndpointName="real", InputLocation="s3://real-in/input.bin",
                                           Accept="application/json")
        echo = rt.invoke_endpoint_async(EndpointName="real", InputLocation="s3://real-in/input.bin",
                                        Accept="application/octet-stream")
        heads = [_wait_for(s3, answer["OutputLocation"], timeout=60) for answer in (summary, echo)]
        assert "-" in heads[1]["ETag"]  # a multipart upload's ETag: "<md5 of the parts' md5s>-<parts>"
        got = s3.get_object(Bucket="real-out", Key=f"results/{summary['InferenceId']}.out")["Body"].read()
        assert json.loads(got) == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        assert _digest_of_object(s3, "real-out", f"results/{echo['InferenceId']}.out") == \
            (len(payload), hashlib.sha256(payload).hexdigest())
    finally:
        up.stop()


def test_an_instance_that_refuses_the_payload_fails_the_request(plane: Plane, tmp_path: Path) -> None:
    """The model's own SAGEMAKER_MAX_PAYLOAD_IN_MB wins over the async default (1024): the instance
    answers 413 while the input is still being sent, and that answer is the failure."""
    model_dir = script_model(tmp_path)
    sm, s3, rt = plane.client("sagemaker"), plane.client("s3"), plane.client("sagemaker-runtime")
    for bucket in ("small-in", "small-out"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="small-in", Key="input.bin", Body=os.urandom(MB) * 8)
    deploy_async(sm, "small", model_dir, env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"})
    answer = rt.invoke_endpoint_async(EndpointName="small", InputLocation="s3://small-in/input.bin")
    _wait_for(s3, answer["FailureLocation"], timeout=30)
    bucket, key = answer["FailureLocation"][len("s3://"):].split("/", 1)
    failure = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    assert "(413)" in failure, failure
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket="small-out", Key=f"results/{answer['InferenceId']}.out")
