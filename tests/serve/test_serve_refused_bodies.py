"""A body refused for its size is read to its end before the 413 is sent (``mainsail.drain``), so the
client reads the 413 instead of a broken pipe: the real ``mainsail serve`` on loopback, with Python's
``urllib`` (it sends ``Connection: close``: uvicorn closes right after the answer), a keep-alive
connection, and clients the server does not wait for."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mainsail.drain import DRAIN_LIMIT
from tests.bodies import BIG, head_only, keep_alive_posts, urllib_post
from tests.conftest import ServerProcess, write_script

pytestmark = pytest.mark.slow

LENGTH_SCRIPT = """
def model_fn(model_dir):
    return None

def transform_fn(model, body, content_type, accept):
    return str(len(body)), "text/plain"
"""

TOO_LARGE = {"error": "PayloadTooLarge", "message": "request body exceeds the limit of 6291456 bytes (6 MB)"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("refused")
    write_script(root / "model", LENGTH_SCRIPT)
    (root / "home").mkdir()
    with ServerProcess([str(root / "model"), "--workers", "1"], home=root / "home") as running:
        yield running


def test_urllib_reads_the_413_and_the_server_serves_on(server: ServerProcess) -> None:
    status, _, body = urllib_post(server.url + "/invocations", BIG)
    assert status == 413
    assert json.loads(body) == TOO_LARGE
    assert urllib_post(server.url + "/invocations", b"abc")[::2] == (200, b"3")
    # a keep-alive client's connection carries its next request
    first, refusal, second, answer, same_connection = keep_alive_posts(server.url + "/invocations", BIG, b"abcd")
    assert (first, json.loads(refusal), second, answer, same_connection) == (413, TOO_LARGE, 200, b"4", True)


def test_a_body_declared_beyond_the_drain_bound_is_answered_at_once_then_closed(server: ServerProcess) -> None:
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n" % (DRAIN_LIMIT + 1))
    answer, seconds = head_only(server.port, head)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"\r\nconnection: close\r\n" in rest.lower()
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1]) == TOO_LARGE
    assert seconds < 10
    assert urllib_post(server.url + "/invocations", b"abc")[::2] == (200, b"3")


def test_a_client_waiting_for_100_continue_is_answered_at_once_then_closed(server: ServerProcess) -> None:
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BIG))
    answer, _ = head_only(server.port, head)
    assert answer.startswith(b"HTTP/1.1 413 ")  # not "100 Continue": the body is not wanted
    assert b"\r\nconnection: close\r\n" in answer.lower()


def test_the_multi_model_container_drains_too(tmp_path: Path, home: Path) -> None:
    with ServerProcess(["--multi-model", str(tmp_path / "models")], home=home) as server:
        status, _, body = urllib_post(server.url + "/models", b"{" + b" " * (2 << 20) + b"}",
                                      {"Content-Type": "application/json"})
        assert status == 413  # a load request's body is at most 1 MB
        assert json.loads(body)["error"] == "PayloadTooLarge"
        assert urllib_post(server.url + "/models", b"{}")[0] == 400
