"""Streamed answers from ``mainsail serve``: a script returns a generator (sync or async) and each item
is sent as it is produced, over a chunked HTTP response read here with httpx."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import httpx
import pytest

from mainsail.handlers.streaming import chunk, is_stream
from tests.conftest import ServerProcess, open_gate_and_wait, write_script

SCRIPT = '''
import asyncio
import json


def model_fn(model_dir):
    return None


def input_fn(body, content_type):
    return json.loads(body)


def predict_fn(request, model):
    if request.get("async"):
        return agen(request)
    return gen(request)


def gen(request):
    try:
        if request.get("fail_first"):
            raise ValueError("nothing to say")
        for i in range(request["n"]):
            if i == 1 and request.get("gate"):
                with open(request["gate"]) as gate:  # a FIFO: blocks until the test has read the first part
                    gate.read()
            yield {"token": i}
        if request.get("fail"):
            raise RuntimeError("the generator broke")
    finally:
        if request.get("closed"):
            with open(request["closed"], "w") as f:
                f.write("closed")


async def agen(request):
    for i in range(request["n"]):
        await asyncio.sleep(0)
        yield {"token": i}


def output_fn(item, accept):
    return json.dumps(item) + "\\n", "application/jsonlines"
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("streaming")
    write_script(root, textwrap.dedent(SCRIPT))
    home = root / "home"
    home.mkdir()
    with ServerProcess([str(root), "--workers", "1"], home=home) as started:
        yield started


def lines(text: str) -> list[dict[str, int]]:
    return [json.loads(line) for line in text.splitlines()]


def post_stream(server: ServerProcess, request: dict[str, object]) -> httpx.Response:
    return httpx.post(server.url + "/invocations", content=json.dumps(request),
                      headers={"Content-Type": "application/json"}, timeout=30)


def test_predict_fn_items_each_go_through_output_fn(server: ServerProcess) -> None:
    answer = post_stream(server, {"n": 4})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/jsonlines"
    assert "content-length" not in answer.headers and answer.headers["transfer-encoding"] == "chunked"
    assert lines(answer.text) == [{"token": i} for i in range(4)]
    assert lines(post_stream(server, {"n": 3, "async": True}).text) == [{"token": i} for i in range(3)]
    empty = post_stream(server, {"n": 0})
    assert empty.status_code == 200 and empty.content == b""


def test_the_first_part_is_sent_before_the_generator_finishes(server: ServerProcess, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    with httpx.stream("POST", server.url + "/invocations", content=json.dumps({"n": 3, "gate": str(gate)}),
                      headers={"Content-Type": "application/json"}, timeout=30) as response:
        pieces = response.iter_raw()
        assert json.loads(next(pieces)) == {"token": 0}  # the generator is blocked on the gate now
        with open(gate, "w") as opened:
            opened.write("go")
        assert lines(b"".join(pieces).decode()) == [{"token": 1}, {"token": 2}]


def test_failures_before_and_after_the_first_part(server: ServerProcess) -> None:
    before = post_stream(server, {"n": 2, "fail_first": True})
    assert before.status_code == 500
    assert before.json() == {"error": "ModelError", "message": "ValueError: nothing to say"}
    with pytest.raises(httpx.RemoteProtocolError):  # the chunked body never ends: a broken stream
        post_stream(server, {"n": 2, "fail": True})
    assert lines(post_stream(server, {"n": 1}).text) == [{"token": 0}]  # the worker serves on
    assert "the stream failed after its first chunk: RuntimeError: the generator broke" in server.log()
    assert "Exception in ASGI application" not in server.log()


def test_a_client_that_goes_away_closes_the_generator(server: ServerProcess, tmp_path: Path) -> None:
    gate, closed = tmp_path / "gate", tmp_path / "closed"
    os.mkfifo(gate)
    request = {"n": 1000, "gate": str(gate), "closed": str(closed)}
    with httpx.stream("POST", server.url + "/invocations", content=json.dumps(request),
                      headers={"Content-Type": "application/json"}, timeout=30) as response:
        assert json.loads(next(response.iter_raw())) == {"token": 0}
    # gone; the generator, blocked on the gate, is closed once the gate opens, not run to its end

    assert open_gate_and_wait(gate, closed) == "closed"
    assert lines(post_stream(server, {"n": 2}).text) == [{"token": 0}, {"token": 1}]


def test_what_counts_as_a_stream_and_a_chunk() -> None:
    def gen():  # type: ignore[no-untyped-def]
        yield b"x"

    async def agen():  # type: ignore[no-untyped-def]
        yield b"x"

    assert is_stream(gen()) and is_stream(agen()) and is_stream(iter([b"a"])) and is_stream(map(str, [1]))
    assert not any(is_stream(v) for v in (b"x", "x", [b"x"], (b"x", "t"), {"a": 1}, 3, None))
    assert chunk(b"a") == (b"a", None) and chunk("é") == ("é".encode(), None)
    assert chunk(("a", "text/plain")) == (b"a", "text/plain") and chunk({"a": [1]}) == (b'{"a":[1]}', None)
