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
    write_script(tmp_path, "import sagemaker_xgboost_container.encoder as xgb_encoders\n")
    with pytest.raises(ModelLoadError, match="ships only in the XGBoost container"):
        ModelRuntime(ScriptHandler(tmp_path / "code" / "inference.py", tmp_path)).load()
