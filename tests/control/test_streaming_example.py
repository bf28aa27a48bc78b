"""The streaming example (examples/streaming): a small GPT-2 writing text token by token, served by
``mainsail serve`` and through ``mainsail up``; the streamed text is what the script's own greedy
decoding writes in-process."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.control.helpers import WAIT, Plane

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "streaming"
REQUEST = {"prompt": "hello there", "max_new_tokens": 24}


def load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return load(EXAMPLE / "build.py", "streaming_example_build").build(tmp_path_factory.mktemp("gpt") / "model")


@pytest.fixture(scope="module")
def expected(model_dir: Path) -> list[str]:
    script = load(model_dir / "code" / "inference.py", "streaming_example_inference")
    model, vocab = script.model_fn(str(model_dir))
    return list(script.generate(model, vocab, REQUEST["prompt"], REQUEST["max_new_tokens"]))


@pytest.mark.slow
def test_served_by_mainsail_serve(model_dir: Path, expected: list[str], tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    with ServerProcess([str(model_dir), "--workers", "1"], home=tmp_path / "home") as server, \
            httpx.stream("POST", server.url + "/invocations", content=json.dumps(REQUEST),
                         headers={"Content-Type": "application/json"}, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/plain")
        pieces = [piece.decode() for piece in response.iter_raw()]
    assert "".join(pieces) == "".join(expected) and len(expected) == 24
    assert len(pieces) > 1  # token by token, not one body


@pytest.mark.slow
def test_through_mainsail_up(model_dir: Path, expected: list[str], plane: Plane) -> None:
    from mainsail.client import Endpoint

    sm = plane.client("sagemaker")
    sm.create_model(ModelName="writer", ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                    PrimaryContainer={"Image": "mainsail", "ModelDataUrl": f"file://{model_dir}"})
    sm.create_endpoint_config(EndpointConfigName="writer", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": "writer", "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName="writer", EndpointConfigName="writer")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="writer", WaiterConfig=WAIT)
    answer = plane.client("sagemaker-runtime").invoke_endpoint_with_response_stream(
        EndpointName="writer", ContentType="application/json", Body=json.dumps(REQUEST))
    assert answer["ContentType"].startswith("text/plain")
    parts = [event["PayloadPart"]["Bytes"].decode() for event in answer["Body"]]
    assert "".join(parts) == "".join(expected)
    assert b"".join(Endpoint("writer", url=plane.url).invoke_stream(REQUEST)) == "".join(expected).encode()
