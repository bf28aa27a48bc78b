"""The signature gate of ``mainsail up --credentials`` refuses a body too large to hash after reading it
to its end (``mainsail.drain``), so a client still sending reads the refusal instead of a broken pipe:
signed requests sent with Python's ``urllib`` (it sends ``Connection: close``) and on a keep-alive
connection, to the control plane under a real uvicorn over the in-memory :class:`tests.fakes.FakeBackend`."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mainsail.gateway.auth import MAX_API_BODY
from mainsail.routing.responses import MAX_PAYLOAD
from tests.auth.signing import sign
from tests.bodies import BIG, urllib_post
from tests.control.helpers import Plane
from tests.fakes import FakeBackend

KEY, SECRET = "AKIAADMIN00000000001", "admin-secret"
#: the gate reads up to its bound, then refuses: what is left must outgrow the sockets' buffers
#: (a few MB on loopback) for a client to be still sending when an early close resets the connection
BEYOND = 16 * 1024 * 1024
LIST_ENDPOINTS = {"X-Amz-Target": "SageMaker.ListEndpoints", "Content-Type": "application/x-amz-json-1.1"}


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plane]:
    monkeypatch.setenv("MAINSAIL_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "credentials").write_text(f"[admin]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
    with Plane(tmp_path / "home", backend=FakeBackend(), credentials=tmp_path / "credentials") as p:
        yield p


def signed_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    return urllib_post(url, body, sign("POST", url, key=KEY, secret=SECRET, service="sagemaker",
                                       headers=headers, body=body))


def test_urllib_reads_the_gates_refusals_and_the_plane_serves_on(plane: Plane) -> None:
    status, headers, body = signed_post(plane.url + "/endpoints/any/invocations", b"x" * (MAX_PAYLOAD + BEYOND),
                                        {"Content-Type": "text/plain"})
    assert (status, headers["x-amzn-errortype"]) == (400, "ValidationError")
    assert json.loads(body) == {"message": "Request payload size exceeds the limit of 6291456 bytes (6 MB)."}

    status, _, body = signed_post(plane.url + "/", b"{" + b" " * (MAX_API_BODY + BEYOND) + b"}", LIST_ENDPOINTS)
    assert (status, json.loads(body)) == (413, {"__type": "SerializationException",
                                                "Message": "The request body is too large."})
    assert signed_post(plane.url + "/", b"{}", LIST_ENDPOINTS)[::2] == (200, b'{"Endpoints": []}')


def test_a_keep_alive_connection_carries_the_next_signed_request(plane: Plane) -> None:
    url = plane.url + "/endpoints/any/invocations"
    conn = http.client.HTTPConnection("127.0.0.1", plane.port, timeout=60)
    try:
        conn.request("POST", "/endpoints/any/invocations", body=BIG,
                     headers=sign("POST", url, key=KEY, secret=SECRET, service="sagemaker", body=BIG))
        refused = conn.getresponse()
        assert (refused.status, refused.getheader("connection")) == (400, None)
        refused.read()
        sock = conn.sock
        conn.request("POST", "/", body=b"{}",
                     headers=sign("POST", plane.url + "/", key=KEY, secret=SECRET, service="sagemaker",
                                  headers=LIST_ENDPOINTS, body=b"{}"))
        listed = conn.getresponse()
        assert (listed.status, listed.read(), conn.sock is sock) == (200, b'{"Endpoints": []}', True)
    finally:
        conn.close()
