"""Faults survived, end to end against the real `mainsail up` (its own process) under a bounded loopback load:

- an instance SIGKILLed under load is replaced, and fewer than 0.1% of the requests fail (only those in
  flight to it when it died; the rest wait for, or go to, the replacement); asynchronous requests lose
  nothing (one whose instance died under it runs again on the replacement);
- `mainsail up` itself SIGKILLed under load and started again: every endpoint serves again, every
  asynchronous request it acknowledged is answered, every S3 object it acknowledged is there and whole,
  none is half-written, and SQLite's integrity check is clean;
- a full disk (``MAINSAIL_FAULT_DISK_FULL``, the storage layer's fault-injection seam: ``mainsail.faults``)
  fails the write with the reason, and leaves nothing partial visible.

Each prints its figures (``-s``); docs/reliability.md has them."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.control.helpers import IMAGE, ROLE, WAIT, UpProcess, make_model_dir, s3_object

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os, time
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def input_fn(body, content_type):
    rows = [[float(x) for x in line.split(",")] for line in body.strip().splitlines()]
    if rows[0][0] == 7:
        time.sleep(0.5)
    return rows

def output_fn(prediction, accept):
    if prediction[0] > 1000:  # a large answer: 800 kB
        return b"9" * 800_000
    return json.dumps([float(p) for p in prediction])
"""


def _endpoint(up: UpProcess, name: str, model_dir: Path, *, async_out: str | None = None, count: int = 1) -> None:
    sm = up.client("sagemaker")
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"file://{model_dir}"})
    extra: dict[str, Any] = {}
    if async_out:
        extra["AsyncInferenceConfig"] = {
            "OutputConfig": {"S3OutputPath": f"{async_out}/results/", "S3FailurePath": f"{async_out}/failures/"},
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2}}
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": count,
        "InstanceType": "ml.m5.large"}], **extra)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)


def _instance_pids(home: Path) -> set[int]:
    return {int(json.loads(p.read_text())["pid"]) for p in (home / "instances").glob("*.json")}


class Load:
    """``workers`` threads posting one CSV record each to the runtime API until stopped (or ``limit`` s)."""

    def __init__(self, url: str, endpoint: str, workers: int = 4, limit: float = 90) -> None:
        self.url = f"{url}/endpoints/{endpoint}/invocations"
        self.ok = 0
        self.failed: list[str] = []
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + limit
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                try:
                    r = client.post(self.url, content=b"1,0", headers={"Content-Type": "text/csv"})
                    good, why = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    good, why = False, repr(exc)
                with self.lock:
                    if good:
                        self.ok += 1
                    else:
                        self.failed.append(why)

    @property
    def total(self) -> int:
        return self.ok + len(self.failed)

    def until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"load: {self.ok} ok, {len(self.failed)} failed"
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(35)


def test_an_instance_killed_under_load_is_replaced_and_few_requests_fail(tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = UpProcess(home)
    try:
        _endpoint(up, "rt", make_model_dir(tmp_path / "m", SCRIPT))
        (pid,) = _instance_pids(home)
        load = Load(up.url, "rt")
        try:
            load.until(lambda: load.ok >= 500, 60)
            before = load.total
            killed = time.monotonic()
            os.killpg(pid, signal.SIGKILL)
            load.until(lambda: _instance_pids(home) - {pid} != set(), 60)
            load.until(lambda: load.total >= before + 200, 60)  # served by the replacement
            replaced = time.monotonic() - killed
            load.until(lambda: load.total >= 5000, 90)
        finally:
            load.stop()
        print(f"\ninstance SIGKILL: {load.total} requests, {len(load.failed)} failed "
              f"({100 * len(load.failed) / load.total:.3f} %), replacement serving after {replaced:.1f} s")
        assert len(load.failed) < 0.001 * load.total, load.failed
        assert all(f.startswith("424") for f in load.failed), load.failed  # ModelError, never a 500
    finally:
        assert up.stop() == 0, up.log_text()


def test_async_requests_survive_their_instance_being_killed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = UpProcess(home)
    try:
        s3, rt = up.client("s3"), up.client("sagemaker-runtime")
        for bucket in ("in", "out"):
            s3.create_bucket(Bucket=f"async-{bucket}")
        _endpoint(up, "aq", make_model_dir(tmp_path / "m", SCRIPT), async_out="s3://async-out")
        (pid,) = _instance_pids(home)
        s3.put_object(Bucket="async-in", Key="slow.csv", Body=b"7,0\n")
        answers = [rt.invoke_endpoint_async(EndpointName="aq", InputLocation="s3://async-in/slow.csv",
                                            ContentType="text/csv") for _ in range(8)]
        time.sleep(0.3)  # two are running (0.5 s each), six queued
        os.killpg(pid, signal.SIGKILL)
        for answer in answers:
            assert json.loads(s3_object(s3, answer["OutputLocation"], timeout=90)) == pytest.approx([14.0])
        failures = s3.list_objects_v2(Bucket="async-out", Prefix="failures/").get("KeyCount", 0)
        assert failures == 0
        assert "its instance went away" in up.log_text(200_000)  # the running ones were tried again
    finally:
        assert up.stop() == 0, up.log_text()


def test_mainsail_up_killed_under_load_comes_back_whole(tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = UpProcess(home)
    acked: dict[str, str] = {}  # S3 key -> md5 of what a PutObject that answered 200 stored
    tried: dict[str, str] = {}
    stop = threading.Event()

    def put_objects() -> None:
        s3 = up.client("s3")
        for i in range(10_000):
            if stop.is_set():
                return
            body = hashlib.sha256(str(i).encode()).digest() * (2048 + 97 * i % 4096)  # 64 kB to 200 kB
            key = f"obj-{i:05d}"
            tried[key] = hashlib.md5(body).hexdigest()
            try:
                s3.put_object(Bucket="data", Key=key, Body=body)
            except Exception:
                return  # the control plane is gone
            acked[key] = tried[key]

    try:
        s3, rt = up.client("s3"), up.client("sagemaker-runtime")
        for bucket in ("data", "async-in", "async-out"):
            s3.create_bucket(Bucket=bucket)
        model_dir = make_model_dir(tmp_path / "m", SCRIPT)
        _endpoint(up, "rt", model_dir)
        _endpoint(up, "aq", model_dir, async_out="s3://async-out")
        s3.put_object(Bucket="async-in", Key="slow.csv", Body=b"7,0\n")
        answers = [rt.invoke_endpoint_async(EndpointName="aq", InputLocation="s3://async-in/slow.csv",
                                            ContentType="text/csv") for _ in range(10)]
        writer = threading.Thread(target=put_objects, daemon=True)
        writer.start()
        load = Load(up.url, "rt", workers=2)
        load.until(lambda: len(acked) >= 20 and load.ok >= 200, 60)
        up.stop(signal.SIGKILL)  # in the middle of S3 writes, invocations and async requests
        stop.set()
        load.stop()
        writer.join(30)
        print(f"\nmainsail up SIGKILL: {len(acked)} objects acknowledged, {len(tried)} tried; "
              f"{load.ok} invocations answered, {len(load.failed)} cut by the kill")
        started = time.monotonic()
        up = UpProcess(home, port=up.port)
        sm = up.client("sagemaker")
        for name in ("rt", "aq"):
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        answer = rt.invoke_endpoint(EndpointName="rt", ContentType="text/csv", Body="1,0")["Body"].read()
        assert json.loads(answer) == pytest.approx([2.0])
        print(f"serving again {time.monotonic() - started:.1f} s after the restart began")
        for answer in answers:  # every acknowledged async request is answered
            assert json.loads(s3_object(s3, answer["OutputLocation"], timeout=90)) == pytest.approx([14.0])
        listed = {o["Key"]: o["ETag"].strip('"') for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket="data") for o in page.get("Contents", [])}
        for key, md5 in acked.items():  # nothing acknowledged is lost
            assert listed.get(key) == md5, key
        for key, etag in listed.items():  # nothing half-written: what is there is what was sent, whole
            body = s3.get_object(Bucket="data", Key=key)["Body"].read()
            assert hashlib.md5(body).hexdigest() == etag == tried[key], key
    finally:
        stop.set()
        assert up.stop() == 0, up.log_text()
    with sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_full_disk_fails_the_write_with_its_reason_and_leaves_nothing_partial(tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = UpProcess(home, env={"MAINSAIL_FAULT_DISK_FULL": str(400_000)})  # 400 kB of room
    try:
        s3, rt = up.client("s3"), up.client("sagemaker-runtime")
        for bucket in ("data", "async-in", "async-out"):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="data", Key="small", Body=b"s" * 1000)
        with pytest.raises(ClientError) as refused:
            s3.put_object(Bucket="data", Key="big", Body=b"b" * 1_000_000)
        error = refused.value.response["Error"]
        assert error["Code"] == "InsufficientStorage" and "No space left on device" in error["Message"]
        upload = s3.create_multipart_upload(Bucket="data", Key="parts")["UploadId"]
        with pytest.raises(ClientError, match="InsufficientStorage"):
            s3.upload_part(Bucket="data", Key="parts", UploadId=upload, PartNumber=1, Body=b"p" * 600_000)
        s3.abort_multipart_upload(Bucket="data", Key="parts", UploadId=upload)
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="data")["Contents"]] == ["small"]
        assert s3.get_object(Bucket="data", Key="small")["Body"].read() == b"s" * 1000
        # an async result that does not fit: no output, and the failure says why
        _endpoint(up, "aq", make_model_dir(tmp_path / "m", SCRIPT), async_out="s3://async-out")
        s3.put_object(Bucket="async-in", Key="big.csv", Body=b"1000,0\n")
        answer = rt.invoke_endpoint_async(EndpointName="aq", InputLocation="s3://async-in/big.csv",
                                          ContentType="text/csv")
        reason = s3_object(s3, answer["FailureLocation"], timeout=60).decode()
        assert "Could not write the result" in reason and "No space left on device" in reason, reason
        with pytest.raises(ClientError, match="NoSuchKey|404"):
            s3.get_object(Bucket="async-out", Key=answer["OutputLocation"].split("/", 3)[3])
        assert not [p for p in (home / "s3" / "tmp").iterdir() if p.suffix == ".part"]  # nothing left behind
    finally:
        assert up.stop() == 0, up.log_text()
