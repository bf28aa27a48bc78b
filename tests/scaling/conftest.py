"""Fixtures of the Application Auto Scaling tests: a control plane assembled as ``mainsail up`` assembles
it (:class:`tests.control.helpers.Plane`: app, router, reconciler, local backend, or the in-memory one for
API-only tests) with CloudWatch's clock 60 times faster than real time (a 300 s cooldown lasts 5 s), one
small model deployed on it, and a bounded loopback load."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.control.helpers import WAIT, Plane, deploy, make_model_dir
from tests.fakes import FakeBackend, FakeModel

DIMENSION = "sagemaker:variant:DesiredInstanceCount"
ENDPOINT = "scaled"
RESOURCE = f"endpoint/{ENDPOINT}/variant/AllTraffic"
#: a model that takes a little while to answer, so that requests are in flight when an instance drains
INFERENCE_SLOW = """
import os
import time
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def predict_fn(data, model):
    time.sleep(1.0 if data[0][0] == 99 else 0.02)  # 99: a long request
    return model.predict(data)
"""


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plane]:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    monkeypatch.setenv("MAINSAIL_METRICS_TIME_SCALE", "60")
    monkeypatch.setenv("MAINSAIL_DESCRIBE_SETTLE_SECONDS", "0")  # DescribeEndpoint shows the counts move
    with Plane(tmp_path) as p:
        yield p


@pytest.fixture
def fake_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plane]:
    """A plane whose instances are in memory (:class:`tests.fakes.FakeBackend`), ``ENDPOINT`` InService on it:
    for what needs no model process (the API, scheduled actions)."""
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    monkeypatch.setenv("MAINSAIL_METRICS_TIME_SCALE", "60")
    monkeypatch.setenv("MAINSAIL_DESCRIBE_SETTLE_SECONDS", "0")
    with Plane(tmp_path, backend=FakeBackend(), interval=0.02) as p:
        p.backend.models["file:///models/fake"] = FakeModel()
        sm = p.client("sagemaker")
        deploy(sm, ENDPOINT, tmp_path, url="file:///models/fake")
        sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig=WAIT)
        yield p


@pytest.fixture
def endpoint(plane: Plane, tmp_path: Path) -> str:
    """``ENDPOINT`` (one AllTraffic instance of a small model) InService on ``plane``."""
    sm = plane.client("sagemaker")
    deploy(sm, ENDPOINT, make_model_dir(tmp_path / "model", INFERENCE_SLOW))
    sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig=WAIT)
    return ENDPOINT


def counts(sm: Any, name: str = ENDPOINT) -> tuple[str, int, int]:
    """(EndpointStatus, DesiredInstanceCount, CurrentInstanceCount) of the endpoint's first variant."""
    desc = sm.describe_endpoint(EndpointName=name)
    pv = desc["ProductionVariants"][0]
    return desc["EndpointStatus"], int(pv["DesiredInstanceCount"]), int(pv["CurrentInstanceCount"])


def wait_for(sm: Any, wanted: int, timeout: float = 30.0) -> list[tuple[str, int, int]]:
    """Poll DescribeEndpoint until the variant runs ``wanted`` instances, InService; every state seen."""
    seen: list[tuple[str, int, int]] = []
    deadline = time.monotonic() + timeout
    while True:
        state = counts(sm)
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == ("InService", wanted, wanted):
            return seen
        assert time.monotonic() < deadline, f"never reached {wanted} instances: {seen}"
        time.sleep(0.1)


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


class Load:
    """``threads`` threads invoking the endpoint, each at most ``max_requests`` times and about ``rate`` times
    a second, until :meth:`stop`; failed requests are kept."""

    def __init__(self, plane: Plane, *, threads: int = 2, rate: float = 20.0, max_requests: int = 3000) -> None:
        self.plane = plane
        self.rate = rate
        self.max_requests = max_requests
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        rt = self.plane.client("sagemaker-runtime")
        for _ in range(self.max_requests):
            if self._stop.is_set():
                return
            try:
                out = rt.invoke_endpoint(EndpointName=ENDPOINT, ContentType="application/json",
                                         Body=json.dumps([[1, 0]]))
                json.loads(out["Body"].read())
                with self._lock:
                    self.ok += 1
            except Exception as exc:  # every failure is the test's finding
                with self._lock:
                    self.failures.append(repr(exc))
            self._stop.wait(1.0 / self.rate)


def settled_activities(aas: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """DescribeScalingActivities (newest first) once none is InProgress any more."""
    deadline = time.monotonic() + timeout
    while True:
        activities: list[dict[str, Any]] = aas.describe_scaling_activities(
            ServiceNamespace="sagemaker", ResourceId=RESOURCE)["ScalingActivities"]
        if all(a["StatusCode"] != "InProgress" for a in activities):
            return activities
        assert time.monotonic() < deadline, activities
        time.sleep(0.1)
