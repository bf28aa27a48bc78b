"""The container modules scripts import besides the codecs: ``sagemaker_xgboost_container.data_utils`` and
``distributed`` and ``sagemaker_containers.entry_point`` (script-mode files that train and serve import
them at their top), ``sagemaker_sklearn_container.serving`` and ``sagemaker_pytorch_serving_container``'s
default handler (whose functions a script's own functions call). Served over HTTP by ``mainsail serve``;
the data readers checked against the files' contents."""

from __future__ import annotations

import json
import pickle
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest

from mainsail.codecs import recordio
from mainsail.handlers import provided
from tests.conftest import ServerProcess, write_script


@pytest.fixture
def modules() -> Iterator[dict[str, ModuleType]]:
    """The provided modules, imported as a script imports them (the folder on sys.path)."""
    import importlib

    sys.path.append(provided.PATH)
    try:
        yield {name: importlib.import_module(name) for name in (
            "sagemaker_xgboost_container.data_utils", "sagemaker_xgboost_container.distributed",
            "sagemaker_containers.entry_point", "sagemaker_sklearn_container.serving",
            "sagemaker_pytorch_serving_container.default_pytorch_inference_handler")}
    finally:
        sys.path.remove(provided.PATH)


SCRIPT_MODE = '''
"""An XGBoost script-mode file that trains (python train.py ...) and serves (model_fn)."""
import argparse
import os
import pickle

import xgboost as xgb
from sagemaker_containers import entry_point
from sagemaker_xgboost_container import distributed
from sagemaker_xgboost_container.data_utils import get_dmatrix


def _train(params, dtrain, model_dir, is_master):
    booster = xgb.train(params=params, dtrain=dtrain, num_boost_round=5)
    if is_master:
        with open(os.path.join(model_dir, "xgboost-model"), "wb") as f:
            pickle.dump(booster, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--model-dir", required=True)
    args = parser.parse_args()
    dtrain = get_dmatrix(args.train, "text/csv")
    distributed.rabit_run(exec_fun=_train, args={"params": {"max_depth": 2}, "dtrain": dtrain,
                                                 "model_dir": args.model_dir},
                          include_in_training=dtrain is not None, hosts=["algo-1"], current_host="algo-1",
                          update_rabit_args=True)


def model_fn(model_dir):
    with open(os.path.join(model_dir, "xgboost-model"), "rb") as f:
        return pickle.load(f)
'''


def test_a_script_mode_file_trains_here_and_serves_unchanged(tmp_path: Path, home: Path) -> None:
    """Its training part runs with the provided data_utils and distributed (one host), and the same file
    serves: the top-level imports work and the default input_fn / predict_fn answer CSV."""
    import os
    import subprocess

    import xgboost as xgb

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] > 0).astype(float)
    (tmp_path / "train").mkdir()
    np.savetxt(tmp_path / "train" / "part-0.csv", np.column_stack([y, x])[:25], delimiter=",")
    np.savetxt(tmp_path / "train" / "part-1.csv", np.column_stack([y, x])[25:], delimiter=",")
    script = write_script(tmp_path / "model", textwrap.dedent(SCRIPT_MODE), name="train.py")
    env = {**os.environ, "PYTHONPATH": provided.PATH}
    subprocess.run([sys.executable, str(script), "--train", str(tmp_path / "train"), "--model-dir",
                    str(tmp_path / "model")], check=True, env=env, timeout=120)
    booster = pickle.loads((tmp_path / "model" / "xgboost-model").read_bytes())
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in x[:4])
    with ServerProcess([str(tmp_path / "model"), "--workers", "1", "--entry-point", "train.py"], home=home) as server:
        answer = httpx.post(server.url + "/invocations", content=body, headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200
    assert answer.json() == json.loads(json.dumps(booster.predict(xgb.DMatrix(x[:4])).tolist()))


def test_data_utils_reads_each_format_with_its_labels(tmp_path: Path, modules: dict[str, ModuleType]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy.sparse import csr_matrix

    data_utils = modules["sagemaker_xgboost_container.data_utils"]
    rows = np.array([[1.0, 0.5, 2.0, 0.0], [0.0, 1.5, 0.0, 3.0], [1.0, 0.0, 0.0, 1.0]])  # label, then features
    for kind in ("csv", "weighted", "libsvm", "parquet", "recordio"):
        (tmp_path / kind / "nested").mkdir(parents=True)
    np.savetxt(tmp_path / "csv" / "a.csv", rows[:2], delimiter=",")
    np.savetxt(tmp_path / "csv" / "nested" / "b.csv", rows[2:], delimiter=",")
    (tmp_path / "csv" / ".hidden.csv").write_text("9,9,9,9\n")
    np.savetxt(tmp_path / "weighted" / "w.csv", np.column_stack([rows[:, 0], [1, 2, 3], rows[:, 1:]]), delimiter=",")
    (tmp_path / "libsvm" / "a.txt").write_text("1 0:0.5 1:2\n0 0:1.5 2:3\n")
    (tmp_path / "libsvm" / "nested" / "b.txt").write_text("1 2:1\n")
    pq.write_table(pa.table({f"c{i}": rows[:, i] for i in range(4)}), tmp_path / "parquet" / "a.parquet")
    (tmp_path / "recordio" / "a.rec").write_bytes(recordio.write_records(rows[:, 1:].astype(np.float32), rows[:, 0]))

    for kind, content_type in [("csv", "csv"), ("libsvm", "text/libsvm"), ("parquet", "parquet"),
                               ("recordio", "application/x-recordio-protobuf")]:
        dmatrix = data_utils.get_dmatrix(str(tmp_path / kind), content_type)
        assert dmatrix.get_label().tolist() == rows[:, 0].tolist(), kind
        assert (dmatrix.num_row(), dmatrix.num_col()) == (3, 3), kind
    weighted = data_utils.get_dmatrix(str(tmp_path / "weighted"), "csv", csv_weights=1)
    assert weighted.get_weight().tolist() == [1, 2, 3] and weighted.num_col() == 3
    assert data_utils.get_dmatrix(str(tmp_path / "absent"), "csv") is None
    sparse = recordio.write_records(csr_matrix(rows[:, 1:].astype(np.float32)), rows[:, 0])
    (tmp_path / "recordio" / "a.rec").write_bytes(sparse)
    assert data_utils.get_dmatrix(str(tmp_path / "recordio"), "recordio-protobuf").get_label().tolist() == [1, 0, 1]

    assert data_utils.get_size(str(tmp_path / "csv" / "a.csv")) == (tmp_path / "csv" / "a.csv").stat().st_size
    assert data_utils.get_size(str(tmp_path / "absent")) == 0
    with pytest.raises(data_utils.UserError, match="Hidden file"):
        data_utils.get_size(str(tmp_path / "csv"))
    with pytest.raises(data_utils.UserError, match="Pipe mode"):
        data_utils.get_dmatrix(str(tmp_path / "csv"), "csv", is_pipe=True)
    data_utils.validate_data_file_path(str(tmp_path / "libsvm"), "libsvm")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.txt").write_text("label 3 4\n")
    with pytest.raises(data_utils.UserError, match="is not 'LIBSVM' format"):
        data_utils.validate_data_file_path(str(tmp_path / "bad"), "libsvm")


@pytest.mark.parametrize(("given", "kind"), [
    (None, "libsvm"), ("csv", "csv"), ("text/csv", "csv"), ("text/csv; label_size=1", "csv"),
    ("text/libsvm; charset=utf8", "libsvm"), ("text/x-libsvm", "libsvm"), ("application/x-parquet", "parquet"),
    ("application/x-recordio-protobuf", "recordio-protobuf"), ("TEXT/CSV", "csv")])
def test_get_content_type(given: str | None, kind: str, modules: dict[str, ModuleType]) -> None:
    assert modules["sagemaker_xgboost_container.data_utils"].get_content_type(given) == kind


def test_get_content_type_refusals(modules: dict[str, ModuleType]) -> None:
    data_utils = modules["sagemaker_xgboost_container.data_utils"]
    with pytest.raises(data_utils.UserError, match="label_size must be equal to 1"):
        data_utils.get_content_type("text/csv; label_size=2")
    with pytest.raises(data_utils.UserError, match="is not an accepted ContentType"):
        data_utils.get_content_type("application/json")


def test_distributed_and_entry_point_on_one_host(modules: dict[str, ModuleType]) -> None:
    distributed = modules["sagemaker_xgboost_container.distributed"]
    seen: list[dict[str, object]] = []
    distributed.rabit_run(lambda **kw: seen.append(kw), {"a": 1}, True, ["algo-1"], "algo-1", update_rabit_args=True)
    assert seen == [{"a": 1, "is_master": True}]
    with pytest.raises(RuntimeError, match="Rabit tracker, which mainsail does not run"):
        distributed.rabit_run(lambda **kw: None, {}, True, ["algo-1", "algo-2"], "algo-1")
    with pytest.raises(NotImplementedError, match="does not run training"):
        modules["sagemaker_containers.entry_point"].run("s3://bucket/code", "train.py", [])


SKLEARN_SCRIPT = '''
import os

import joblib
from sagemaker_sklearn_container import serving


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(input_data, content_type):
    return serving.default_input_fn(input_data, content_type)


def output_fn(prediction, accept):
    return serving.default_output_fn(prediction * 10, accept)
'''


def test_a_script_calling_the_sklearn_containers_defaults(tmp_path: Path, home: Path,
                                                          modules: dict[str, ModuleType]) -> None:
    import joblib
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(np.array([[0.0, 1], [1, 0], [2, 2]]), np.array([1.0, 2, 7]))
    joblib.dump(model, tmp_path / "model.joblib")
    write_script(tmp_path, SKLEARN_SCRIPT)
    serving = modules["sagemaker_sklearn_container.serving"]
    assert serving.default_input_fn("[[1, 2]]", "application/json").dtype == np.float32
    with ServerProcess([str(tmp_path), "--workers", "1"], home=home) as server:
        answer = httpx.post(server.url + "/invocations", content=b"[[1, 2], [3, 4]]",
                            headers={"Content-Type": "application/json", "Accept": "application/json"})
        as_csv = httpx.post(server.url + "/invocations", content=b"1,2\n3,4",
                            headers={"Content-Type": "text/csv", "Accept": "text/csv"})
    want = model.predict(np.array([[1, 2], [3, 4]], dtype=np.float32)) * 10
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert np.allclose(answer.json(), want)
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert np.allclose([float(v) for v in as_csv.text.split()], want)


PYTORCH_SCRIPT = '''
from sagemaker_pytorch_serving_container.default_pytorch_inference_handler import DefaultPytorchInferenceHandler

handler = DefaultPytorchInferenceHandler()


def model_fn(model_dir):
    return handler.default_model_fn(model_dir)


def input_fn(input_data, content_type):
    return handler.default_input_fn(input_data, content_type) * 2


def predict_fn(data, model):
    return handler.default_predict_fn(data, model)


def output_fn(prediction, accept):
    return handler.default_output_fn(prediction, accept)
'''


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_a_script_calling_the_pytorch_default_handler(tmp_path: Path, home: Path) -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())
    torch.jit.script(net).save(str(tmp_path / "weights.pth"))  # not model.pt: the only *.pth is loaded
    write_script(tmp_path, PYTORCH_SCRIPT)
    with ServerProcess([str(tmp_path), "--workers", "1"], home=home) as server:
        answer = httpx.post(server.url + "/invocations", content=b"[[1, 2, 3]]",
                            headers={"Content-Type": "application/json", "Accept": "application/json"})
    with torch.no_grad():
        want = net(torch.tensor([[2.0, 4.0, 6.0]])).tolist()
    assert answer.status_code == 200 and np.allclose(answer.json(), want, atol=1e-6)
