"""InvokeEndpointWithResponseStream through a real ``mainsail up``, read with boto3: the script's
generator relayed as PayloadPart events as it produces them, its failures as the runtime's errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from tests.conftest import open_gate_and_wait
from tests.control.helpers import WAIT, Plane, deploy

STREAMING_SCRIPT = '''
import json


def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    request = json.loads(body)
    if request.get("plain"):
        return "not streamed", "text/plain"
    if request.get("fail_first"):
        raise ValueError("nothing to say")

    def tokens():
        try:
            yield "tok0 "
            if request.get("gate"):
                with open(request["gate"]) as gate:  # a FIFO: blocks until the test has read tok0
                    gate.read()
            for i in range(1, request["n"]):
                yield "tok%d " % i
            if request.get("fail"):
                raise RuntimeError("the generator broke")
        finally:
            if request.get("closed"):
                with open(request["closed"], "w") as f:
                    f.write("closed")

    return tokens(), accept
'''


@pytest.fixture
def streaming(plane: Plane, tmp_path: Path) -> Any:
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(STREAMING_SCRIPT)
    sm = plane.client("sagemaker")
    deploy(sm, "streamer", model_dir)
    sm.get_waiter("endpoint_in_service").wait(EndpointName="streamer", WaiterConfig=WAIT)
    return plane.client("sagemaker-runtime")


def invoke(rt: Any, request: dict[str, Any], **extra: Any) -> Any:
    return rt.invoke_endpoint_with_response_stream(EndpointName="streamer", ContentType="application/json",
                                                   Body=json.dumps(request), **extra)


def parts(response: Any) -> list[bytes]:
    return [event["PayloadPart"]["Bytes"] for event in response["Body"]]


@pytest.mark.slow
def test_the_parts_arrive_as_the_generator_yields_them(streaming: Any, tmp_path: Path) -> None:
    rt = streaming
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    response = invoke(rt, {"n": 4, "gate": str(gate)}, Accept="text/plain")
    assert response["ContentType"].startswith("text/plain")  # as InvokeEndpoint answers it
    assert response["InvokedProductionVariant"] == "AllTraffic"
    events = iter(response["Body"])
    # the first part is here while the generator waits on the gate: nothing was buffered
    assert next(events)["PayloadPart"]["Bytes"] == b"tok0 "
    with open(gate, "w") as opened:  # unblocks the generator
        opened.write("go")
    assert b"".join(e["PayloadPart"]["Bytes"] for e in events) == b"tok1 tok2 tok3 "

    # a container answer that is not streamed is one part
    plain = invoke(rt, {"plain": True})
    assert parts(plain) == [b"not streamed"] and plain["ContentType"].startswith("text/plain")


@pytest.mark.slow
def test_failures_before_and_during_the_stream(streaming: Any, plane: Plane) -> None:
    rt = streaming
    with pytest.raises(ClientError) as before:
        invoke(rt, {"fail_first": True})
    assert before.value.response["Error"]["Code"] == "ModelError"
    assert "nothing to say" in before.value.response["Error"]["Message"]
    assert before.value.response["OriginalStatusCode"] == 500

    response = invoke(rt, {"n": 3, "fail": True})
    received: list[bytes] = []
    with pytest.raises(EventStreamError) as during:
        for event in response["Body"]:
            received.append(event["PayloadPart"]["Bytes"])
    response["Body"].close()
    assert received == [b"tok0 ", b"tok1 ", b"tok2 "]
    assert during.value.response["Error"]["Code"] == "ModelStreamError"
    assert "stopped its response stream" in during.value.response["Error"]["Message"]
    # botocore keeps Code and Message of an exception event; its ErrorCode member is in the raw event
    raw = httpx.post(f"{plane.url}/endpoints/streamer/invocations-response-stream",
                     content=json.dumps({"n": 2, "fail": True}), headers={"Content-Type": "application/json"})
    buffer = EventStreamBuffer()
    buffer.add_data(raw.content)
    messages = list(buffer)
    assert [m.headers[":message-type"] for m in messages] == ["event", "event", "exception"]
    assert messages[-1].headers[":exception-type"] == "ModelStreamError"
    assert json.loads(messages[-1].payload)["ErrorCode"] == "StreamBroken"

    with pytest.raises(ClientError) as missing:
        rt.invoke_endpoint_with_response_stream(EndpointName="nope", Body=b"{}")
    assert missing.value.response["Error"]["Code"] == "ValidationError"
    assert "Endpoint nope" in missing.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as too_big:
        rt.invoke_endpoint_with_response_stream(EndpointName="streamer", Body=b" " * (6 * 1024 * 1024 + 1))
    assert too_big.value.response["Error"]["Code"] == "ValidationError"
    assert "exceeds the limit" in too_big.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as no_variant:
        invoke(rt, {"n": 1}, TargetVariant="Nope")
    assert no_variant.value.response["Error"]["Code"] == "ValidationError"
    assert parts(invoke(rt, {"n": 1}, TargetVariant="AllTraffic")) == [b"tok0 "]
    assert parts(invoke(rt, {"n": 2})) == [b"tok0 ", b"tok1 "]  # the endpoint serves on


@pytest.mark.slow
def test_a_client_that_goes_away_frees_the_instance(streaming: Any, tmp_path: Path) -> None:
    rt = streaming
    gate, closed = tmp_path / "gate2", tmp_path / "closed"
    os.mkfifo(gate)
    response = invoke(rt, {"n": 1000, "gate": str(gate), "closed": str(closed)})
    events = iter(response["Body"])
    assert next(events)["PayloadPart"]["Bytes"] == b"tok0 "
    response["Body"].close()  # the client goes away mid-stream

    assert open_gate_and_wait(gate, closed) == "closed"  # the generator was closed, not run to its 1000 tokens
    started = time.monotonic()
    assert parts(invoke(rt, {"n": 2})) == [b"tok0 ", b"tok1 "]
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_the_python_api_and_the_cli_stream(streaming: Any, plane: Plane, tmp_path: Path) -> None:
    import subprocess
    import sys

    from mainsail.client import Endpoint
    from mainsail.client.errors import MainsailClientError

    endpoint = Endpoint("streamer", url=plane.url)
    assert list(endpoint.invoke_stream({"n": 3})) == [b"tok0 ", b"tok1 ", b"tok2 "]
    parts_seen: list[bytes] = []
    with pytest.raises(MainsailClientError) as failed:
        for part in endpoint.invoke_stream({"n": 2, "fail": True}):
            parts_seen.append(part)
    assert parts_seen == [b"tok0 ", b"tok1 "] and "ModelStreamError" in str(failed.value.code)

    gate = tmp_path / "cli-gate"
    os.mkfifo(gate)
    command = [sys.executable, "-m", "mainsail.cli", "invoke", "streamer", "--stream", "--url", plane.url,
               "--body", json.dumps({"n": 3, "gate": str(gate)})]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.read(5) == b"tok0 "  # printed while the generator waits on the gate
        with open(gate, "w") as opened:
            opened.write("go")
        rest, _ = proc.communicate(timeout=60)
    assert rest == b"tok1 tok2 " and proc.returncode == 0
    broken = subprocess.run([*command[:-2], "--body", json.dumps({"n": 1, "fail": True})], capture_output=True,
                            timeout=60)
    assert broken.returncode != 0 and broken.stdout == b"tok0 " and b"ModelStreamError" in broken.stderr
