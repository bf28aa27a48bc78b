"""Real public inference scripts (``tests/corpus``, each verbatim with its source and licence) served
unchanged by ``mainsail serve``, their models built here, the answers compared with what the
container's serving code gives on the same inputs (the container's rules, computed here with the same
libraries: XGBoost's own LIBSVM reader, the scikit-learn container's float32 cast, the Hugging Face
toolkit's JSON)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest

from mainsail.handlers import provided
from tests.codecs.test_xgboost_inputs import xgboost_reads
from tests.conftest import ServerProcess

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def model_dir_with(tmp_path: Path, script: str, name: str = "inference.py") -> Path:
    """A model directory holding the corpus script as ``code/<name>``, verbatim."""
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    shutil.copy(CORPUS / script, model_dir / "code" / name)
    return model_dir


def booster(n_features: int, seed: int = 0) -> object:
    import xgboost

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(80, n_features))
    y = (x[:, 0] + x[:, 1] > 0).astype(float)
    return xgboost.train({"max_depth": 3, "objective": "binary:logistic"}, xgboost.DMatrix(x, label=y), 10)


def post(server: ServerProcess, body: bytes | str, content_type: str, accept: str) -> httpx.Response:
    return httpx.post(server.url + "/invocations", content=body,
                      headers={"Content-Type": content_type, "Accept": accept}, timeout=60)


def test_sip_xgboost_inference_with_sagemaker_containers_modules(tmp_path: Path, home: Path) -> None:
    """Imports beta.framework's env, modules, transformer and worker; JSON features or the XGBoost
    container's decoder in, worker.Response out."""
    import xgboost

    model = booster(4)
    model_dir = model_dir_with(tmp_path, "sdk_sip_xgboost_inference.py")
    (model_dir / "model.bin").write_bytes(pickle.dumps(model))
    features = [0.5, -1.0, 2.0, 0.25]
    rows = np.array([[0.5, -1.0, 2.0, 0.25], [-1.0, -1.0, 0.0, 1.0]])
    with ServerProcess([str(model_dir), "--workers", "1"], home=home) as server:
        as_json = post(server, json.dumps({"instances": [{"features": features}]}), "application/json",
                       "application/json")
        as_csv = post(server, "\n".join(",".join(map(str, r)) for r in rows), "text/csv", "text/csv")
        refused = post(server, b"1 0:1", "text/libsvm", "application/x-npy")  # its output_fn's own error
    score = model.predict(xgboost.DMatrix(np.array(features).reshape((1, -1))))[0]
    want = json.dumps({"predictions": [{"score": score.astype(float), "predicted_label": 1 if score > 0.5 else 0}]})
    assert as_json.status_code == 200 and as_json.content == want.encode()
    assert as_json.headers["content-type"] == "application/json"
    # sagemaker_containers' array_to_csv: np.savetxt(fmt="%s"), a 1-D array one value per line
    import io

    stream = io.StringIO()
    np.savetxt(stream, model.predict(xgboost.DMatrix(rows)), delimiter=",", fmt="%s")
    assert as_csv.status_code == 200 and as_csv.text == stream.getvalue()
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert refused.status_code == 500 and "RuntimeException" in refused.json()["message"]  # a NameError there too


def test_xgboost_abalone_inference_with_feature_contributions(tmp_path: Path, home: Path) -> None:
    model = booster(8, seed=1)
    model_dir = model_dir_with(tmp_path, "sdk_xgboost_abalone_inference.py")
    (model_dir / "xgboost-model").write_bytes(pickle.dumps(model))
    body = b"1 0:0.5 1:-0.25 3:2.0 7:1.5\n0 1:1.0 2:-3.0\n"
    with ServerProcess([str(model_dir), "--workers", "1"], home=home) as server:
        answer = post(server, body, "text/libsvm", "text/csv")
        as_json = post(server, body, "text/libsvm", "application/json")
        refused = post(server, b"1,2", "text/csv", "text/csv")
    matrix = xgboost_reads(body, tmp_path)
    first = np.hstack((model.predict(matrix)[:, np.newaxis],
                       model.predict(matrix, pred_contribs=True, validate_features=False)))[0]
    assert answer.status_code == 200 and answer.text == ",".join(str(x) for x in first)
    assert answer.headers["content-type"].startswith("text/csv")
    assert as_json.text == answer.text and as_json.headers["content-type"].startswith("application/json")
    assert refused.status_code == 500 and "Content type text/csv is not supported." in refused.json()["message"]


def test_xgboost_abalone_script_mode_trains_and_serves_with_the_containers_defaults(tmp_path: Path,
                                                                                     home: Path) -> None:
    import xgboost

    rng = np.random.default_rng(2)
    train = tmp_path / "train"
    train.mkdir()
    lines = []
    for _ in range(120):
        x = rng.normal(size=6)
        lines.append(f"{x[0] * 3 + x[2]:.4f} " + " ".join(f"{i}:{v:.4f}" for i, v in enumerate(x) if abs(v) > 0.3))
    (train / "abalone.libsvm").write_text("\n".join(lines) + "\n")
    model_dir = model_dir_with(tmp_path, "sdk_xgboost_abalone.py", name="abalone.py")
    env = {**os.environ, "PYTHONPATH": provided.PATH, "SM_MODEL_DIR": str(model_dir), "SM_CHANNEL_TRAIN": str(train)}
    subprocess.run([sys.executable, str(model_dir / "code" / "abalone.py")], check=True, env=env, timeout=300,
                   capture_output=True)
    model = xgboost.Booster()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a file without an extension: XGBoost warns about its format
        model.load_model(str(model_dir / "xgboost-model"))

    libsvm = b"0 0:0.5 2:-1.25 5:2\n0 1:1.5\n"
    csv_rows = np.array([[0.5, 0.0, -1.25, 0.0, 0.0, 2.0]])
    with ServerProcess([str(model_dir), "--workers", "1", "--entry-point", "abalone.py"], home=home) as server:
        answer = post(server, libsvm, "text/libsvm", "application/json")
        as_csv = post(server, "0.5,0,-1.25,0,0,2", "text/csv", "application/json")
        refused = post(server, b"[[1, 2]]", "application/json", "application/json")
    want = model.predict(xgboost_reads(libsvm, tmp_path), validate_features=False)
    assert answer.status_code == 200 and answer.json() == json.loads(json.dumps(want.tolist()))
    assert as_csv.json() == json.loads(json.dumps(model.predict(xgboost.DMatrix(csv_rows)).tolist()))
    assert refused.status_code == 415  # the XGBoost container refuses JSON too


def test_sklearn_mnist_trains_and_serves_with_the_containers_defaults(tmp_path: Path, home: Path) -> None:
    rng = np.random.default_rng(4)
    for channel, n in (("train", 60), ("test", 10)):
        (tmp_path / channel).mkdir()
        np.savez(tmp_path / channel / f"{channel}.npz", x=rng.integers(0, 256, size=(n, 784)).astype(np.uint8),
                 y=np.arange(n) % 3)
    model_dir = model_dir_with(tmp_path, "sdk_sklearn_mnist.py", name="mnist.py")
    (tmp_path / "output").mkdir()
    env = {**os.environ, "SM_OUTPUT_DATA_DIR": str(tmp_path / "output"), "SM_MODEL_DIR": str(model_dir),
           "SM_CHANNEL_TRAIN": str(tmp_path / "train"), "SM_CHANNEL_TEST": str(tmp_path / "test")}
    subprocess.run([sys.executable, str(model_dir / "code" / "mnist.py"), "--epochs", "20"], check=True, env=env,
                   timeout=300, capture_output=True)
    import joblib

    clf = joblib.load(model_dir / "model.joblib")
    images = rng.random(size=(3, 784))
    with ServerProcess([str(model_dir), "--workers", "1", "--entry-point", "mnist.py"], home=home) as server:
        as_json = post(server, json.dumps(images.tolist()), "application/json", "application/json")
        as_csv = post(server, "\n".join(",".join(repr(float(v)) for v in r) for r in images), "text/csv", "text/csv")
        import io

        buffer = io.BytesIO()
        np.save(buffer, images)
        as_npy = post(server, buffer.getvalue(), "application/x-npy", "application/json")
    want = clf.predict(images.astype(np.float32)).tolist()  # the container casts JSON and CSV to float32
    assert as_json.status_code == 200 and as_json.json() == want
    assert [int(float(v)) for v in as_csv.text.split()] == want
    assert as_npy.json() == clf.predict(images).tolist()  # NPY is not cast


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hugging_face_custom_inference_with_the_toolkits_defaults(tmp_path: Path, home: Path) -> None:
    """model_fn and predict_fn from the script; input_fn and output_fn are the Hugging Face toolkit's
    (JSON to a dict, the returned tensors to JSON), chosen because model_fn returns transformers objects."""
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "parcel", "is", "late", "my", "order", "arrived",
             "broken", "refund", "please", "hello"]
    model_dir = model_dir_with(tmp_path, "hf_custom_inference.py")
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, model_max_length=32).save_pretrained(str(model_dir))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32)).save_pretrained(str(model_dir))
    sentences = ["my parcel is late", "the order arrived broken refund please"]
    with ServerProcess([str(model_dir), "--workers", "1"], home=home, env={"HF_HUB_OFFLINE": "1"}) as server:
        answer = post(server, json.dumps({"inputs": sentences}), "application/json", "application/json")
        log = server.log()
    assert answer.status_code == 200, answer.text
    assert "huggingface" in log

    tokenizer, model = AutoTokenizer.from_pretrained(str(model_dir)), AutoModel.from_pretrained(str(model_dir))
    encoded = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**encoded)[0]
    mask = encoded["attention_mask"].unsqueeze(-1).expand(tokens.size()).float()
    vectors = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9), p=2, dim=1)
    assert set(answer.json()) == {"vectors"}
    assert np.allclose(answer.json()["vectors"], vectors.tolist(), atol=1e-6)
    assert answer.content.startswith(b'{"vectors":[[')  # the toolkit's compact separators
