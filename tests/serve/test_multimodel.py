"""``mainsail serve --multi-model``: the SageMaker multi-model container API, as a real process."""

from __future__ import annotations

import concurrent.futures
import tarfile
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from mainsail.serve.multimodel.app import multi_model_from_env
from mainsail.serve.multimodel.memory import memory_budget_bytes
from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

# Each model's script imports a helper module of the same name but a different offset: with one
# shared sys.modules["inference"] / ["helper"], the second model would answer with the first's.
SCRIPT = """
import os
import joblib
from helper import OFFSET

def model_fn(model_dir):
    with open(os.path.join(model_dir, "..", "loads-" + os.path.basename(model_dir) + ".txt"), "a") as fh:
        fh.write("load\\n")
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def predict_fn(data, model):
    return model.predict(data) + OFFSET
"""

BIG_IN_MEMORY = """
import numpy as np

def model_fn(model_dir):
    return np.ones(6_000_000)  # 48 MB once loaded, a few bytes on disk

def predict_fn(data, model):
    return [float(model[0])]
"""

MB = 1024 * 1024


def make_model(root: Path, index: int, *, padding_mb: float = 0) -> Path:
    """y = (index + 1) * x, plus an offset of 100 * index from its helper module."""
    root.mkdir(parents=True)
    code = root / "code"
    code.mkdir()
    (code / "inference.py").write_text(SCRIPT)
    (code / "helper.py").write_text(f"OFFSET = {100 * index}\n")
    model = LinearRegression().fit([[0.0], [1.0]], [0.0, float(index + 1)])
    if padding_mb:  # random, so neither the file nor the loaded array is smaller than asked
        model.padding_ = np.random.default_rng(index).random(int(padding_mb * MB / 8))
    joblib.dump(model, root / "model.joblib")
    return root


def expected(index: int, x: float = 2.0) -> float:
    return (index + 1) * x + 100 * index


def make_tar(src: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(src.iterdir()):
            tar.add(item, arcname=item.name)
    return archive


def invoke(client: httpx.Client, name: str, x: float = 2.0) -> httpx.Response:
    return client.post(f"/models/{name}/invoke", json=[[x]])


def load(client: httpx.Client, name: str, url: Path | str) -> httpx.Response:
    return client.post("/models", json={"model_name": name, "url": str(url)})


def loads(model_dir: Path) -> int:
    path = model_dir.parent / f"loads-{model_dir.name}.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_load_list_get_invoke_delete(tmp_path: Path, home: Path) -> None:
    a = make_model(tmp_path / "m" / "a", 0)
    b = make_model(tmp_path / "m" / "b", 1)
    c = make_model(tmp_path / "src" / "c", 2)
    c_tar = make_tar(c, tmp_path / "m" / "c.tar.gz")
    with ServerProcess(["--multi-model", str(tmp_path / "models")], home=home) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        ping = client.get("/ping")
        assert ping.status_code == 200  # no model needed
        assert client.get("/models").json() == {"models": []}
        bad = client.post("/invocations", json=[[1.0]])
        assert bad.status_code == 400 and "TargetModel" in bad.json()["message"]
        assert invoke(client, "a").status_code == 404

        assert load(client, "a", a).status_code == 200
        assert load(client, "b", b).status_code == 200
        assert load(client, "c", c_tar).status_code == 200  # a model.tar.gz is extracted
        again = load(client, "a", a)
        assert again.status_code == 409 and again.json()["error"] == "ModelAlreadyLoaded"
        for name, index in (("a", 0), ("b", 1), ("c", 2)):
            reply = invoke(client, name)
            assert reply.status_code == 200, reply.text
            assert reply.json() == [pytest.approx(expected(index))]

        listing = client.get("/models").json()
        assert listing["models"] == [{"modelName": n, "modelUrl": str(u)} for n, u in
                                     (("a", a), ("b", b), ("c", c_tar))]
        assert "nextPageToken" not in listing
        first = client.get("/models", params={"max_results": 2}).json()
        assert [m["modelName"] for m in first["models"]] == ["a", "b"]
        rest = client.get("/models", params={"max_results": 2, "next_page_token": first["nextPageToken"]}).json()
        assert [m["modelName"] for m in rest["models"]] == ["c"] and "nextPageToken" not in rest

        described = client.get("/models/b").json()
        assert described["modelName"] == "b" and described["modelUrl"] == str(b)
        assert described["memoryBytes"] > 0
        assert client.get("/models/zzz").status_code == 404

        assert client.delete("/models/b").status_code == 200
        gone = client.delete("/models/b")
        assert gone.status_code == 404 and gone.json()["error"] == "ModelNotFound"
        assert invoke(client, "b").status_code == 404
        assert [m["modelName"] for m in client.get("/models").json()["models"]] == ["a", "c"]
        # loaded again after a delete, with its own script and helper module
        assert load(client, "b", b).status_code == 200
        assert invoke(client, "b").json() == [pytest.approx(expected(1))]
        assert invoke(client, "a").json() == [pytest.approx(expected(0))]

        assert load(client, "x", tmp_path / "nope").status_code == 400
        metrics = client.get("/metrics").text
        assert 'Invocations_total{ModelName="a"}' in metrics
        assert "LoadedModelCount 3.0" in metrics


def test_lru_eviction_507_and_concurrent_first_loads(tmp_path: Path, home: Path) -> None:
    models = [make_model(tmp_path / "m" / n, i, padding_mb=9) for i, n in enumerate("abc")]
    huge = make_model(tmp_path / "m" / "huge", 3, padding_mb=30)
    big = tmp_path / "m" / "big"
    (big / "code").mkdir(parents=True)
    (big / "code" / "inference.py").write_text(BIG_IN_MEMORY)
    with ServerProcess(["--multi-model", str(tmp_path / "models"), "--models-memory-mb", "25"],
                       home=home) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        # eight concurrent first loads of one model: one loads it, the others are told it is loaded
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = sorted(pool.map(lambda _: load(client, "a", models[0]).status_code, range(8)))
        assert statuses == [200] + [409] * 7
        assert loads(models[0]) == 1
        assert invoke(client, "a").json() == [pytest.approx(expected(0))]

        assert load(client, "b", models[1]).status_code == 200
        assert invoke(client, "a").status_code == 200  # a is now more recently used than b
        assert load(client, "c", models[2]).status_code == 200  # 3 x 9 MB > 25 MB: b goes
        names = [m["modelName"] for m in client.get("/models").json()["models"]]
        assert "c" in names and "b" not in names
        assert invoke(client, "b").status_code == 404
        # what a router does on 404: load again, then invoke
        assert load(client, "b", models[1]).status_code == 200
        assert invoke(client, "b").json() == [pytest.approx(expected(1))]
        assert loads(models[1]) == 2
        loaded = [client.get(f"/models/{m['modelName']}").json() for m in client.get("/models").json()["models"]]
        assert sum(m["memoryBytes"] for m in loaded) <= 25 * MB

        too_big = load(client, "huge", huge)  # its files alone exceed the budget
        assert too_big.status_code == 507 and too_big.json()["error"] == "InsufficientMemory"
        in_memory = load(client, "big", big)  # small on disk, 48 MB once loaded
        assert in_memory.status_code == 507, in_memory.text
        assert client.get("/models/big").status_code == 404
        assert invoke(client, "b").status_code == 200  # the server goes on serving
        assert "ModelEvictions_total" in client.get("/metrics").text


def test_environment_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_MULTI_MODEL", "true")
    monkeypatch.setenv("MAINSAIL_MULTI_MODEL_MEMORY_MB", "12.5")
    assert multi_model_from_env()
    assert memory_budget_bytes() == int(12.5 * MB)
    assert memory_budget_bytes(3) == 3 * MB
    monkeypatch.setenv("SAGEMAKER_MULTI_MODEL", "false")
    assert not multi_model_from_env()


def test_sagemaker_multi_model_env_starts_multi_model_mode(tmp_path: Path, home: Path) -> None:
    a = make_model(tmp_path / "m" / "a", 0)
    with ServerProcess([str(tmp_path / "models")], env={"SAGEMAKER_MULTI_MODEL": "true"}, home=home) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/models").json() == {"models": []}
        assert load(client, "a", a).status_code == 200
        assert invoke(client, "a").json() == [pytest.approx(expected(0))]
