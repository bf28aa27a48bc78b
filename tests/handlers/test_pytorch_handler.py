"""The built-in PyTorch handler against the reference handler's own answers on a real model directory."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mainsail.errors import ModelLoadError
from mainsail.handlers import build_handler
from mainsail.handlers.base import Invocation
from mainsail.handlers.pytorch.handler import PyTorchHandler
from mainsail.serve.runtime import ModelRuntime
from tests.conftest import CURSUS_FIXTURE, LiveApp, ServerProcess, live_app

MODEL = CURSUS_FIXTURE / "model"
CASES: list[dict[str, Any]] = json.loads((CURSUS_FIXTURE / "cases.json").read_text())
REFERENCE_KEYS = ["legacy-score", "calibrated-score", "score-percentile"]


@pytest.fixture(scope="module", params=[True, False], ids=["onnx", "pytorch"])
def handler(request: pytest.FixtureRequest) -> PyTorchHandler:
    loaded = PyTorchHandler(MODEL, use_onnx=request.param)
    loaded.load()
    return loaded


def expected_body(case: dict[str, Any]) -> str:
    suffix = ".json" if case["accept"] == "application/json" else ".csv"
    return (CURSUS_FIXTURE / "expected" / f"{case['id']}{suffix}").read_text()


def ask(handler: PyTorchHandler, body: bytes, content_type: str, accept: str) -> bytes:
    return handler.invoke(Invocation(body, content_type, accept)).body


def json_scores(body: bytes | str) -> list[dict[str, str]]:
    return list(json.loads(body)["predictions"])


def csv_rows(body: bytes | str) -> list[list[float]]:
    text = body.decode() if isinstance(body, bytes) else body
    assert text.endswith("\n")
    return [[float(v) for v in line.split(",")] for line in text.splitlines()]


@pytest.mark.parametrize("case", [c for c in CASES if "single" in c["tags"]], ids=lambda c: c["id"])
def test_single_records_match_the_reference_handler(handler: PyTorchHandler, case: dict[str, Any]) -> None:
    body = (CURSUS_FIXTURE / case["request_file"]).read_bytes()
    got = ask(handler, body, case["content_type"], case["accept"])
    if case["accept"] == "application/json":
        (record,) = json_scores(got)
        (want,) = json_scores(expected_body(case))
        assert list(record) == REFERENCE_KEYS + ["output-label"]
        for key in REFERENCE_KEYS:
            assert float(record[key]) == pytest.approx(float(want[key]), abs=1e-5)
        assert record["output-label"] == ("class-1" if float(record["legacy-score"]) > 0.5 else "class-0")
    else:
        np.testing.assert_allclose(csv_rows(got), csv_rows(expected_body(case)), atol=1.01e-4)


@pytest.mark.parametrize("case", [c for c in CASES if "batch" in c["tags"]], ids=lambda c: c["id"])
def test_batched_records_score_as_they_do_alone(handler: PyTorchHandler, case: dict[str, Any]) -> None:
    body = (CURSUS_FIXTURE / case["request_file"]).read_bytes()
    batch = handler.records(body, case["content_type"])
    together = handler.predict_records(batch)
    alone = np.vstack([handler.predict_records([record]) for record in batch])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    got = ask(handler, body, case["content_type"], case["accept"])
    if "quirk-batch-nan" in case["tags"]:
        return  # the reference turns missing numerics into -1.0 in batches; mainsail imputes them
    if case["accept"] == "application/json":
        for record, want in zip(json_scores(got), json_scores(expected_body(case)), strict=True):
            for key in REFERENCE_KEYS:
                assert float(record[key]) == pytest.approx(float(want[key]), abs=1e-5)
    else:
        np.testing.assert_allclose(csv_rows(got), csv_rows(expected_body(case)), atol=1.01e-4)


def test_missing_numerics_in_a_batch_take_the_imputed_value(handler: PyTorchHandler) -> None:
    records = [json.loads(line) for line in (CURSUS_FIXTURE / "requests" / "multi_ndjson_with_null.json").read_text().splitlines() if line.strip()]
    nulls = [r for r in records if any(r.get(f) is None for f in ("num1", "num2", "num3", "num4"))]
    assert nulls
    for record in nulls:
        filled = dict(record)
        for field, value in handler.tabular.impute_values.items():  # type: ignore[union-attr]
            if filled.get(field) is None:
                filled[field] = value
        np.testing.assert_allclose(handler.predict_records([record]), handler.predict_records([filled]), atol=1e-6)


def test_onnx_and_pytorch_paths_agree() -> None:
    onnx, torch_net = PyTorchHandler(MODEL, use_onnx=True), PyTorchHandler(MODEL, use_onnx=False)
    onnx.load()
    torch_net.load()
    for case in CASES:
        body = (CURSUS_FIXTURE / case["request_file"]).read_bytes()
        records = onnx.records(body, case["content_type"])
        np.testing.assert_allclose(onnx.predict_records(records), torch_net.predict_records(records), atol=1e-5)


def test_build_handler_picks_the_pytorch_handler() -> None:
    assert isinstance(build_handler(MODEL, None), PyTorchHandler)


@pytest.fixture(scope="module")
def served() -> Iterator[LiveApp]:
    with live_app(PyTorchHandler(MODEL)) as app:
        yield app


GOOD = (CURSUS_FIXTURE / "requests" / "single_0.json").read_bytes()


@pytest.mark.parametrize(("body", "ctype", "status", "needle"), [
    (b'{"num1": 1, "num2": 2, "num3": 3, "num4": 4, "shiptrack": "", "cat1": "a", "cat2": "b"}',
     "application/json", 400, "dialogue"),
    (b'{"dialogue": "[bom] hi [eom]"}', "application/json", 400, "num1, num2, num3, num4, shiptrack, cat1, cat2"),
    (b"", "application/json", 400, "empty"),
    (b"1,2,3\n", "text/csv", 400, "expected 8 columns"),
    (b'{"dialogue": ', "application/json", 400, "invalid JSON"),
    (b"x", "text/plain", 415, "text/plain"),
])
def test_bad_input_is_a_clear_4xx_and_the_server_goes_on(
        served: LiveApp, body: bytes, ctype: str, status: int, needle: str) -> None:
    r = served.client.post("/invocations", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]
    ok = served.client.post("/invocations", content=GOOD, headers={"content-type": "application/json"})
    assert ok.status_code == 200


def test_wrong_types_still_score(served: LiveApp) -> None:
    record = json.loads(GOOD)
    record.update(num1="not a number", dialogue=12345, shiptrack=None)
    r = served.client.post("/invocations", json=record)
    assert r.status_code == 200, r.text
    assert 0.0 <= float(r.json()["predictions"][0]["legacy-score"]) <= 1.0


def test_missing_hyperparameters_warns_and_uses_default_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    copy = tmp_path / "model"
    shutil.copytree(MODEL, copy)
    (copy / "hyperparameters.json").unlink()
    handler = PyTorchHandler(copy)
    with caplog.at_level(logging.WARNING):
        handler.load()
    assert "hyperparameters.json is missing" in caplog.text
    assert ask(handler, GOOD, "application/json", "application/json").startswith(b'{"predictions"')


def test_a_missing_tokenizer_is_a_clear_load_error(tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(MODEL, copy)
    shutil.rmtree(copy / "tinybert")
    with pytest.raises(ModelLoadError, match="tinybert"):
        ModelRuntime(PyTorchHandler(copy)).load()


def test_mainsail_serve_serves_the_reference_directory(home: Path) -> None:
    with ServerProcess([str(MODEL), "--workers", "1"], home=home) as server:
        case = next(c for c in CASES if c["id"] == "single_long_dialogue_chunks__json")
        body = (CURSUS_FIXTURE / case["request_file"]).read_bytes()
        r = httpx.post(server.url + "/invocations", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        (record,) = r.json()["predictions"]
        (want,) = json_scores(expected_body(case))
        assert float(record["legacy-score"]) == pytest.approx(float(want["legacy-score"]), abs=1e-5)
    assert "pytorch handler: onnx network" in server.log()


def test_a_user_model_class_from_the_model_directory(tmp_path: Path) -> None:
    import torch

    from mainsail.handlers.pytorch.loading import load_model_artifacts

    copy = tmp_path / "model"
    shutil.copytree(MODEL, copy)
    (copy / "model.onnx").unlink()
    artifacts = load_model_artifacts(copy / "model_artifacts.pth")
    artifacts["model_class"] = "my_trimodal"
    artifacts["config"]["model_class"] = "my_trimodal"
    torch.save(artifacts, copy / "model_artifacts.pth")
    hp = json.loads((copy / "hyperparameters.json").read_text())
    hp["model_class"] = "my_trimodal"
    (copy / "hyperparameters.json").write_text(json.dumps(hp))
    with pytest.raises(ModelLoadError, match="my_trimodal.*bimodal_bert"):
        ModelRuntime(PyTorchHandler(copy)).load()
    (copy / "code").mkdir()
    (copy / "code" / "mainsail_models.py").write_text(
        "import torch\n"
        "from mainsail.handlers.pytorch import TrimodalBert\n"
        "class Undecided(TrimodalBert):\n"
        "    def forward(self, batch):\n"
        "        return super().forward(batch) * 0.0\n"
        "def register(registry):\n"
        "    registry.register('my_trimodal', Undecided)\n"
    )
    handler = PyTorchHandler(copy)
    handler.load()
    (record,) = json_scores(ask(handler, GOOD, "application/json", "application/json"))
    assert float(record["legacy-score"]) == 0.5
