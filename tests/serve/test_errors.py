"""Every error the contract names, each followed by a request that succeeds on the same server."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mainsail.handlers.base import Invocation, Reply
from mainsail.handlers.script import ScriptHandler
from tests.conftest import LiveApp, live_app, write_script

SCRIPT = """
    import time
    import numpy as np

    class Model:
        def predict(self, data):
            data = np.asarray(data, dtype=float)
            if data.size and data.flat[0] == 999:
                raise RuntimeError("the model refuses 999")
            if data.size and data.flat[0] == 777:
                time.sleep(2)
            return data.sum(axis=-1)

    def model_fn(model_dir):
        return Model()
"""

GOOD = {"content": b"[[1, 2]]", "headers": {"content-type": "application/json"}}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    model_dir = tmp_path_factory.mktemp("errors")
    script = write_script(model_dir, textwrap.dedent(SCRIPT))
    with live_app(ScriptHandler(script, model_dir), timeout=0.5, max_payload_mb=0.001,
                  predict_threads=2) as live:
        yield live


def assert_error_then_ok(app: LiveApp, status: int, code: str, *, contains: str = "", **request: object) -> None:
    r = app.client.post("/invocations", **request)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == code
    assert contains in body["message"]
    ok = app.client.post("/invocations", **GOOD)  # type: ignore[arg-type]
    assert ok.status_code == 200
    assert ok.json() == [3.0]


def test_unsupported_content_type_is_415(app: LiveApp) -> None:
    assert_error_then_ok(app, 415, "UnsupportedContentType", contains="text/plain",
                         content=b"1,2", headers={"content-type": "text/plain"})


def test_missing_content_type_is_415(app: LiveApp) -> None:
    assert_error_then_ok(app, 415, "UnsupportedContentType", content=b"1,2", headers={})


def test_unsupported_accept_is_415(app: LiveApp) -> None:
    assert_error_then_ok(app, 415, "UnsupportedAccept", contains="application/xml",
                         content=b"[[1]]", headers={"content-type": "application/json",
                                                     "accept": "application/xml"})


def test_invalid_json_is_400_saying_where(app: LiveApp) -> None:
    assert_error_then_ok(app, 400, "BadRequest", contains="line 1, column 5",
                         content=b"[[1,", headers={"content-type": "application/json"})


def test_invalid_utf8_is_400(app: LiveApp) -> None:
    assert_error_then_ok(app, 400, "BadRequest", contains="byte offset 1",
                         content=b"[\xff]", headers={"content-type": "application/json"})


def test_ragged_csv_is_400(app: LiveApp) -> None:
    assert_error_then_ok(app, 400, "BadRequest", contains="Line #2 (got 1 columns instead of 2)",
                         content=b"1,2\n3\n", headers={"content-type": "text/csv"})


def test_body_over_the_limit_is_413(app: LiveApp) -> None:
    assert_error_then_ok(app, 413, "PayloadTooLarge", contains="1048 bytes",
                         content=b"[" + b"1," * 2000 + b"1]", headers={"content-type": "application/json"})


def test_chunked_body_over_the_limit_is_413(app: LiveApp) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b"x" * 100

    assert_error_then_ok(app, 413, "PayloadTooLarge", content=chunks(),
                         headers={"content-type": "application/json"})


def test_a_body_in_several_chunks_is_joined(app: LiveApp) -> None:
    def chunks() -> Iterator[bytes]:
        yield from (b"[[1, ", b"2", b"]]")

    r = app.client.post("/invocations", content=chunks(), headers={"content-type": "application/json"})
    assert (r.status_code, r.json()) == (200, [3.0])


def test_a_client_gone_mid_body_leaves_the_server_serving(app: LiveApp) -> None:
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(app.url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 100\r\n\r\n[[1, 2")
    ok = app.client.post("/invocations", **GOOD)  # type: ignore[arg-type]
    assert (ok.status_code, ok.json()) == (200, [3.0])


def test_handler_exception_is_500_with_the_message(app: LiveApp) -> None:
    assert_error_then_ok(app, 500, "ModelError", contains="RuntimeError: the model refuses 999",
                         content=b"[[999]]", headers={"content-type": "application/json"})


def test_predict_timeout_is_504_and_the_server_keeps_serving(app: LiveApp) -> None:
    assert_error_then_ok(app, 504, "Timeout", contains="0.5 s",
                         content=b"[[777]]", headers={"content-type": "application/json"})


def test_unknown_route_and_method_are_json(app: LiveApp) -> None:
    r = app.client.get("/nope")
    assert (r.status_code, r.json()["error"]) == (404, "NotFound")
    r = app.client.get("/invocations")
    assert (r.status_code, r.json()["error"]) == (405, "MethodNotAllowed")
    assert app.client.post("/invocations", **GOOD).status_code == 200  # type: ignore[arg-type]


class SlowLoading:
    """A toy handler whose load blocks until the test lets it finish."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()

    def load(self) -> None:
        if not self.release.wait(20):
            raise RuntimeError("never released")

    def invoke(self, invocation: Invocation) -> Reply:
        return Reply(b"loaded", "text/plain")


def test_not_loaded_yet_is_503_then_200() -> None:
    handler = SlowLoading()
    with live_app(handler, load=False, load_on_startup=True) as app:
        r = app.client.get("/ping")
        assert r.status_code == 503
        assert r.json()["error"] == "ModelNotReady"
        r = app.client.post("/invocations", content=b"x")
        assert r.status_code == 503
        handler.release.set()
        deadline = time.monotonic() + 10
        while app.client.get("/ping").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert app.client.post("/invocations", content=b"x").text == "loaded"


def test_load_failure_keeps_ping_at_503_with_the_reason(tmp_path: Path) -> None:
    script = write_script(tmp_path, "def model_fn(model_dir):\n    raise OSError('weights are missing')\n")
    with live_app(ScriptHandler(script, tmp_path), load=False, load_on_startup=True) as app:
        deadline = time.monotonic() + 10
        while "weights" not in app.client.get("/ping").text:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = app.client.get("/ping")
        assert r.status_code == 503
        assert "OSError: weights are missing" in r.json()["message"]


def test_execution_parameters(app: LiveApp) -> None:
    assert app.client.get("/execution-parameters").json() == {
        "MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 1,
    }
