"""Batch transform end to end: the real boto3 ``sagemaker`` and ``s3`` clients against the control
app, the ``TransformRunner`` and real ``mainsail serve`` instances of a small scikit-learn script
model (y = 2*x0 + 3*x1) that logs the number of rows of every request it sees."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, WaiterError
from typer.testing import CliRunner

from mainsail.backends.local import LocalBackend
from mainsail.cli.app import app
from mainsail.hosting.store import SQLiteStore
from mainsail.jobs.transform.api import TRANSFORM_JOB, new_job
from mainsail.jobs.transform.records import apply_path, join_record, parse_path, split_output
from mainsail.jobs.transform.runner import TransformRunner
from tests.conftest import free_port
from tests.control.helpers import IMAGE, INFERENCE_OK, REGION, ROLE, Plane, UpProcess, make_model_dir

pytestmark = pytest.mark.slow

SCRIPT = '''
import json
import os
import time
import uuid

import joblib
import numpy as np


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(body, content_type):
    if isinstance(body, (bytes, bytearray)):
        body = body.decode()
    lines = [line for line in body.splitlines() if line.strip()]
    if "json" in content_type:
        rows = [json.loads(line) for line in lines]
        if len(rows) == 1 and rows[0] and isinstance(rows[0][0], list):
            rows = rows[0]
    else:
        rows = [[float(x) for x in line.split(",")] for line in lines]
    log = os.environ.get("BATCH_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{len(rows)} {len(body)}\\n")
    time.sleep(float(os.environ.get("PREDICT_DELAY", "0")))
    barrier = os.environ.get("BARRIER_DIR")
    if barrier:  # wait until BARRIER_COUNT requests are in flight together
        open(os.path.join(barrier, uuid.uuid4().hex), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(barrier)) < int(os.environ["BARRIER_COUNT"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the requests were not in flight together")
            time.sleep(0.02)
    gate = os.environ.get("GATE")
    if gate and body.startswith("9,9"):  # such a request waits until the test opens the gate
        deadline = time.monotonic() + 120
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.05)
    return np.array(rows, dtype=float)


def output_fn(prediction, accept):
    if accept == "application/json":
        return json.dumps(prediction.round(6).tolist()), accept
    return "".join(f"{v:g}\\n" for v in prediction), "text/csv"
'''
WAIT = {"Delay": 1, "MaxAttempts": 90}
BUCKET = "data"


class TransformPlane(Plane):
    """The tests' control plane plus a transform runner."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.runner = TransformRunner(self.store, self.backend, home, interval=0.05)

    def __enter__(self) -> TransformPlane:
        super().__enter__()
        self.runner.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.stop()
        super().__exit__(*exc)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransformPlane]:
    home = tmp_path_factory.mktemp("transform")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAINSAIL_HOME", str(home))
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        with TransformPlane(home) as p:
            sm, s3 = p.client("sagemaker"), p.client("s3")
            s3.create_bucket(Bucket=BUCKET)
            model_dir = make_model_dir(home / "model", SCRIPT)
            sm.create_model(ModelName="lin", ExecutionRoleArn=ROLE, PrimaryContainer={
                "Image": IMAGE, "ModelDataUrl": f"file://{model_dir}"})
            yield p


def _pred(x0: float, x1: float) -> float:
    return 2 * x0 + 3 * x1


def _job(sm: Any, name: str, uri: str, out: str, *, split: str = "Line", strategy: str | None = "MultiRecord",
         content_type: str = "text/csv", accept: str | None = "text/csv", assemble: str = "Line",
         env: dict[str, str] | None = None, wait: bool = True, **extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "TransformJobName": name, "ModelName": "lin",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}},
                           "ContentType": content_type, "SplitType": split, **extra.pop("input", {})},
        "TransformOutput": {"S3OutputPath": out, "AssembleWith": assemble,
                            **({"Accept": accept} if accept else {})},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": extra.pop("instances", 1)},
        **extra,
    }
    if strategy:
        args["BatchStrategy"] = strategy
    if env:
        args["Environment"] = env
    arn = sm.create_transform_job(**args)["TransformJobArn"]
    assert arn == f"arn:aws:sagemaker:{REGION}:123456789012:transform-job/{name.lower()}"
    if wait:
        sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName=name, WaiterConfig=WAIT)
    desc: dict[str, Any] = sm.describe_transform_job(TransformJobName=name)
    return desc


def _settle(sm: Any, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        desc: dict[str, Any] = sm.describe_transform_job(TransformJobName=name)
        if desc["TransformJobStatus"] not in ("InProgress", "Stopping"):
            return desc
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _get(s3: Any, key: str) -> bytes:
    body: bytes = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def _log(path: Path) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


def test_multi_file_prefix_line_split_multirecord_packing(plane: TransformPlane, tmp_path: Path) -> None:
    sm, s3 = plane.client("sagemaker"), plane.client("s3")
    rows = [(i % 7, i % 5) for i in range(120_000)]
    big = "".join(f"{a},{b}\n" for a, b in rows).encode()  # ~480 KB
    s3.put_object(Bucket=BUCKET, Key="multi/in/a.csv", Body=big * 3)  # ~1.4 MB: 2 requests of <= 1 MB
    s3.put_object(Bucket=BUCKET, Key="multi/in/sub/b.csv", Body=b"1,1\n\n2,0\r\n0,1")
    log = tmp_path / "batches.log"
    desc = _job(sm, "multi", f"s3://{BUCKET}/multi/in/", f"s3://{BUCKET}/multi/out", MaxPayloadInMB=1,
                env={"BATCH_LOG": str(log)}, MaxConcurrentTransforms=1)
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    assert desc["ModelName"] == "lin" and desc["MaxPayloadInMB"] == 1 and desc["BatchStrategy"] == "MultiRecord"
    assert desc["TransformInput"]["SplitType"] == "Line" and desc["TransformInput"]["CompressionType"] == "None"
    assert desc["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 1}
    assert desc["CreationTime"] <= desc["TransformStartTime"] <= desc["TransformEndTime"]
    assert "FailureReason" not in desc
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="multi/out/")["Contents"])
    assert keys == ["multi/out/a.csv.out", "multi/out/sub/b.csv.out"]
    out_a = _get(s3, "multi/out/a.csv.out").decode().split()
    assert len(out_a) == 360_000
    assert [float(v) for v in out_a[:7]] == pytest.approx([_pred(a, b) for a, b in rows[:7]], abs=1e-6)
    assert _get(s3, "multi/out/sub/b.csv.out") == b"5\n4\n3\n"
    batches = _log(log)
    assert sum(n for n, _ in batches) == 360_003
    assert len(batches) == 3  # two for a.csv (each <= 1 MiB), one for b.csv
    assert all(size <= 1024 * 1024 for _, size in batches)
    record = plane.store.get(TRANSFORM_JOB, "multi")
    assert record is not None and record["Progress"]["Records"] == 360_003
    assert record["Progress"]["ObjectsDone"] == 2 and record["Instances"] == []
    raw = httpx.post(plane.url + "/", headers={"X-Amz-Target": "SageMaker.DescribeTransformJob",
                                               "Content-Type": "application/x-amz-json-1.1"},
                     content=json.dumps({"TransformJobName": "multi"})).json()
    assert raw["MainsailProgress"]["Requests"] == 3


def test_single_record_gzip_and_split_none(plane: TransformPlane, tmp_path: Path) -> None:
    sm, s3 = plane.client("sagemaker"), plane.client("s3")
    s3.put_object(Bucket=BUCKET, Key="gz/in/x.csv.gz", Body=gzip.compress(b"1,0\n0,1\n1,1\n"))
    log = tmp_path / "single.log"
    desc = _job(sm, "gz-single", f"s3://{BUCKET}/gz/in/x.csv.gz", f"s3://{BUCKET}/gz/out/",
                strategy="SingleRecord", env={"BATCH_LOG": str(log)}, input={"CompressionType": "Gzip"},
                MaxConcurrentTransforms=2, instances=2)
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    assert _get(s3, "gz/out/x.csv.gz.out") == b"2\n3\n5\n"
    assert sorted(_log(log)) == [(1, 4)] * 3
    # SplitType None: one request per object, AssembleWith None leaves the answer as it is
    s3.put_object(Bucket=BUCKET, Key="whole/in/p.csv", Body=b"1,0\n0,1\n")
    s3.put_object(Bucket=BUCKET, Key="whole/in/q.csv", Body=b"2,2\n")
    log2 = tmp_path / "whole.log"
    desc = _job(sm, "whole", f"s3://{BUCKET}/whole/in", f"s3://{BUCKET}/whole/out", split="None",
                strategy=None, assemble="None", accept="application/json", env={"BATCH_LOG": str(log2)})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    assert _get(s3, "whole/out/p.csv.out") == b"[2.0, 3.0]"
    assert _get(s3, "whole/out/q.csv.out") == b"[10.0]"
    assert _log(log2) == [(2, 8), (1, 4)]


def test_filters_and_join(plane: TransformPlane) -> None:
    sm, s3 = plane.client("sagemaker"), plane.client("s3")
    s3.put_object(Bucket=BUCKET, Key="join/in/rows.csv", Body=b"7,1,0\n8,0,1\n9,1,1\n")
    desc = _job(sm, "join-csv", f"s3://{BUCKET}/join/in/rows.csv", f"s3://{BUCKET}/join/out-csv",
                DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    assert desc["DataProcessing"]["JoinSource"] == "Input"
    assert _get(s3, "join/out-csv/rows.csv.out") == b"7,2\n8,3\n9,5\n"
    lines = [{"id": i, "features": [i, 1], "note": "x"} for i in range(3)]
    s3.put_object(Bucket=BUCKET, Key="join/in/rows.jsonl",
                  Body="".join(json.dumps(line) + "\n" for line in lines).encode())
    desc = _job(sm, "join-json", f"s3://{BUCKET}/join/in/rows.jsonl", f"s3://{BUCKET}/join/out-json",
                content_type="application/jsonlines", accept="application/json",
                DataProcessing={"InputFilter": "$.features", "JoinSource": "Input",
                                "OutputFilter": "$['id','SageMakerOutput']"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    out = [json.loads(line) for line in _get(s3, "join/out-json/rows.jsonl.out").splitlines()]
    assert out == [{"id": i, "SageMakerOutput": 2.0 * i + 3} for i in range(3)]


def test_bad_record_fails_the_job_with_file_and_line(plane: TransformPlane) -> None:
    sm, s3 = plane.client("sagemaker"), plane.client("s3")
    s3.put_object(Bucket=BUCKET, Key="bad/in/rows.csv", Body=b"1,0\n0,1\nnot,numbers\n1,1\n")
    with pytest.raises(WaiterError):
        _job(sm, "bad", f"s3://{BUCKET}/bad/in/rows.csv", f"s3://{BUCKET}/bad/out", strategy="SingleRecord",
             ModelClientConfig={"InvocationsMaxRetries": 1, "InvocationsTimeoutInSeconds": 30})
    desc = sm.describe_transform_job(TransformJobName="bad")
    assert desc["TransformJobStatus"] == "Failed"
    reason = desc["FailureReason"]
    assert f"s3://{BUCKET}/bad/in/rows.csv, line 3" in reason and "Bad HTTP status" in reason, reason
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="bad/out").get("KeyCount") == 0
    # SplitType None with an object above MaxPayloadInMB, and a missing input prefix
    s3.put_object(Bucket=BUCKET, Key="huge/in/h.csv", Body=b"1,1\n" * (300 * 1024))  # 1.2 MB
    _job(sm, "huge", f"s3://{BUCKET}/huge/in/", f"s3://{BUCKET}/huge/out", split="None", strategy=None,
         MaxPayloadInMB=1, wait=False)
    desc = _settle(sm, "huge")
    assert desc["TransformJobStatus"] == "Failed" and "larger than MaxPayloadInMB" in desc["FailureReason"]
    _job(sm, "nothing", f"s3://{BUCKET}/nothing/here/", f"s3://{BUCKET}/x", wait=False)
    desc = _settle(sm, "nothing")
    assert desc["TransformJobStatus"] == "Failed" and "No S3 objects found" in desc["FailureReason"]


def test_input_files_are_transformed_concurrently(plane: TransformPlane, tmp_path: Path) -> None:
    """MaxConcurrentTransforms 2 on 2 instances: the 4 files' requests are in flight together (the
    model answers none of them until all 4 have arrived)."""
    sm, s3 = plane.client("sagemaker"), plane.client("s3")
    for i in range(4):
        s3.put_object(Bucket=BUCKET, Key=f"par/in/f{i}.csv", Body=f"{i},1\n".encode())
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    desc = _job(sm, "par", f"s3://{BUCKET}/par/in/", f"s3://{BUCKET}/par/out", split="None", strategy=None,
                env={"BARRIER_DIR": str(barrier), "BARRIER_COUNT": "4"}, MaxConcurrentTransforms=2, instances=2,
                ModelClientConfig={"InvocationsMaxRetries": 0, "InvocationsTimeoutInSeconds": 120})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    assert len(list(barrier.iterdir())) == 4
    for i in range(4):
        assert _get(s3, f"par/out/f{i}.csv.out") == f"{_pred(i, 1):g}\n".encode()
    record = plane.store.get(TRANSFORM_JOB, "par")
    assert record is not None and record["Progress"]["ObjectsDone"] == 4 and record["Progress"]["Requests"] == 4


def test_stop_transform_job(plane: TransformPlane) -> None:
    sm, s3 = plane.client("sagemaker"), plane.client("s3")
    s3.put_object(Bucket=BUCKET, Key="slow/in/rows.csv", Body=b"1,1\n" * 200)
    _job(sm, "slow", f"s3://{BUCKET}/slow/in/", f"s3://{BUCKET}/slow/out", strategy="SingleRecord",
         env={"PREDICT_DELAY": "0.2"}, wait=False)
    deadline = time.monotonic() + 60
    while True:
        record = plane.store.get(TRANSFORM_JOB, "slow")
        assert record is not None
        if record["Progress"].get("Records", 0) > 0:
            break
        assert time.monotonic() < deadline and record["TransformJobStatus"] == "InProgress"
        time.sleep(0.1)
    pids = [item["pid"] for item in record["Instances"]]
    sm.stop_transform_job(TransformJobName="slow")
    assert sm.describe_transform_job(TransformJobName="slow")["TransformJobStatus"] in ("Stopping", "Stopped")
    sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName="slow", WaiterConfig=WAIT)
    assert sm.describe_transform_job(TransformJobName="slow")["TransformJobStatus"] == "Stopped"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="slow/out")
    sm.stop_transform_job(TransformJobName="slow")  # stopping a finished job is a no-op


def test_list_transform_jobs_filters_and_pagination(plane: TransformPlane) -> None:
    sm = plane.client("sagemaker")
    for i in range(3):
        if i == 2:
            time.sleep(1.1)  # botocore may send whole seconds for the time filters
        _job(sm, f"lst-{i}", f"s3://{BUCKET}/absent-{i}/", f"s3://{BUCKET}/o", wait=False)
    for i in range(3):
        _settle(sm, f"lst-{i}")
    listed = sm.list_transform_jobs(NameContains="LST", SortBy="Name", SortOrder="Ascending")
    names = [s["TransformJobName"] for s in listed["TransformJobSummaries"]]
    assert names == ["lst-0", "lst-1", "lst-2"]
    summary = listed["TransformJobSummaries"][0]
    assert summary["TransformJobStatus"] == "Failed" and "FailureReason" in summary and "TransformEndTime" in summary
    page = sm.list_transform_jobs(NameContains="lst", SortBy="Name", SortOrder="Descending", MaxResults=2)
    assert [s["TransformJobName"] for s in page["TransformJobSummaries"]] == ["lst-2", "lst-1"]
    rest = sm.list_transform_jobs(NameContains="lst", SortBy="Name", SortOrder="Descending", MaxResults=2,
                                  NextToken=page["NextToken"])
    assert [s["TransformJobName"] for s in rest["TransformJobSummaries"]] == ["lst-0"] and "NextToken" not in rest
    failed = sm.list_transform_jobs(StatusEquals="Failed", MaxResults=100)["TransformJobSummaries"]
    assert {"lst-0", "lst-1", "lst-2"} <= {s["TransformJobName"] for s in failed}
    created = sm.describe_transform_job(TransformJobName="lst-2")["CreationTime"] - dt.timedelta(seconds=0.05)
    after = sm.list_transform_jobs(NameContains="lst", CreationTimeAfter=created)["TransformJobSummaries"]
    assert [s["TransformJobName"] for s in after] == ["lst-2"]
    assert sm.list_transform_jobs(StatusEquals="Stopping")["TransformJobSummaries"] == []


def test_transform_jobs_are_tagged_like_other_resources(plane: TransformPlane) -> None:
    sm = plane.client("sagemaker")
    desc = _job(sm, "tagged", f"s3://{BUCKET}/absent-tagged/", f"s3://{BUCKET}/o", wait=False,
                Tags=[{"Key": "team", "Value": "risk"}])
    arn = desc["TransformJobArn"]
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "risk"}]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "stage", "Value": "test"}, {"Key": "team", "Value": "ops"}])
    assert {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]} == {"team": "ops", "stage": "test"}
    sm.delete_tags(ResourceArn=arn, TagKeys=["team"])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "stage", "Value": "test"}]
    _settle(sm, "tagged")  # the job's own updates keep its tags
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "stage", "Value": "test"}]
    with pytest.raises(ClientError, match='Could not find transform job "arn:.*transform-job/nope"'):
        sm.list_tags(ResourceArn=arn.replace("/tagged", "/nope"))


def test_validation_and_not_found(plane: TransformPlane) -> None:
    sm = plane.client("sagemaker")
    base: dict[str, Any] = {
        "TransformJobName": "v", "ModelName": "lin",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://data/x"}}},
        "TransformOutput": {"S3OutputPath": "s3://data/y"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}}

    def error(**changes: Any) -> dict[str, str]:
        with pytest.raises(ClientError) as exc:
            sm.create_transform_job(**{**base, **changes})
        found: dict[str, str] = exc.value.response["Error"]
        return found

    err = error(TransformJobName="bad_name!")
    assert err["Code"] == "ValidationException" and "transformJobName" in err["Message"]
    err = error(TransformResources={"InstanceType": "ml.nope", "InstanceCount": 1})
    assert "transformResources.instanceType" in err["Message"]
    err = error(TransformInput={**base["TransformInput"], "SplitType": "RecordIO"})
    assert "not supported" in err["Message"]
    err = error(DataProcessing={"InputFilter": "features"})
    assert "InputFilter" in err["Message"]
    err = error(ModelName="no-such-model")
    assert err == {"Code": "ValidationException",
                   "Message": f'Could not find model "arn:aws:sagemaker:{REGION}:123456789012:model/no-such-model".'}
    err = error(MaxPayloadInMB=50, MaxConcurrentTransforms=4)
    assert "MaxConcurrentTransforms" in err["Message"]
    sm.create_transform_job(**{**base, "TransformJobName": "dup"})  # no input: fails at once
    err = error(TransformJobName="dup")
    assert err["Code"] == "ResourceInUse"
    with pytest.raises(ClientError) as exc:
        sm.describe_transform_job(TransformJobName="missing")
    assert exc.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError) as exc:
        sm.stop_transform_job(TransformJobName="missing")
    assert exc.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError) as exc:
        sm.list_transform_jobs(StatusEquals="Done")
    assert exc.value.response["Error"]["Code"] == "ValidationException"


def test_cli_transform_and_list(plane: TransformPlane) -> None:
    s3 = plane.client("s3")
    s3.put_object(Bucket=BUCKET, Key="cli/in/c.csv", Body=b"1,0\n0,1\n")
    cli = CliRunner()
    result = cli.invoke(app, ["transform", "lin", "--input", f"s3://{BUCKET}/cli/in/", "--output",
                              f"s3://{BUCKET}/cli/out", "--name", "cli-job", "--wait", "--url", plane.url])
    assert result.exit_code == 0, result.output
    assert "cli-job Completed: 2 records from 1 files" in result.output
    assert _get(s3, "cli/out/c.csv.out") == b"[2.0, 3.0]\n"  # no --accept: the script answers JSON
    result = cli.invoke(app, ["transform", "lin", "--input", f"s3://{BUCKET}/cli/none/", "--output",
                              f"s3://{BUCKET}/cli/out", "--name", "cli-bad", "--wait", "--url", plane.url])
    assert result.exit_code == 1 and "No S3 objects found" in result.output
    result = cli.invoke(app, ["transform-jobs", "--url", plane.url])
    assert result.exit_code == 0 and "cli-job" in result.output and "Completed" in result.output
    result = cli.invoke(app, ["transform-jobs", "--status", "Failed", "--url", plane.url])
    assert "cli-bad" in result.output and "cli-job" not in result.output


def test_jsonpath_subset() -> None:
    row = ["a", "b", "c", "d"]
    assert apply_path(row, parse_path("$")) == row
    assert apply_path(row, parse_path("$[1:]")) == ["b", "c", "d"]
    assert apply_path(row, parse_path("$[0,2]")) == ["a", "c"]
    assert apply_path(row, parse_path("$[-1]")) == "d"
    assert apply_path(row, parse_path("$[:-2]")) == ["a", "b"]
    doc = {"a": 1, "b": {"c": [1, 2, 3]}, "d": 4}
    assert apply_path(doc, parse_path("$.b.c[1:]")) == [2, 3]
    assert apply_path(doc, parse_path("$['a','d']")) == {"a": 1, "d": 4}
    assert apply_path(doc, parse_path('$["a"]')) == 1
    for bad in ("a", "$..a", "$[?(@.a)]"):
        with pytest.raises(ValueError):
            parse_path(bad)
    assert split_output(b"[1, 2]", 2) == [b"1", b"2"]
    assert split_output(b"1\n2\n", 2) == [b"1", b"2"]
    assert join_record(b"1,2", b"3\n", "text/csv") == b"1,2,3"
    assert json.loads(join_record(b'{"x": 1}', b"[0.5]", None)) == {"x": 1, "SageMakerOutput": [0.5]}


def test_restart_settles_interrupted_jobs(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    body = {"TransformJobName": "j", "ModelName": "m",
            "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/i"}}},
            "TransformOutput": {"S3OutputPath": "s3://b/o"},
            "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1}}
    store.put(TRANSFORM_JOB, "j", new_job(body, REGION))
    store.put(TRANSFORM_JOB, "k", {**new_job({**body, "TransformJobName": "k"}, REGION),
                                       "TransformJobStatus": "Stopping"})
    runner = TransformRunner(store, LocalBackend(tmp_path), tmp_path)
    runner.recover()
    j, k = store.get(TRANSFORM_JOB, "j"), store.get(TRANSFORM_JOB, "k")
    assert j is not None and j["TransformJobStatus"] == "InProgress"  # resumed by the first poll
    assert j["Instances"] == [] and "FailureReason" not in j
    assert k is not None and k["TransformJobStatus"] == "Stopped"
    store.close()


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_200mb_input_streams_through_mainsail_up(tmp_path: Path) -> None:
    """A ~200 MB CSV through `mainsail up` in a subprocess: its peak RSS grows far less than that."""
    rng = np.random.default_rng(0)
    block = "".join(f"{a:.12f},{b:.12f}\n" for a, b in rng.random((32_768, 2))).encode()  # ~0.9 MB
    source = tmp_path / "big.csv"
    with source.open("wb") as fh:
        for _ in range(200 * 1024 * 1024 // len(block)):
            fh.write(block)
    size = source.stat().st_size
    rows = size // len(block) * 32_768
    model_dir = make_model_dir(tmp_path / "model", INFERENCE_OK)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")}
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mainsail.cli", "up", "--port", str(port), "--home",
                             str(tmp_path / "home")], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(url + "/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        kw: dict[str, Any] = {"endpoint_url": url, "region_name": REGION, "aws_access_key_id": "x",
                              "aws_secret_access_key": "x"}
        sm, s3 = boto3.client("sagemaker", **kw), boto3.client("s3", **kw)
        s3.create_bucket(Bucket="big")
        s3.upload_file(str(source), "big", "in/big.csv",
                       Config=TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024))
        sm.create_model(ModelName="lin", ExecutionRoleArn=ROLE, PrimaryContainer={
            "Image": IMAGE, "ModelDataUrl": f"file://{model_dir}"})
        try:  # reset the peak so that the upload does not count (Linux >= 4.0)
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        except OSError:
            pass
        baseline = _hwm_kb(proc.pid)
        started = time.monotonic()
        sm.create_transform_job(
            # 1 request per instance x 2 instances: 2 payloads of 6 MiB in flight
            TransformJobName="big", ModelName="lin", BatchStrategy="MultiRecord", MaxConcurrentTransforms=1,
            TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://big/in/"}},
                            "ContentType": "text/csv", "SplitType": "Line"},
            TransformOutput={"S3OutputPath": "s3://big/out", "AssembleWith": "Line", "Accept": "text/csv"},
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 2})
        sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName="big", WaiterConfig=WAIT)
        elapsed = time.monotonic() - started
        desc = sm.describe_transform_job(TransformJobName="big")
        assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
        growth_mb = (_hwm_kb(proc.pid) - baseline) / 1024
        head = s3.head_object(Bucket="big", Key="out/big.csv.out")
        print(f"\n{size / 1e6:.0f} MB, {rows} rows in {elapsed:.1f} s; output {head['ContentLength'] / 1e6:.0f} MB; "
              f"control-plane peak RSS growth {growth_mb:.1f} MB (baseline {baseline / 1024:.0f} MB)")
        assert growth_mb < 80
        tail = s3.get_object(Bucket="big", Key="out/big.csv.out", Range="bytes=-200")["Body"].read()
        assert tail.endswith(b"\n")
        first = s3.get_object(Bucket="big", Key="out/big.csv.out", Range="bytes=0-100")["Body"].read()
        assert first.startswith(b"[") or first[:1].isdigit() or first[:1] == b"-"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def _job_record(home: Path, name: str) -> dict[str, Any]:
    store = SQLiteStore(home / "state.db")
    try:
        record = store.get(TRANSFORM_JOB, name)
    finally:
        store.close()
    assert record is not None
    return record


def _wait_log(log: Path, line: tuple[int, int], count: int, up: UpProcess) -> None:
    deadline = time.monotonic() + 90
    while not (log.exists() and _log(log).count(line) >= count):
        assert time.monotonic() < deadline, up.log_text()
        time.sleep(0.1)


def test_restart_resumes_an_interrupted_job(tmp_path: Path) -> None:
    """A job interrupted by a stop, then by a crash, of `mainsail up` goes on after each restart,
    redoing only the inputs whose output was not complete."""
    home, log, gate = tmp_path / "home", tmp_path / "requests.log", tmp_path / "gate"
    model_dir = make_model_dir(tmp_path / "model", SCRIPT)
    up = UpProcess(home)
    try:
        sm, s3 = up.client("sagemaker"), up.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        # one request per file, one at a time: a (4 bytes) is done when b (8 bytes, gated) arrives
        for key, body in (("a.csv", b"1,0\n"), ("b.csv", b"9,9\n1,1\n"), ("c.csv", b"0,1\n0,1\n0,1\n")):
            s3.put_object(Bucket=BUCKET, Key=f"in/{key}", Body=body)
        sm.create_model(ModelName="lin", ExecutionRoleArn=ROLE, PrimaryContainer={
            "Image": IMAGE, "ModelDataUrl": f"file://{model_dir}"})
        _job(sm, "resume", f"s3://{BUCKET}/in/", f"s3://{BUCKET}/out", split="None", strategy=None,
             env={"BATCH_LOG": str(log), "GATE": str(gate)}, wait=False, MaxConcurrentTransforms=1)
        _wait_log(log, (2, 8), 1, up)
        started = sm.describe_transform_job(TransformJobName="resume")["TransformStartTime"]
    finally:
        assert up.stop() == 0  # SIGTERM: the job is interrupted, not failed
    record = _job_record(home, "resume")
    assert record["TransformJobStatus"] == "InProgress" and record["Instances"] == []

    up = UpProcess(home)
    try:
        _wait_log(log, (2, 8), 2, up)  # resumed: b is asked again, a is not
        pids = [item["pid"] for item in _job_record(home, "resume")["Instances"]]
        assert pids
    finally:
        up.stop(signal.SIGKILL)  # a crash this time
    gate.write_text("")

    up = UpProcess(home)
    try:
        sm, s3 = up.client("sagemaker"), up.client("s3")
        sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName="resume", WaiterConfig=WAIT)
        desc = sm.describe_transform_job(TransformJobName="resume")
        assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
        assert desc["TransformStartTime"] == started
        assert _get(s3, "out/a.csv.out") == b"2\n"
        assert _get(s3, "out/b.csv.out") == b"45\n5\n"
        assert _get(s3, "out/c.csv.out") == b"3\n3\n3\n"
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"])
        assert keys == ["out/a.csv.out", "out/b.csv.out", "out/c.csv.out"]
        assert sorted(_log(log)) == [(1, 4), (2, 8), (2, 8), (2, 8), (3, 12)]  # a and c once each
        for pid in pids:  # the crashed control plane's instance was stopped
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
    finally:
        up.stop()


def test_each_instance_runs_the_instance_types_workers(plane: TransformPlane, tmp_path: Path) -> None:
    """An ml.m5.large has 2 vCPUs: its container runs 2 workers (this host's cores at most), unless
    the job's environment names them (SAGEMAKER_MODEL_SERVER_WORKERS)."""
    sm, s3 = plane.client("sagemaker"), plane.client("s3")
    s3.put_object(Bucket=BUCKET, Key="workers/in.csv", Body=b"1,2\n3,4\n")
    expected = {"workers-default": min(2, os.cpu_count() or 1), "workers-named": 1}
    for name, count in expected.items():
        env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"} if name == "workers-named" else None
        desc = _job(sm, name, f"s3://{BUCKET}/workers/in.csv", f"s3://{BUCKET}/{name}-out", env=env)
        assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
        assert _get(s3, f"{name}-out/in.csv.out") == b"8\n18\n"
        (log,) = (plane.settings.home / "logs" / f"transform-{name}").glob("transform-0-*.log")
        assert f"with {count} worker(s)" in log.read_text(), log.read_text()[-2000:]
