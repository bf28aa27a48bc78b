"""The bimodal demo model (examples/bimodal_demo.py): reference layout, served by the built-in PyTorch handler.

The scores are checked against a forward pass of a network built here from the directory's own files
(encoder config, hyperparameters, state_dict), on inputs preprocessed here with the text pipelines;
then every request format over real HTTP, and multiclass calibration.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from examples.bimodal_demo import FEATURE_COLUMNS, TAB_FIELDS, TEXT_FIELD, build_bimodal_model, sample_records
from mainsail.features.calibration import calibrate
from mainsail.handlers import build_handler
from mainsail.handlers.base import Invocation
from mainsail.handlers.pytorch.handler import PyTorchHandler
from tests.conftest import CURSUS_FIXTURE, LiveApp, ServerProcess, live_app

BINARY_KEYS = ["legacy-score", "calibrated-score", "score-percentile", "output-label"]
JSON = "application/json"


@pytest.fixture(scope="module")
def binary_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bimodal_model(tmp_path_factory.mktemp("bimodal") / "model", size="tiny", seed=0)


@pytest.fixture(scope="module")
def multiclass_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bimodal_model(tmp_path_factory.mktemp("bimodal3") / "model", size="tiny", seed=1, num_classes=3)


@pytest.fixture(scope="module")
def handler(binary_dir: Path) -> PyTorchHandler:
    loaded = PyTorchHandler(binary_dir, use_onnx=False)
    loaded.load()
    return loaded


def test_the_directory_has_the_reference_layout(binary_dir: Path) -> None:
    from torch.torch_version import TorchVersion
    from transformers import BertConfig

    for name in ("model.pth", "model_artifacts.pth", "hyperparameters.json", "feature_columns.txt",
                 "impute_dict.pkl", "risk_table_map.pkl", "calibration/calibration_model.pkl",
                 "tokenizer/config.json", "tokenizer/tokenizer.json", "tokenizer/vocab.txt"):
        assert (binary_dir / name).is_file(), name
    hp = json.loads((binary_dir / "hyperparameters.json").read_text())
    assert hp["model_class"] == "bimodal_bert" and hp["tokenizer"] == "tokenizer" and hp["text_name"] == TEXT_FIELD
    assert "html_normalizer" in hp["text_processing_steps"] and hp["text_processing_steps"][-1] == "tokenizer"
    assert hp["is_binary"] is True and hp["num_classes"] == 2 and len(hp["class_weights"]) == 2
    assert hp["tab_field_list"] == TAB_FIELDS and TEXT_FIELD in hp["cat_field_list"]
    assert isinstance(BertConfig.from_pretrained(binary_dir / "tokenizer"), BertConfig)

    with torch.serialization.safe_globals([TorchVersion]):
        artifacts = torch.load(binary_dir / "model_artifacts.pth", weights_only=True)
    with torch.serialization.safe_globals([TorchVersion]):
        reference = torch.load(CURSUS_FIXTURE / "model" / "model_artifacts.pth", weights_only=True)
    assert set(artifacts) == set(reference)
    assert isinstance(artifacts["torch_version"], TorchVersion)
    assert isinstance(artifacts["embedding_mat"], torch.nn.Parameter)
    assert artifacts["model_class"] == "bimodal_bert" and artifacts["config"]["imputation_dict"]
    with pytest.raises(pickle.UnpicklingError):  # a TorchVersion, as in the reference: not weights_only safe
        torch.load(binary_dir / "model_artifacts.pth", weights_only=True)

    columns = [line.split(",")[1] for line in (binary_dir / "feature_columns.txt").read_text().splitlines()
               if not line.startswith("#")]
    assert columns == FEATURE_COLUMNS
    impute = pickle.loads((binary_dir / "impute_dict.pkl").read_bytes())
    assert set(impute) == set(TAB_FIELDS) and all(isinstance(v, float) for v in impute.values())
    risk = pickle.loads((binary_dir / "risk_table_map.pkl").read_bytes())
    assert set(risk["channel"]) >= {"bins", "default_bin"}
    assert isinstance(build_handler(binary_dir, None), PyTorchHandler)


def _direct_probabilities(model_dir: Path, records: list[dict[str, Any]]) -> np.ndarray:
    """Each record through a network built here from the directory's files: softmax of the logits."""
    from transformers import AutoTokenizer, BertConfig

    from mainsail.features.text import pipelines_from_hyperparameters
    from mainsail.handlers.pytorch.models import BimodalBert

    hp = json.loads((model_dir / "hyperparameters.json").read_text())
    network = BimodalBert({**hp, "bert_config": BertConfig.from_pretrained(model_dir / hp["tokenizer"])})
    network.load_state_dict(torch.load(model_dir / "model.pth", weights_only=True))
    network.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir / hp["tokenizer"])
    (pipeline,) = pipelines_from_hyperparameters(hp, tokenizer).values()
    impute = pickle.loads((model_dir / "impute_dict.pkl").read_bytes())
    out = []
    for record in records:
        chunks = pipeline(record[TEXT_FIELD])
        batch = {
            f"{TEXT_FIELD}_input_ids": torch.tensor([[c["input_ids"] for c in chunks]]),
            f"{TEXT_FIELD}_attention_mask": torch.tensor([[c["attention_mask"] for c in chunks]]),
        }
        for name in hp["tab_field_list"]:
            value = impute[name] if record[name] is None else record[name]
            batch[name] = torch.tensor([float(value)])
        with torch.no_grad():
            out.append(torch.softmax(network(batch), dim=1).numpy()[0])
    return np.array(out)


def test_handler_scores_equal_a_direct_forward_pass(binary_dir: Path, handler: PyTorchHandler) -> None:
    records = sample_records(24)
    assert any(r["order_amount"] is None or r["days_since_order"] is None for r in records)
    want = _direct_probabilities(binary_dir, records)
    got = handler.predict_records(records)  # one call: grouped by chunk count, batched
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got.shape == (24, 2)
    assert len({len(handler.pipelines[TEXT_FIELD](r[TEXT_FIELD])) for r in records}) > 1  # several groups
    reply = handler.invoke(Invocation(json.dumps(records[0]).encode(), JSON, JSON))
    (scores,) = json.loads(reply.body)["predictions"]
    assert float(scores["legacy-score"]) == pytest.approx(float(want[0, 1]), abs=1e-6)


def _csv_body(records: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for record in records:
        writer.writerow(["" if record[c] is None else record[c] for c in FEATURE_COLUMNS])
    return buffer.getvalue().encode()


def _parquet_body(records: list[dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame(records)[FEATURE_COLUMNS].to_parquet(buffer, index=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(handler: PyTorchHandler) -> Iterator[LiveApp]:
    with live_app(handler) as app:
        yield app


@pytest.mark.parametrize("kind", ["json-object", "json-array", "ndjson", "jsonlines", "csv", "parquet"])
@pytest.mark.parametrize("accept", [JSON, "text/csv"])
def test_every_request_format_answers_200_in_the_pytorch_layout(
        served: LiveApp, handler: PyTorchHandler, kind: str, accept: str) -> None:
    records = sample_records(3, seed=7)
    body, content_type = {
        "json-object": (json.dumps(records[0]).encode(), JSON),
        "json-array": (json.dumps(records).encode(), JSON),
        "ndjson": ("\n".join(json.dumps(r) for r in records).encode() + b"\n", JSON),
        "jsonlines": ("\n".join(json.dumps(r) for r in records).encode(), "application/jsonlines"),
        "csv": (_csv_body(records), "text/csv"),
        "parquet": (_parquet_body(records), "application/x-parquet"),
    }[kind]
    sent = records[:1] if kind == "json-object" else records
    want = handler.predict_records(sent)[:, 1]
    r = served.client.post("/invocations", content=body, headers={"content-type": content_type, "accept": accept})
    assert r.status_code == 200, r.text
    if accept == JSON:
        predictions = r.json()["predictions"]
        assert [list(p) for p in predictions] == [BINARY_KEYS] * len(sent)
        np.testing.assert_allclose([float(p["legacy-score"]) for p in predictions], want, atol=1e-6)
        # calibrated by the binary table the demo wrote
        assert all(p["calibrated-score"] != p["legacy-score"] for p in predictions)
    else:
        rows = [[float(v) for v in line.split(",")] for line in r.text.splitlines()]
        assert len(rows) == len(sent) and all(len(row) == 3 for row in rows)
        np.testing.assert_allclose([row[0] for row in rows], want, atol=1.01e-4)


def test_multiclass_calibration_renormalises(multiclass_dir: Path) -> None:
    assert sorted(p.name for p in (multiclass_dir / "calibration" / "calibration_models").iterdir()) == [
        f"calibration_model_class_{k}.pkl" for k in range(3)]
    handler = PyTorchHandler(multiclass_dir, use_onnx=False)
    handler.load()
    assert handler.calibrator is not None and handler.calibrator.kind == "multiclass"
    records = sample_records(16, num_classes=3)
    raw = handler.predict_records(records)
    np.testing.assert_allclose(raw, _direct_probabilities(multiclass_dir, records), atol=1e-6)
    calibrated = calibrate(raw, handler.calibrator)
    assert raw.shape == calibrated.shape == (16, 3)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(calibrated, raw, atol=1e-3)
    reply = handler.invoke(Invocation(json.dumps(records[:2]).encode(), JSON, JSON))
    predictions = json.loads(reply.body)["predictions"]
    assert list(predictions[0]) == ["prob_01", "calibrated_prob_01", "prob_02", "calibrated_prob_02", "prob_03",
                                    "calibrated_prob_03", "output-label"]
    np.testing.assert_allclose([[float(p[f"calibrated_prob_0{k}"]) for k in (1, 2, 3)] for p in predictions],
                               calibrated[:2], atol=1e-6)


def test_concurrent_requests_are_preprocessed_as_they_are_one_at_a_time(handler: PyTorchHandler) -> None:
    import threading

    records = sample_records(16, seed=5)
    alone = [handler.encode_record(record)[0] for record in records]
    failures: list[str] = []

    def work(offset: int) -> None:
        for i in range(300):
            k = (i + offset) % len(records)
            try:
                texts, _ = handler.encode_record(records[k])
            except Exception as exc:  # collected and reported below
                failures.append(f"{type(exc).__name__}: {exc}"[:120])
                continue
            if texts != alone[k]:
                lengths = [len(c["input_ids"]) for c in texts[TEXT_FIELD]]
                failures.append(f"record {k}: chunk lengths {lengths}, {len(alone[k][TEXT_FIELD])} chunks alone")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, f"{len(failures)} of 1200 calls went wrong, e.g. {failures[:3]}"


@pytest.mark.slow
def test_mainsail_serve_serves_the_demo_directory(binary_dir: Path, handler: PyTorchHandler, home: Path) -> None:
    record = sample_records(1, seed=11)[0]
    with ServerProcess([str(binary_dir), "--workers", "1"], home=home) as server:
        import httpx

        r = httpx.post(server.url + "/invocations", json=record, timeout=30)
        assert r.status_code == 200, r.text
    (scores,) = r.json()["predictions"]
    assert float(scores["legacy-score"]) == pytest.approx(float(handler.predict_records([record])[0, 1]), abs=1e-6)
    assert "pytorch handler: pytorch network" in server.log()
