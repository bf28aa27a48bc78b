"""mainsail.load: the serving chain in-process, answering byte for byte what `mainsail serve` answers."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

import mainsail
from mainsail.client import LocalModel, ModelInvocationError, Response
from mainsail.errors import InvalidModelArchive, ModelLoadError
from mainsail.package import package_model
from tests.conftest import ServerProcess
from tests.test_package import CATS, FEATURES, FRAME, IMPUTE, RISK, X, Y

SCRIPT = """
import json, os

def model_fn(model_dir):
    with open(os.path.join(model_dir, "weights.json")) as fh:
        return {"w": json.load(fh), "tag": os.environ.get("MODEL_TAG", "none")}

def input_fn(body, content_type):
    if content_type == "application/json":
        return json.loads(body)
    if content_type == "text/csv":
        return [[float(x) for x in line.split(",")] for line in body.strip().splitlines()]
    raise ValueError(f"cannot read {content_type}")

def predict_fn(rows, model):
    if rows == "boom":
        raise RuntimeError("boom: predict failed")
    return {"p": [sum(w * x for w, x in zip(model["w"], row)) for row in rows], "tag": model["tag"]}

def output_fn(prediction, accept):
    if accept == "text/csv":
        return "\\n".join(str(p) for p in prediction["p"]), "text/csv"
    return json.dumps(prediction), "application/json"
"""

DEFAULTS = """
import os, joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""

ENV = {"MODEL_TAG": "t1", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0.001"}


def _script_dir(root: Path) -> Path:
    (root / "code").mkdir(parents=True)
    (root / "code" / "inference.py").write_text(SCRIPT)
    (root / "weights.json").write_text("[1.0, 2.0, 3.0]")
    return root


def _defaults_dir(root: Path) -> Path:
    import joblib
    from sklearn.linear_model import LogisticRegression

    (root / "code").mkdir(parents=True)
    (root / "code" / "inference.py").write_text(DEFAULTS)
    data = np.random.default_rng(0).normal(size=(60, 3))
    joblib.dump(LogisticRegression().fit(data, (data[:, 0] > 0).astype(int)), root / "model.joblib")
    return root


def _tabular_dir(root: Path) -> Path:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=500).fit(X, Y)
    return package_model(root, model, feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK,
                         impute_values=IMPUTE)


def _archive(model_dir: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return target


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"script": _script_dir(root / "script"), "defaults": _defaults_dir(root / "defaults"),
            "tabular": _tabular_dir(root / "tabular")}


@pytest.fixture(scope="module")
def servers(dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """One real `mainsail serve` per model (the script one with ENV in its environment)."""
    home = tmp_path_factory.mktemp("serve-home")
    started: dict[str, ServerProcess] = {}
    try:
        for name, path in dirs.items():
            started[name] = ServerProcess([str(path), "--workers", "1"], env=ENV if name == "script" else None,
                                          home=home)
        yield started
    finally:
        for server in started.values():
            server.__exit__()


@pytest.fixture(scope="module")
def local(dirs: dict[str, Path]) -> Iterator[dict[str, LocalModel]]:
    loaded = {name: mainsail.load(path, environment=ENV if name == "script" else None)
              for name, path in dirs.items()}
    yield loaded
    for model in loaded.values():
        model.close()


def served(server: ServerProcess, body: bytes, content_type: str | None, accept: str | None) -> tuple[int, bytes, str]:
    headers = {} if content_type is None else {"content-type": content_type}
    if accept is not None:
        headers["accept"] = accept
    answer = httpx.post(server.url + "/invocations", content=body, headers=headers, timeout=30)
    return answer.status_code, answer.content, answer.headers["content-type"]


def in_process(model: LocalModel, body: Any, content_type: str | None, accept: str | None) -> tuple[int, bytes, str]:
    try:
        answer = model.invoke(body, content_type=content_type, accept=accept)
    except ModelInvocationError as exc:
        assert exc.response is not None and exc.original_status_code == exc.response.status >= 400
        assert exc.original_message == exc.response.text
        answer = exc.response
    assert answer.content_type is not None
    return answer.status, answer.body, answer.content_type


RECORD = {"num1": 0.3, "num2": -1.2, "color": "red", "size": 2}
CASES = [
    # the script's own four functions
    ("script", b"[[1, 1, 1], [0, 1, 0]]", "application/json", None, 200),
    ("script", b"1,2,3\n0,0,1", "text/csv", "text/csv", 200),
    ("script", b"[[1, 2, 3]]", "application/json", "*/*", 200),
    ("script", b'"boom"', "application/json", None, 500),  # predict_fn raises
    ("script", b"\x00\x01", "application/x-foo", None, 500),  # input_fn raises
    ("script", b"{", "application/json", None, 500),
    ("script", b"[" + b"1," * 1000 + b"1]", "application/json", None, 413),  # SAGEMAKER_MAX_PAYLOAD_IN_MB
    # the scikit-learn container's default input/predict/output functions
    ("defaults", b"[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]", "application/json", None, 200),
    ("defaults", b"1.0,0.0,0.0\n-1.0,0.0,0.0", "text/csv", "text/csv", 200),
    ("defaults", b"[[1.0, 0.0, 0.0]]", "application/x-foo", None, 415),
    ("defaults", b"[[1.0, 0.0, 0.0]]", "application/json", "application/x-foo", 415),
    ("defaults", b"[[1.0, 0.0", "application/json", None, 400),
    ("defaults", b"[[1.0, 0.0, 0.0]]", None, None, 415),
    # the built-in tabular handler
    ("tabular", json.dumps(RECORD).encode(), "application/json", None, 200),
    ("tabular", b"0.3,-1.2,red,2\n1.0,,blue,1", "text/csv", None, 200),
    ("tabular", json.dumps(RECORD).encode(), "application/json", "text/csv", 200),
    ("tabular", b'{"num1": 1}', "application/json", None, 400),
    ("tabular", b"0.3", "application/x-foo", None, 415),
]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "body", "content_type", "accept", "status"), CASES,
                         ids=[f"{c[0]}-{i}-{c[4]}" for i, c in enumerate(CASES)])
def test_answers_are_those_of_mainsail_serve(servers: dict[str, ServerProcess], local: dict[str, LocalModel],
                                             model: str, body: bytes, content_type: str | None,
                                             accept: str | None, status: int) -> None:
    expected = served(servers[model], body, content_type, accept)
    if content_type is None:  # invoke always sends a Content-Type: drive the app as a bare client would
        got = local[model].request("POST", "/invocations", body)
        answer = (got.status, got.body, got.content_type or "")
    else:
        answer = in_process(local[model], body, content_type, accept)
    assert answer == expected
    assert answer[0] == status


@pytest.mark.slow
def test_python_bodies_are_encoded_as_the_client_sends_them(servers: dict[str, ServerProcess],
                                                            local: dict[str, LocalModel]) -> None:
    frame = FRAME[FEATURES].head(5)
    assert in_process(local["tabular"], frame, None, None) == served(
        servers["tabular"], frame.to_csv(header=False, index=False).encode(), "text/csv", None)
    array = np.array([[1.0, 0.0, 0.0], [-1.0, 0.5, 0.0]])
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    assert in_process(local["defaults"], array, None, None) == served(
        servers["defaults"], buffer.getvalue(), "application/x-npy", None)
    assert in_process(local["script"], [[1, 1, 1]], None, None) == served(
        servers["script"], b"[[1,1,1]]", "application/json", None)
    assert local["script"].invoke([[1, 1, 1]]).json() == {"p": [6.0], "tag": "t1"}  # environment reached model_fn


def test_script_directory_in_process(tmp_path: Path) -> None:
    with mainsail.load(_script_dir(tmp_path / "m"), environment={"MODEL_TAG": "local"}) as model:
        assert model.ping() is True
        assert model.handler == "script" and model.script == (tmp_path / "m" / "code" / "inference.py").resolve()
        answer = model.invoke([[1, 2, 3]])
        assert isinstance(answer, Response) and answer.status == 200
        assert answer.json() == {"p": [14.0], "tag": "local"} and answer.content_type == "application/json"
        assert answer.text == '{"p": [14.0], "tag": "local"}'
        csv = model.invoke("1,2,3", content_type="text/csv", accept="text/csv")
        assert (csv.body, csv.content_type) == (b"14.0", "text/csv; charset=utf-8")
        with pytest.raises(ModelInvocationError) as failed:
            model.invoke('"boom"')
        assert failed.value.original_status_code == 500
        assert json.loads(failed.value.original_message or "") == {
            "error": "ModelError", "message": "RuntimeError: boom: predict failed"}
        # a caller inside an event loop (pytest-asyncio, notebooks) works too
        assert asyncio.run(_invoke_async(model)) == {"p": [6.0], "tag": "local"}
    assert model.closed
    with pytest.raises(RuntimeError, match="closed"):
        model.invoke([[1, 2, 3]])
    model.close()  # twice is fine


async def _invoke_async(model: LocalModel) -> Any:
    return model.invoke([[1, 1, 1]]).json()


def test_entry_point_and_default_accept_from_the_environment(tmp_path: Path) -> None:
    model_dir = _script_dir(tmp_path / "m")
    (model_dir / "code" / "inference.py").rename(model_dir / "code" / "serve.py")
    with mainsail.load(model_dir, "serve.py", environment={"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}) as model:
        answer = model.invoke([[1, 1, 1]])
        assert (answer.body, answer.content_type) == (b"6.0", "text/csv; charset=utf-8")
    with mainsail.load(model_dir, environment={"SAGEMAKER_PROGRAM": "serve.py"}) as model:
        assert model.invoke([[1, 1, 1]]).json()["p"] == [6.0]
    assert "SAGEMAKER_PROGRAM" not in os.environ  # restored


def test_model_tar_gz_is_extracted_by_the_servers_code(tmp_path: Path) -> None:
    model_dir = _script_dir(tmp_path / "m")
    archive = _archive(model_dir, tmp_path / "model.tar.gz")
    home = tmp_path / "home"
    with mainsail.load(archive, environment={"MAINSAIL_HOME": str(home)}) as model:
        assert model.model_dir.parent == home / "models"
        assert model.invoke([[1, 1, 1]]).json() == {"p": [6.0], "tag": "none"}

    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InvalidModelArchive):
        mainsail.load(evil, environment={"MAINSAIL_HOME": str(home)})
    assert not (tmp_path / "escaped.txt").exists()


def test_a_model_that_cannot_load_raises(tmp_path: Path) -> None:
    model_dir = _script_dir(tmp_path / "m")
    (model_dir / "code" / "inference.py").write_text("def model_fn(d):\n    raise RuntimeError('corrupt weights')\n")
    with pytest.raises(ModelLoadError, match="corrupt weights"):
        mainsail.load(model_dir)
    with pytest.raises(ModelLoadError, match="does not exist"):
        mainsail.load(tmp_path / "nowhere")


def test_built_in_tabular_model_in_process(dirs: dict[str, Path]) -> None:
    with mainsail.load(dirs["tabular"]) as model:
        assert model.handler == "tabular" and model.script is None and model.ping()
        one = model.invoke(RECORD)
        many = model.invoke(pd.DataFrame([RECORD, RECORD])[FEATURES])
        assert one.status == many.status == 200
        with pytest.raises(ModelInvocationError) as missing:
            model.invoke({"num1": 1})
        assert missing.value.original_status_code == 400
        assert json.loads(missing.value.original_message or "")["error"] == "MissingColumns"


def test_import_mainsail_stays_cheap() -> None:
    code = (
        "import sys, mainsail\n"
        "heavy = ('boto3', 'botocore', 'starlette', 'pandas', 'numpy', 'uvicorn', 'httpx', 'mainsail.client')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
        "assert callable(mainsail.deploy) and callable(mainsail.endpoint) and callable(mainsail.load)\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = out.splitlines()
    assert before == ""
    assert after == "mainsail.client"  # the API module itself, still without boto3, starlette or pandas
