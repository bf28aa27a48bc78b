"""The built-in tabular handler against the libraries' own predictions and the reference rules."""

from __future__ import annotations

import io
import json
import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mainsail.features.artifacts import write_feature_columns
from mainsail.handlers.base import Invocation
from mainsail.handlers.tabular import TabularHandler
from tests.conftest import LiveApp, live_app

NUMERIC = ["num1", "num2", "num3"]
CATEGORICAL = ["color", "size"]
FEATURES = NUMERIC + CATEGORICAL
RISK = {
    "color": {"bins": {"red": 0.8, "green": 0.3, "blue": 0.5}, "default_bin": 0.45},
    "size": {"bins": {"1": 0.2, "2": 0.6, "3": 0.9}, "default_bin": 0.5},
}
IMPUTE = {"num1": 0.25, "num3": -1.5}


def reference_row(record: dict[str, Any]) -> list[float]:
    """The reference handler's single-record rules, written out plainly (the test oracle)."""
    row = []
    for name in FEATURES:
        value = record.get(name)
        if name in RISK:
            value = RISK[name]["bins"].get(str(value), RISK[name]["default_bin"])
        if name in IMPUTE and (value is None or (isinstance(value, float) and math.isnan(value))):
            value = IMPUTE[name]
        if value is None:
            row.append(math.nan)
            continue
        try:
            row.append(float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            row.append(0.0)
    return row


def interpolate(points: list[tuple[float, float]], r: float) -> float:
    if r <= points[0][0]:
        return points[0][1]
    if r >= points[-1][0]:
        return points[-1][1]
    for (x1, y1), (x2, y2) in zip(points, points[1:]):
        if x1 <= r <= x2:
            return y1 if x2 == x1 else y1 + (y2 - y1) * (r - x1) / (x2 - x1)
    return points[-1][1]


def synthetic(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "num1": rng.normal(size=n), "num2": rng.normal(size=n), "num3": rng.uniform(-2, 2, size=n),
        "color": rng.choice(["red", "green", "blue"], size=n), "size": rng.choice([1, 2, 3], size=n),
    })


def train_xgboost(model_dir: Path, classes: int, calibration: str | None) -> Any:
    import xgboost

    frame = synthetic(400, 1)
    X = np.array([reference_row(r) for r in frame.to_dict(orient="records")], dtype=np.float32)
    logits = X[:, 0] + X[:, 3] * 2 - X[:, 4]
    if classes == 2:
        y = (logits > np.median(logits)).astype(int)
        params = {"objective": "binary:logistic", "max_depth": 3}
    else:
        y = np.digitize(logits, np.quantile(logits, [0.33, 0.66]))
        params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 3}
    booster = xgboost.train(params, xgboost.DMatrix(X, label=y, feature_names=FEATURES), num_boost_round=15)
    model_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(model_dir / "xgboost_model.bst"))
    write_feature_columns(model_dir / "feature_columns.txt", FEATURES)
    (model_dir / "risk_table_map.pkl").write_bytes(pickle.dumps(RISK))
    (model_dir / "impute_dict.pkl").write_bytes(pickle.dumps({k: np.float64(v) for k, v in IMPUTE.items()}))
    tables: dict[str, list[tuple[float, float]]] = {}
    if calibration is not None:
        cal = model_dir / "calibration"
        cal.mkdir()
        curve = [(float(x), float(x) ** 0.5) for x in np.linspace(0, 1, 11)]
        if calibration == "percentile":
            (cal / "percentile_score.pkl").write_bytes(pickle.dumps(curve))
            tables["1"] = curve
        elif calibration == "binary":
            (cal / "calibration_model.pkl").write_bytes(pickle.dumps([(np.float64(x), np.float64(y)) for x, y in curve]))
            tables["1"] = curve
        else:
            (cal / "calibration_models").mkdir()
            for k in (0, 2):
                points = [(float(x), float(x) ** (1 + k / 2)) for x in np.linspace(0, 1, 6)]
                (cal / "calibration_models" / f"calibration_model_class_{k}.pkl").write_bytes(pickle.dumps(points))
                tables[str(k)] = points
    return booster, tables


def expected(booster: Any, records: list[dict[str, Any]], tables: dict[str, Any], calibration: str | None):
    import xgboost

    X = np.array([reference_row(r) for r in records], dtype=np.float32)
    raw = booster.predict(xgboost.DMatrix(X, feature_names=FEATURES))
    if raw.ndim == 1:
        raw = np.column_stack([1 - raw, raw])
    cal = raw.copy()
    if calibration in ("percentile", "binary"):
        for i in range(len(raw)):
            cal[i, 1] = interpolate(tables["1"], raw[i, 1])
            cal[i, 0] = 1 - cal[i, 1]
    elif calibration == "multiclass":
        for k, points in tables.items():
            cal[:, int(k)] = [interpolate(points, r) for r in raw[:, int(k)]]
        cal = cal / cal.sum(axis=1, keepdims=True)
    return raw, cal


def check_json(body: dict[str, Any], raw: np.ndarray, cal: np.ndarray) -> None:
    predictions = body["predictions"]
    assert len(predictions) == len(raw)
    for record, r, c in zip(predictions, raw, cal):
        label = f"class-{int(np.argmax(r))}"
        if raw.shape[1] == 2:
            assert list(record) == ["legacy-score", "score-percentile", "calibrated-score",
                                    "custom-output-label", "output-label"]
            assert float(record["legacy-score"]) == pytest.approx(float(r[1]), abs=1e-5)
            assert float(record["calibrated-score"]) == pytest.approx(float(c[1]), abs=1e-5)
            assert record["score-percentile"] == record["calibrated-score"]
        else:
            keys = [k for i in range(1, raw.shape[1] + 1) for k in (f"prob_{i:02d}", f"calibrated_prob_{i:02d}")]
            assert list(record) == keys + ["custom-output-label", "output-label"]
            for i in range(raw.shape[1]):
                assert float(record[f"prob_{i + 1:02d}"]) == pytest.approx(float(r[i]), abs=1e-5)
                assert float(record[f"calibrated_prob_{i + 1:02d}"]) == pytest.approx(float(c[i]), abs=1e-5)
        assert record["custom-output-label"] == record["output-label"] == label


def messy_records(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    records = synthetic(n, seed).to_dict(orient="records")
    for i, record in enumerate(records):
        record["size"] = int(record["size"])
        if i % 5 == 1:
            record["num1"] = None           # imputed
        if i % 5 == 2:
            record["num2"] = None           # no imputation value: missing for XGBoost
        if i % 7 == 3:
            record["color"] = "purple"      # unseen category -> default bin
        if i % 6 == 4:
            record["num3"] = "not-a-number"  # a string in a numeric column -> 0.0
        if i % 4 == 0:
            record["extra"] = float(rng.normal())  # extra columns are ignored
    return records


@pytest.fixture(scope="module", params=[(2, None), (2, "binary"), (2, "percentile"), (3, None), (3, "multiclass")],
                ids=["binary", "binary-calibrated", "percentile", "multiclass", "multiclass-calibrated"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveApp, Any]]:
    classes, calibration = request.param
    model_dir = tmp_path_factory.mktemp("xgb")
    booster, tables = train_xgboost(model_dir, classes, calibration)
    with live_app(TabularHandler(model_dir)) as app:
        yield app, (booster, tables, calibration)


def test_single_json_record_with_shuffled_keys(served: tuple[LiveApp, Any]) -> None:
    app, (booster, tables, calibration) = served
    for record in messy_records(12, 3):
        shuffled = dict(reversed(list(record.items())))
        r = app.client.post("/invocations", content=json.dumps(shuffled), headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        check_json(r.json(), *expected(booster, [record], tables, calibration))


@pytest.mark.parametrize("fmt", ["json-list", "instances", "ndjson", "parquet", "csv"])
def test_multi_record_formats(served: tuple[LiveApp, Any], fmt: str) -> None:
    app, (booster, tables, calibration) = served
    records = messy_records(25, 4)
    frame = pd.DataFrame(records)
    if fmt == "json-list":
        body, ctype = json.dumps(records).encode(), "application/json"
    elif fmt == "instances":
        body, ctype = json.dumps({"instances": records}).encode(), "application/json"
    elif fmt == "ndjson":
        body, ctype = "\n".join(json.dumps(r) for r in records).encode(), "application/jsonlines"
    elif fmt == "parquet":
        buf = io.BytesIO()
        frame = frame.drop(columns=["extra"])
        frame["num3"] = frame["num3"].map(lambda v: None if v is None else str(v))
        frame.to_parquet(buf)
        body, ctype = buf.getvalue(), "application/x-parquet"
        records = pd.read_parquet(io.BytesIO(body)).to_dict(orient="records")
    else:
        body, ctype = frame[FEATURES].to_csv(header=False, index=False).encode(), "text/csv"
        records = [dict(zip(FEATURES, row)) for row in pd.read_csv(io.BytesIO(body), header=None).itertuples(index=False)]
        records = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]
    r = app.client.post("/invocations", content=body, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    check_json(r.json(), *expected(booster, records, tables, calibration))


def test_csv_answers_in_the_reference_layout(served: tuple[LiveApp, Any]) -> None:
    app, (booster, tables, calibration) = served
    records = [dict(zip(FEATURES, [0.5, -1.0, 1.5, "red", 2])), dict(zip(FEATURES, [1.5, 0.0, -0.5, "blue", 3]))]
    body = "0.5,-1.0,1.5,red,2\n1.5,0.0,-0.5,blue,3\n"
    r = app.client.post("/invocations", content=body, headers={"content-type": "text/csv", "accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    raw, cal = expected(booster, records, tables, calibration)
    lines = r.text.split("\n")
    assert lines[-1] == "" and len(lines) == 3
    for line, rr, cc in zip(lines, raw, cal):
        if raw.shape[1] == 2:
            label = "class-1" if rr[1] > rr[0] else "class-0"
            four = [f"{round(float(v), 4):.4f}" for v in (rr[1], cc[1], cc[1])]
            assert line == ",".join(four + [label])
        else:
            cells = [f"{round(float(v), 4):.4f}" for pair in zip(rr, cc) for v in pair]
            assert line == ",".join(cells + [f"class-{int(np.argmax(rr))}"])


def test_fast_and_batch_paths_give_identical_numbers(tmp_path: Path) -> None:
    train_xgboost(tmp_path, 2, "binary")
    fast, slow = TabularHandler(tmp_path), TabularHandler(tmp_path, fast_path=False)
    fast.load()
    slow.load()
    for record in messy_records(30, 9):
        for body, ctype in ((json.dumps(record).encode(), "application/json"),
                            (",".join("" if record[f] is None else str(record[f]) for f in FEATURES).encode(),
                             "text/csv")):
            a = fast.invoke(Invocation(body, ctype, "application/json"))
            b = slow.invoke(Invocation(body, ctype, "application/json"))
            assert a.body == b.body


@pytest.mark.parametrize("classes,calibration", [(2, "binary"), (3, "multiclass")])
def test_multi_record_bodies_read_without_pandas_give_the_frame_paths_bytes(
        tmp_path: Path, classes: int, calibration: str) -> None:
    train_xgboost(tmp_path, classes, calibration)
    fast, slow = TabularHandler(tmp_path), TabularHandler(tmp_path, fast_path=False)
    fast.load()
    slow.load()
    records = messy_records(40, 13)
    for i, record in enumerate(records):  # floats and ints mixed in a column; sizes as numbers and text
        if i % 3 == 0:
            record["size"] = float(record["size"])
        if i % 8 == 5:
            record["size"] = str(record["size"])
        if i % 9 == 2:
            record["num2"] = str(record["num2"])
    gappy = [dict(r) for r in records[:6]]
    del gappy[2]["num1"]  # a column missing from one record: missing data, as in the frame path

    def csv_field(value: Any) -> str:
        return "" if value is None else str(value)

    def csv(rows: list[dict[str, Any]]) -> bytes:
        return "".join(",".join(csv_field(r[f]) for f in FEATURES) + "\n" for r in rows).encode()

    bodies = [
        (json.dumps(records).encode(), "application/json"),
        (json.dumps({"instances": records}).encode(), "application/json"),
        ("\n".join(json.dumps(r) for r in records).encode() + b"\n", "application/jsonlines"),
        (csv(records), "text/csv"),
        (csv(records).rstrip(b"\n"), "text/csv; charset=utf-8"),
        (json.dumps(gappy).encode(), "application/json"),
        (json.dumps(records[:1]).encode(), "application/json"),
        # Text that is hard to type: numbers and words in one column, NaN words, exponents, signs,
        # blanks around numbers, integers beyond 64 bits, underscores.
        (b"1,nan,1e3,red,1\n+2, 3 ,NA,green,2.0\nabc,-4.5,null,BLUE,3\n"
         b"99999999999999999999999,1_000,-0,purple,x\n,,,,\n", "text/csv"),
        (json.dumps([{"num1": "1e3", "num2": " 7 ", "num3": "NaN", "color": 1, "size": True},
                     {"num1": 10**20, "num2": [1], "num3": {"a": 1}, "color": None, "size": "2"},
                     {"num1": -0.0, "num2": "inf", "num3": "1_0", "color": "red", "size": 3}]).encode(),
         "application/json"),
    ]
    for body, ctype in bodies:
        for accept in ("application/json", "text/csv"):
            a = fast.invoke(Invocation(body, ctype, accept))
            b = slow.invoke(Invocation(body, ctype, accept))
            assert (a.body, a.content_type) == (b.body, b.content_type), (ctype, body[:80])
    # The records path really is taken for plain records, and left for anything else.
    assert fast._records_features(bodies[0][0], "application/json", "application/json") is not None
    assert fast._records_features(bodies[3][0], "text/csv", "text/csv") is not None
    assert fast._records_features(bodies[5][0], "application/json", "application/json") is None


def test_request_id_is_echoed(served: tuple[LiveApp, Any]) -> None:
    app, _ = served
    r = app.client.post("/invocations", content=json.dumps(messy_records(1, 1)[0]),
                        headers={"content-type": "application/json", "x-amzn-sagemaker-inference-id": "abc-1"})
    assert r.json()["request_id"] == "abc-1"


@pytest.mark.parametrize(("body", "ctype", "status", "needle"), [
    (b'{"num1": 1, "num2": 2}', "application/json", 400, "num3, color, size"),
    (b"1,2,3\n", "text/csv", 400, "expected 5 columns in feature_columns.txt order, got 3"),
    (b"1,2,3\n4,5,6\n", "text/csv", 400, "expected 5 columns"),
    (b'{"num1": ', "application/json", 400, "invalid JSON"),
    (b"", "application/json", 400, "empty"),
    (b"[]", "application/json", 400, "no records"),
    (b"1,2,3,red,1", "text/plain", 415, "text/plain"),
    (b"PAR1garbage", "application/x-parquet", 400, ""),
])
def test_bad_input_is_a_clear_4xx_and_the_server_goes_on(
        served: tuple[LiveApp, Any], body: bytes, ctype: str, status: int, needle: str) -> None:
    app, _ = served
    r = app.client.post("/invocations", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]
    good = app.client.post("/invocations", content=b"0.1,0.2,0.3,red,1", headers={"content-type": "text/csv"})
    assert good.status_code == 200


def test_unsupported_accept_is_415(served: tuple[LiveApp, Any]) -> None:
    app, _ = served
    r = app.client.post("/invocations", content=b"0.1,0.2,0.3,red,1",
                        headers={"content-type": "text/csv", "accept": "application/xml"})
    assert r.status_code == 415


@pytest.mark.parametrize("library", ["lightgbm", "sklearn"])
@pytest.mark.parametrize("classes", [2, 3])
def test_lightgbm_and_sklearn_models_match_their_own_predict(tmp_path: Path, library: str, classes: int) -> None:
    frame = synthetic(300, 5)
    X = np.array([reference_row(r) for r in frame.to_dict(orient="records")])
    y = (X[:, 0] + X[:, 3] > 0.5).astype(int) if classes == 2 else np.digitize(X[:, 0], [-0.5, 0.5])
    if library == "lightgbm":
        import lightgbm

        params = {"objective": "binary" if classes == 2 else "multiclass", "verbose": -1, "num_leaves": 7}
        if classes > 2:
            params["num_class"] = classes
        booster = lightgbm.train(params, lightgbm.Dataset(X, label=y, feature_name=FEATURES), num_boost_round=10)
        booster.save_model(str(tmp_path / "model.txt"))
        predict = booster.predict
    else:
        import joblib
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(pd.DataFrame(X, columns=FEATURES), y)
        joblib.dump(model, tmp_path / "model.joblib")
        predict = model.predict_proba  # type: ignore[assignment]
    (tmp_path / "risk_table_map.pkl").write_bytes(pickle.dumps(RISK))
    (tmp_path / "impute_dict.pkl").write_bytes(pickle.dumps(IMPUTE))
    handler = TabularHandler(tmp_path)  # no feature_columns.txt: the model's own feature names
    handler.load()
    records = messy_records(20, 6)
    reply = handler.invoke(Invocation(json.dumps(records).encode(), "application/json", "application/json"))
    rows = np.array([reference_row(r) for r in records])
    if library == "sklearn":
        rows = pd.DataFrame(rows, columns=FEATURES)
    raw = np.asarray(predict(rows))
    if raw.ndim == 1:
        raw = np.column_stack([1 - raw, raw])
    check_json(json.loads(reply.body), raw, raw)
    single = handler.invoke(Invocation(json.dumps(records[0]).encode(), "application/json", "application/json"))
    check_json(json.loads(single.body), raw[:1], raw[:1])


def test_a_model_without_feature_names_needs_feature_columns(tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    from mainsail.errors import ModelLoadError
    from mainsail.serve.runtime import ModelRuntime

    joblib.dump(LogisticRegression().fit(np.eye(4), [0, 1, 0, 1]), tmp_path / "model.joblib")
    with pytest.raises(ModelLoadError, match="feature_columns.txt is missing"):
        ModelRuntime(TabularHandler(tmp_path)).load()
    write_feature_columns(tmp_path / "feature_columns.txt", ["a", "b", "c", "d"])
    handler = TabularHandler(tmp_path)
    handler.load()
    reply = handler.invoke(Invocation(b"1,0,0,0", "text/csv", "text/csv"))
    assert reply.body.decode().endswith(",class-0\n")


def test_a_regression_booster_is_refused_with_a_hint(tmp_path: Path) -> None:
    import xgboost

    from mainsail.errors import ModelLoadError

    booster = xgboost.train({"objective": "reg:squarederror"}, xgboost.DMatrix(np.eye(3), label=[1, 2, 3]), 2)
    booster.save_model(str(tmp_path / "xgboost_model.json"))
    write_feature_columns(tmp_path / "feature_columns.txt", ["a", "b", "c"])
    with pytest.raises(ModelLoadError, match="reg:squarederror"):
        TabularHandler(tmp_path).load()


def test_a_broken_calibration_serves_raw_scores_for_both(tmp_path: Path) -> None:
    booster, _ = train_xgboost(tmp_path, 2, None)
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "calibration_model.pkl").write_bytes(b"not a pickle")
    handler = TabularHandler(tmp_path)
    handler.load()
    record = messy_records(1, 2)[0]
    body = json.loads(handler.invoke(Invocation(json.dumps(record).encode(), "application/json", "application/json")).body)
    raw, _ = expected(booster, [record], {}, None)
    check_json(body, raw, raw)
