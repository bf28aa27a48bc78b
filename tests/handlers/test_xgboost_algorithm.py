"""A model trained by SageMaker's built-in XGBoost algorithm (``xgboost-model``) serves as there."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import xgboost

from mainsail.handlers import build_handler
from mainsail.handlers.xgboost_algorithm import XGBoostAlgorithmHandler
from tests.conftest import live_app


def train(model_dir: Path, objective: str = "binary:logistic", pickled: bool = False) -> xgboost.Booster:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    booster = xgboost.train({"objective": objective}, xgboost.DMatrix(X, label=y), num_boost_round=5)
    model_dir.mkdir(parents=True, exist_ok=True)
    if pickled:
        (model_dir / "xgboost-model").write_bytes(pickle.dumps(booster))
    else:
        booster.save_model(str(model_dir / "xgboost-model"))
    return booster


@pytest.mark.parametrize("pickled", [False, True])
def test_csv_and_libsvm_in_csv_and_json_out(tmp_path: Path, pickled: bool) -> None:
    booster = train(tmp_path, pickled=pickled)
    handler = build_handler(tmp_path, None)
    assert isinstance(handler, XGBoostAlgorithmHandler)
    rows = np.array([[0.5, -1.0, 0.2, 0.0], [1.5, 0.3, -0.7, 2.0]])
    expected = booster.predict(xgboost.DMatrix(rows))
    with live_app(handler) as app:
        body = "\n".join(",".join(str(v) for v in row) for row in rows) + "\n"
        r = app.client.post("/invocations", content=body, headers={"content-type": "text/csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
        np.testing.assert_allclose([float(v) for v in r.text.split()], expected, rtol=1e-6)
        r = app.client.post("/invocations", content="1 1:0.5 2:-1.0 3:0.2\n0 1:1.5 2:0.3 3:-0.7 4:2.0",
                            headers={"content-type": "text/libsvm", "accept": "application/json"})
        assert r.status_code == 200, r.text
        scores = [p["score"] for p in json.loads(r.text)["predictions"]]
        np.testing.assert_allclose(scores, expected, rtol=1e-6)
        assert app.client.post("/invocations", content=b"", headers={"content-type": "text/csv"}).status_code == 204
        r = app.client.post("/invocations", content="1,2", headers={"content-type": "text/csv"})
        assert r.status_code == 400 and "expected 4 features" in r.json()["message"]
        r = app.client.post("/invocations", content="1,2,3,4", headers={"content-type": "application/json"})
        assert r.status_code == 415
