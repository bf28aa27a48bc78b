"""The SageMaker inference toolkit's handler rules, over real HTTP against a live server."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mainsail.errors import ModelLoadError
from mainsail.handlers.script import ScriptHandler
from mainsail.serve.runtime import ModelRuntime
from tests.conftest import live_app, write_script


def handler_for(tmp_path: Path, source: str, **kwargs: str) -> ScriptHandler:
    script = write_script(tmp_path, textwrap.dedent(source))
    return ScriptHandler(script, tmp_path, **kwargs)


SUM_MODEL = """
    import numpy as np

    class SumModel:
        def predict(self, data):
            return np.asarray(data, dtype=float).sum(axis=-1)

    def model_fn(model_dir):
        return SumModel()
"""


def test_all_four_functions_are_used(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, """
        def model_fn(model_dir):
            return {"dir": model_dir}
        def input_fn(body, content_type):
            return {"body": body, "type": content_type, "kind": type(body).__name__}
        def predict_fn(data, model):
            return {**data, "model_dir": model["dir"]}
        def output_fn(prediction, accept):
            import json
            return json.dumps({**prediction, "accept": accept}), "application/vnd.test+json"
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b'{"a": 1}',
                            headers={"content-type": "application/json", "accept": "application/x-custom"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/vnd.test+json"
        assert r.json() == {"body": '{"a": 1}', "type": "application/json", "kind": "str",
                            "model_dir": str(tmp_path), "accept": "application/x-custom"}


@pytest.mark.parametrize(("content_type", "kind"), [
    ("application/json", "str"), ("text/csv", "str"), ("application/x-npy", "bytes"),
    ("application/octet-stream", "bytes"), ("text/plain", "bytes"), ("image/png", "bytes"),
])
def test_json_and_csv_reach_input_fn_as_str_everything_else_as_bytes(
        tmp_path: Path, content_type: str, kind: str) -> None:
    handler = handler_for(tmp_path, """
        def model_fn(model_dir):
            return None
        def transform_fn(model, body, content_type, accept):
            return type(body).__name__
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"1,2", headers={"content-type": content_type})
        assert r.status_code == 200
        assert r.text == kind


def test_defaults_fill_in_input_predict_output(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, SUM_MODEL)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"[[1, 2], [3, 4.5]]",
                            headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == [3.0, 7.5]
        r = app.client.post("/invocations", content=b"1,2,3\n4,5,6\n",
                            headers={"content-type": "text/csv", "accept": "text/csv"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        assert r.text == "6.0\n15.0\n"
        buf = io.BytesIO()
        np.save(buf, np.array([[1.0, 1.0], [2.0, 2.0]]))
        r = app.client.post("/invocations", content=buf.getvalue(),
                            headers={"content-type": "application/x-npy", "accept": "application/x-npy"})
        assert r.status_code == 200
        assert np.load(io.BytesIO(r.content)).tolist() == [2.0, 4.0]


def test_accept_missing_or_any_uses_the_default_accept(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, SUM_MODEL)
    with live_app(handler, default_accept="text/csv") as app:
        for accept in (None, "*/*"):
            headers = {"content-type": "application/json"}
            if accept:
                headers["accept"] = accept
            r = app.client.post("/invocations", content=b"[[1, 2]]", headers=headers)
            assert r.status_code == 200
            assert r.text == "3.0\n"
            assert r.headers["content-type"].startswith("text/csv")


def test_default_output_takes_the_first_encodable_accept(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, SUM_MODEL)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"[[1, 2]]",
                            headers={"content-type": "application/json",
                                     "accept": "application/xml, text/csv"})
        assert r.status_code == 200
        assert r.text == "3.0\n"


def test_sklearn_defaults_cast_float32_and_reshape_one_record(tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), [0.0, 1.0, 2.0])
    import joblib

    joblib.dump(model, tmp_path / "model.joblib")
    handler = handler_for(tmp_path, """
        import os, joblib
        def model_fn(model_dir):
            return joblib.load(os.path.join(model_dir, "model.joblib"))
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"1,1", headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        expected = model.predict(np.array([[1.0, 1.0]], dtype=np.float32))
        assert r.json() == pytest.approx(expected.tolist())


def test_transform_fn_overrides_and_conflicts_are_refused(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, """
        def model_fn(model_dir):
            return 10
        def transform_fn(model, body, content_type, accept):
            return (str(model + len(body)), "text/plain")
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"abc", headers={"content-type": "text/plain"})
        assert (r.status_code, r.text, r.headers["content-type"]) == (200, "13", "text/plain; charset=utf-8")

    conflicting = handler_for(tmp_path, """
        def model_fn(model_dir):
            return 1
        def input_fn(body, content_type):
            return body
        def transform_fn(model, body, content_type, accept):
            return body
    """)
    with pytest.raises(ModelLoadError, match="Cannot use transform_fn"):
        ModelRuntime(conflicting).load()


def test_context_argument_is_an_mms_style_object(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, """
        import json
        def model_fn(model_dir, context):
            return {"load_dir": context.system_properties["model_dir"], "gpu": context.system_properties["gpu_id"]}
        def input_fn(body, content_type, context):
            return {"custom": context.get_request_header(0, "X-Custom"), "body": body}
        def predict_fn(data, model, context):
            context.set_response_status(201, "Created")
            context.set_response_header(0, "x-answer", "42")
            return {**data, **model}
        def output_fn(prediction, accept, context):
            return json.dumps(prediction)
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"[1]",
                            headers={"content-type": "application/json", "x-custom": "hello"})
        assert r.status_code == 201
        assert r.headers["x-answer"] == "42"
        assert r.json() == {"custom": "hello", "body": "[1]", "load_dir": str(tmp_path), "gpu": None}


def test_wrong_arity_fails_the_load_naming_the_function(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, """
        def model_fn(model_dir):
            return 1
        def predict_fn(data):
            return data
    """)
    with pytest.raises(ModelLoadError, match="predict_fn takes 1 arguments"):
        ModelRuntime(handler).load()


def test_missing_model_fn_fails_the_load(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, """
        def predict_fn(data, model):
            return data
    """)
    with pytest.raises(ModelLoadError, match="Please provide a model_fn"):
        ModelRuntime(handler).load()


def test_pre_model_fn_and_model_warmup_fn_run_in_order(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, """
        calls = []
        def pre_model_fn(model_dir):
            calls.append("pre")
        def model_fn(model_dir):
            calls.append("model")
            return calls
        def model_warmup_fn(model_dir, model):
            calls.append("warmup")
        def transform_fn(model, body, content_type, accept):
            return ",".join(model)
    """)
    with live_app(handler) as app:
        assert app.client.post("/invocations", content=b"x").text == "pre,model,warmup"


@pytest.mark.parametrize(("result", "body", "content_type"), [
    ("b'raw'", b"raw", "application/json"),
    ("'text'", b"text", "application/json"),
    ("(b'a,b', 'text/csv')", b"a,b", "text/csv"),
    ("{'k': [1, 2]}", b'{"k":[1,2]}', "application/json"),
])
def test_output_fn_may_return_bytes_str_tuple_or_an_object(
        tmp_path: Path, result: str, body: bytes, content_type: str) -> None:
    handler = handler_for(tmp_path, f"""
        def model_fn(model_dir):
            return None
        def predict_fn(data, model):
            return data
        def output_fn(prediction, accept):
            return {result}
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"[1]", headers={"content-type": "application/json"})
        assert r.status_code == 200
        assert r.content == body
        assert r.headers["content-type"].split(";")[0] == content_type


def test_a_toolkit_style_error_keeps_its_status(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, """
        class BaseInferenceToolkitError(Exception):
            def __init__(self, status_code, message, phrase):
                self.status_code, self.message, self.phrase = status_code, message, phrase
                super().__init__(status_code, message, phrase)
        def model_fn(model_dir):
            return None
        def transform_fn(model, body, content_type, accept):
            if body == b"teapot":
                raise BaseInferenceToolkitError(418, "I am a teapot", "teapot")
            return "ok"
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"teapot")
        assert r.status_code == 418
        assert "I am a teapot" in r.json()["message"]
        assert app.client.post("/invocations", content=b"fine").text == "ok"


def test_pytorch_model_gets_the_pytorch_toolkit_defaults(tmp_path: Path) -> None:
    import torch

    handler = handler_for(tmp_path, """
        import torch
        class Double(torch.nn.Module):
            def forward(self, x):
                assert not torch.is_grad_enabled()
                return x * 2
        def model_fn(model_dir):
            return Double()
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"[[1, 2], [3, 4]]",
                            headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json() == [[2.0, 4.0], [6.0, 8.0]]
    assert torch.__version__.startswith("2.13")


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_torchscript_model_pt_loads_without_model_fn(tmp_path: Path) -> None:
    import torch

    class AddOne(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    torch.jit.save(torch.jit.script(AddOne()), str(tmp_path / "model.pt"))
    handler = handler_for(tmp_path, """
        # no model_fn: the PyTorch container loads model.pt
        def output_fn(prediction, accept):
            import json
            return json.dumps(prediction.tolist())
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b"[1.5, 2.5]", headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert json.loads(r.text) == [2.5, 3.5]


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_without_model_pt_the_one_pt_or_pth_file_loads_whatever_its_name(tmp_path: Path) -> None:
    """The PyTorch container's default model_fn: model.pt, else exactly one *.pt / *.pth file."""
    import torch

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    torch.jit.save(torch.jit.script(Double()), str(tmp_path / "classifier.pth"))
    (tmp_path / "notes.txt").write_text("not a model")
    handler = handler_for(tmp_path, "# no model_fn\n")
    handler.load()
    assert handler.model(torch.tensor([1.5])).tolist() == [3.0]

    torch.jit.save(torch.jit.script(Double()), str(tmp_path / "other.pt"))
    with pytest.raises(Exception, match=r"Exactly one \.pth or \.pt file is required for PyTorch models: "
                                        r"\['classifier.pth', 'other.pt'\]"):
        ModelRuntime(handler_for(tmp_path, "# no model_fn\n")).load()


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_a_pth_that_is_not_torchscript_fails_the_load_as_in_the_container(tmp_path: Path) -> None:
    import torch

    torch.save({"weight": torch.ones(2)}, tmp_path / "weights.pth")  # a state dict, not TorchScript
    with pytest.raises(ModelLoadError, match="Please ensure model is saved using torchscript"):
        ModelRuntime(handler_for(tmp_path, "# no model_fn\n")).load()


def test_a_script_can_ask_for_typed_frames(tmp_path: Path) -> None:
    handler = handler_for(tmp_path, """
        from mainsail.codecs import default_registry

        CODECS = default_registry()

        def model_fn(model_dir):
            return None

        def input_fn(body, content_type):
            return CODECS.decode(body, content_type)

        def predict_fn(frame, model):
            return frame.assign(total=frame["a"] * 2, kind=frame["b"].str.upper())

        def output_fn(prediction, accept):
            encoded = CODECS.encode(prediction, accept)
            return encoded.body, encoded.content_type
    """)
    with live_app(handler) as app:
        r = app.client.post("/invocations", content=b'{"instances": [{"a": 1, "b": "x,y"}, {"a": 2, "b": "z"}]}',
                            headers={"content-type": "application/json", "accept": "text/csv"})
        assert r.status_code == 200, r.text
        assert r.text == '1,"x,y",2,"X,Y"\n2,z,4,Z\n'
        r = app.client.post("/invocations", content=b'1,"q"\n', headers={"content-type": "text/csv"})
        assert r.status_code == 500  # no column "a" in a header-less CSV: the script's own KeyError


def test_a_native_librarys_error_reaches_the_client_without_its_clock_and_stack(tmp_path: Path) -> None:
    """XGBoost's errors carry the time, a source line and a native stack trace: the client gets the
    check that failed, the same every time."""
    from mainsail.errors import ModelError
    from mainsail.handlers.base import Invocation

    script = write_script(tmp_path, (
        "def model_fn(model_dir):\n    return None\n\n\n"
        "def predict_fn(data, model):\n"
        "    raise RuntimeError('[13:23:10] /src/learner.cc:1289: Check failed: 4 vs. 5 : Number of columns'\n"
        "                       '\\nStack trace:\\n  [bt] (0) libxgboost.so(+0x2c1a8c)')\n"))
    handler = ScriptHandler(script, tmp_path)
    handler.load()
    with pytest.raises(ModelError) as caught:
        handler.invoke(Invocation(b"[1]", "application/json", "application/json"))
    assert caught.value.message == "RuntimeError: Check failed: 4 vs. 5 : Number of columns"
