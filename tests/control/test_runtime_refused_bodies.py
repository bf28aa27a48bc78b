"""The runtime API refuses a body over 6 MB after reading it to its end (``mainsail.drain``), so the
client reads the refusal instead of a broken pipe: the control plane as ``mainsail up`` assembles it,
under a real uvicorn, over the in-memory :class:`tests.fakes.FakeBackend`, with Python's ``urllib`` (it
sends ``Connection: close``), a keep-alive connection, and a body declared beyond the drain bound."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mainsail.drain import DRAIN_LIMIT
from tests.bodies import BIG, head_only, keep_alive_posts, urllib_post
from tests.control.helpers import IMAGE, ROLE, WAIT, Plane
from tests.fakes import FakeBackend, FakeModel

TOO_LARGE = {"message": "Request payload size exceeds the limit of 6291456 bytes (6 MB)."}


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plane]:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path))
    with Plane(tmp_path, backend=FakeBackend(), interval=0.02) as p:
        backend: FakeBackend = p.backend
        backend.models["file:///models/echo"] = FakeModel()
        sm = p.client("sagemaker")
        sm.create_model(ModelName="echo", ExecutionRoleArn=ROLE,
                        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": "file:///models/echo"})
        sm.create_endpoint_config(EndpointConfigName="echo", ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "echo", "InstanceType": "ml.m5.large",
             "InitialInstanceCount": 1}])
        sm.create_endpoint(EndpointName="echo", EndpointConfigName="echo")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="echo", WaiterConfig=WAIT)
        yield p


def test_urllib_reads_the_refusal_and_the_endpoint_serves_on(plane: Plane) -> None:
    url = plane.url + "/endpoints/echo/invocations"
    status, headers, body = urllib_post(url, BIG, {"Content-Type": "text/plain"})
    assert (status, headers["x-amzn-errortype"], json.loads(body)) == (400, "ValidationError", TOO_LARGE)
    status, _, body = urllib_post(url, b"small", {"Content-Type": "text/plain"})
    assert status == 200 and json.loads(body)["body"] == "small"
    # a keep-alive client's connection carries its next request
    first, refusal, second, answer, same_connection = keep_alive_posts(url, BIG, b"again")
    assert (first, json.loads(refusal), second, same_connection) == (400, TOO_LARGE, 200, True)
    assert json.loads(answer)["body"] == "again"


def test_a_body_declared_beyond_the_drain_bound_is_answered_at_once_then_closed(plane: Plane) -> None:
    head = (b"POST /endpoints/echo/invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n" % (DRAIN_LIMIT + 1))
    answer, seconds = head_only(plane.port, head)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nconnection: close\r\n" in rest.lower()
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1]) == TOO_LARGE
    assert seconds < 10
