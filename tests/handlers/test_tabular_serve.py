"""`mainsail serve DIR` picks the built-in tabular handler when the directory has no script."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.handlers.test_tabular_handler import check_json, expected, messy_records, train_xgboost

pytestmark = pytest.mark.slow


def test_serve_a_reference_layout_directory_with_no_user_code(tmp_path: Path, home: Path) -> None:
    model_dir = tmp_path / "model"
    booster, tables = train_xgboost(model_dir, 2, "binary")
    with ServerProcess([str(model_dir), "--workers", "2"], home=home) as server:
        records = messy_records(5, 11)
        r = httpx.post(server.url + "/invocations", content=json.dumps(records[0]),
                       headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        check_json(r.json(), *expected(booster, records[:1], tables, "binary"))
        r = httpx.post(server.url + "/invocations", content="\n".join(json.dumps(x) for x in records),
                       headers={"content-type": "application/jsonlines", "accept": "text/csv"})
        assert r.status_code == 200
        assert len(r.text.splitlines()) == 5
        r = httpx.post(server.url + "/invocations", content=b'{"num1": 1}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and "num2, num3, color, size" in r.json()["message"]
    assert "tabular handler: xgboost model xgboost_model.bst, 5 features, 2 risk tables" in server.log()
