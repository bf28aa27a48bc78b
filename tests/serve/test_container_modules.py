"""Scripts that import the modules SageMaker's framework containers ship: the inference toolkit
(``sagemaker-inference``, the real package, installed with the ``toolkit`` extra) answers as it does
in the containers; a module mainsail does not provide fails the load saying where it comes from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mainsail.errors import ModelLoadError
from mainsail.handlers.script import ScriptHandler
from mainsail.serve.runtime import ModelRuntime
from tests.conftest import live_app, write_script

TOOLKIT_SCRIPT = '''
from sagemaker_inference import content_types, decoder, encoder, errors


def model_fn(model_dir):
    return 3


def input_fn(body, content_type):
    if content_type not in (content_types.JSON, content_types.CSV, content_types.NPY):
        raise errors.UnsupportedFormatError(content_type)
    return decoder.decode(body, content_type)


def predict_fn(data, model):
    return data * model


def output_fn(prediction, accept):
    return encoder.encode(prediction, accept)
'''


@pytest.mark.parametrize("body, content_type, accept", [
    ("[[1.5, 2], [3, 4]]", "application/json", "application/json"),
    ("1.5,2.5\n3,4", "text/csv", "text/csv"),
    ("7", "text/csv", "application/json"),
    ("[1, 2, 3]", "application/json", "text/csv"),
])
def test_the_toolkits_own_decoder_and_encoder_answer_as_in_the_container(
        tmp_path: Path, body: str, content_type: str, accept: str) -> None:
    from sagemaker_inference import decoder, encoder

    write_script(tmp_path, TOOLKIT_SCRIPT)
    expected = encoder.encode(decoder.decode(body, content_type) * 3, accept)
    with live_app(ScriptHandler(tmp_path / "code" / "inference.py", tmp_path)) as app:
        r = app.client.post("/invocations", content=body, headers={"content-type": content_type, "accept": accept})
        assert r.status_code == 200, r.text
        assert r.content == (expected.encode() if isinstance(expected, str) else expected)


def test_the_toolkits_errors_keep_their_status(tmp_path: Path) -> None:
    write_script(tmp_path, TOOLKIT_SCRIPT)
    with live_app(ScriptHandler(tmp_path / "code" / "inference.py", tmp_path)) as app:
        r = app.client.post("/invocations", content="a", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "text/plain is not supported" in r.json()["message"]
        npy = app.client.post("/invocations", content=_npy(np.arange(3.0)),
                              headers={"content-type": "application/x-npy", "accept": "application/json"})
        assert npy.status_code == 200 and json.loads(npy.text) == [0.0, 3.0, 6.0]


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_module_only_the_containers_ship_fails_the_load_saying_so(tmp_path: Path) -> None:
    write_script(tmp_path, "from sagemaker_xgboost_container import checkpointing\n")
    with pytest.raises(ModelLoadError, match="ships only in the XGBoost container; mainsail provides its encoder"):
        ModelRuntime(ScriptHandler(tmp_path / "code" / "inference.py", tmp_path)).load()


XGBOOST_SCRIPT = '''
import os

import xgboost as xgb
import sagemaker_xgboost_container.encoder as xgb_encoders


def model_fn(model_dir):
    booster = xgb.Booster()
    booster.load_model(os.path.join(model_dir, "xgboost-model.json"))
    return booster


def input_fn(request_body, request_content_type):
    if request_content_type == "text/libsvm":
        return xgb_encoders.libsvm_to_dmatrix(request_body)
    if request_content_type == "text/csv":
        return xgb_encoders.csv_to_dmatrix(request_body.rstrip("\\n"))
    raise ValueError("Content type {} is not supported.".format(request_content_type))


def predict_fn(input_data, model):
    return model.predict(input_data)


def output_fn(predictions, content_type):
    if content_type == "application/jsonlines":
        return xgb_encoders.json_to_jsonlines({"predictions": predictions.tolist()})
    return ",".join(str(p) for p in predictions)
'''


def test_a_script_using_the_xgboost_containers_encoder_module(tmp_path: Path) -> None:
    """The usual XGBoost script-mode script: its input_fn calls the container's own decoders."""
    import sys

    import xgboost as xgb

    from mainsail.handlers import provided

    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4))
    booster = xgb.train({"max_depth": 3}, xgb.DMatrix(x, label=x[:, 0] * 2 - x[:, 3]), 8)
    booster.save_model(tmp_path / "xgboost-model.json")
    write_script(tmp_path, XGBOOST_SCRIPT)
    rows = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -2.0, 3.0]])
    want = booster.predict(xgb.DMatrix(rows))
    with live_app(ScriptHandler(tmp_path / "code" / "inference.py", tmp_path)) as app:
        csv = app.client.post("/invocations", content="0.5,-1,2,0.25\n1.5,0,-2,3\n",
                              headers={"content-type": "text/csv", "accept": "text/csv"})
        assert csv.status_code == 200, csv.text
        assert csv.text == ",".join(str(p) for p in want)
        libsvm = app.client.post("/invocations", content="0 0:0.5 1:-1 2:2 3:0.25\n0 0:1.5 1:0 2:-2 3:3\n",
                                 headers={"content-type": "text/libsvm", "accept": "application/jsonlines"})
        assert libsvm.status_code == 200, libsvm.text
        assert [json.loads(line) for line in libsvm.text.splitlines()] == [float(p) for p in want]
    module = sys.modules["sagemaker_xgboost_container.encoder"]
    assert Path(module.__file__ or "").is_relative_to(provided.PATH)
    assert sys.path.index(provided.PATH) > max(i for i, p in enumerate(sys.path) if "site-packages" in p)


def test_the_provided_xgboost_encoder_functions() -> None:
    from mainsail.errors import UnsupportedContentType
    from mainsail.handlers.provided.sagemaker_xgboost_container import encoder

    assert encoder.json_to_jsonlines('{"predictions": [1, {"a": 2}]}') == b'1\n{"a": 2}\n'
    with pytest.raises(ValueError, match="not compatible for conversion to jsonlines"):
        encoder.json_to_jsonlines({"a": [1], "b": [2]})
    matrix = encoder.csv_to_dmatrix("1;2\n3;", dtype=np.float32)
    assert (matrix.num_row(), matrix.num_col()) == (2, 2)
    assert encoder.decode(b"0 3:1\n", "text/x-libsvm").num_col() == 4
    with pytest.raises(UnsupportedContentType):
        encoder.decode(b"[1]", "application/json")


SKLEARN_SCRIPT = '''
import os

import joblib
from sagemaker_containers.beta.framework import content_types, encoders, errors, worker


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(input_data, content_type):
    if content_type in (content_types.CSV, content_types.JSON):
        return encoders.decode(input_data, content_type)
    raise errors.UnsupportedFormatError(content_type)


def predict_fn(input_data, model):
    return model.predict(input_data.reshape(1, -1) if input_data.ndim == 1 else input_data)


def output_fn(prediction, accept):
    return worker.Response(encoders.encode(prediction, accept), mimetype=accept)
'''


def test_a_script_using_sagemaker_containers_beta_framework(tmp_path: Path) -> None:
    """The scikit-learn container's usual script: encoders to decode and encode, worker.Response out."""
    import joblib
    from sklearn.linear_model import LinearRegression

    joblib.dump(LinearRegression().fit([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.0, 2.0, 3.0]),
                tmp_path / "model.joblib")
    write_script(tmp_path, SKLEARN_SCRIPT)
    with live_app(ScriptHandler(tmp_path / "code" / "inference.py", tmp_path)) as app:
        csv = app.client.post("/invocations", content="1,1\n2,0", headers={"content-type": "text/csv",
                                                                           "accept": "text/csv"})
        assert (csv.status_code, csv.headers["content-type"]) == (200, "text/csv; charset=utf-8")
        assert [float(v) for v in csv.text.split()] == pytest.approx([5.0, 4.0])
        js = app.client.post("/invocations", content="[0.5, 1]", headers={"content-type": "application/json",
                                                                          "accept": "application/json"})
        assert (js.status_code, js.headers["content-type"]) == (200, "application/json")
        assert js.json() == pytest.approx([4.0])
        refused = app.client.post("/invocations", content="x", headers={"content-type": "text/plain"})
        assert refused.status_code == 415 and "text/plain is not supported" in refused.json()["message"]
        unknown_accept = app.client.post("/invocations", content="1,1", headers={"content-type": "text/csv",
                                                                                 "accept": "image/png"})
        assert unknown_accept.status_code == 415


def test_the_provided_sagemaker_containers_encoders_match_the_originals_rules() -> None:
    from mainsail.handlers.provided.sagemaker_containers import _encoders as encoders
    from mainsail.handlers.provided.sagemaker_containers import _errors as errors

    assert encoders.encode(np.array([1.5, 2.0]), "text/csv") == "1.5\n2.0\n"  # a 1-D array is a column
    assert encoders.encode([[1, 2], [3, 4]], "text/csv") == "1,2\n3,4\n"
    assert encoders.encode(np.array([[1.5, 2]]), "application/json") == "[[1.5, 2.0]]"
    decoded = encoders.decode("1,2\n3,4", "text/csv")
    assert decoded.dtype == np.float64 and decoded.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert encoders.decode("7", "text/csv").shape == ()  # squeezed, as the original
    assert encoders.decode("a,b", "text/csv").tolist() == ["a", "b"]  # strings stay strings without a dtype
    with pytest.raises(errors.ClientError, match="dtype is: float32"):
        encoders.csv_to_numpy("a,b", dtype="float32")
    assert encoders.decode(_npy(np.arange(3)), "application/x-npy").tolist() == [0, 1, 2]
    with pytest.raises(errors.ClientError):
        encoders.decode(_npy(np.array([{"a": 1}], dtype=object)), "application/x-npy")  # no pickles
    with pytest.raises(errors.UnsupportedFormatError, match="Content type text/csv; charset=utf-8 is not"):
        encoders.decode("1", "text/csv; charset=utf-8")  # matched exactly, as the original


def test_the_provided_worker_response() -> None:
    from mainsail.handlers.provided.sagemaker_containers import _worker as worker
    from mainsail.handlers.replies import response_object

    made = response_object(worker.Response(["a,", b"b"], status="201 CREATED", mimetype="text/csv",
                                           headers={"X-Id": "7"}))
    assert made is not None
    assert (made.status, made.content_type, made.body, made.headers) == (
        201, "text/csv; charset=utf-8", b"a,b", {"X-Id": "7"})
    default = worker.Response("{}")
    assert (default.status_code, default.content_type, default.get_data(as_text=True)) == (200, "application/json", "{}")
    typed = worker.Response(b"x", headers=[("Content-Type", "application/x-thing")])
    assert typed.content_type == "application/x-thing" and typed.mimetype == "application/x-thing"
