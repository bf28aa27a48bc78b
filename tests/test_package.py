"""package_model / fit_and_package: real XGBoost, LightGBM and scikit-learn models, files read back."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mainsail.features.artifacts import load_data_pickle, read_feature_columns
from mainsail.features.calibration import LookupTable, load_calibrator
from mainsail.features.fitting import (
    fit_imputation,
    fit_isotonic_table,
    fit_percentile_table,
    fit_risk_tables,
    transform_features,
)
from mainsail.package import fit_and_package, package_model

NUMERIC = ["num1", "num2"]
CATS = ["color", "size"]
FEATURES = NUMERIC + CATS


def synthetic(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "num1": rng.normal(size=n), "num2": rng.normal(size=n),
        "color": rng.choice(["red", "green", "blue"], size=n), "size": rng.choice([1, 2, 3], size=n),
    })
    frame.loc[::9, "num1"] = np.nan
    logit = np.nan_to_num(frame["num1"].to_numpy()) + (frame["color"] == "red") * 1.5 - frame["size"] * 0.4
    frame["label"] = (logit + rng.normal(scale=0.5, size=n) > 0).astype(int)
    return frame


FRAME = synthetic()
RISK = fit_risk_tables(FRAME, "label", CATS, smooth_factor=0.01, count_threshold=2)
IMPUTE = fit_imputation(FRAME, NUMERIC)
X = transform_features(FRAME, FEATURES, RISK, IMPUTE)
Y = FRAME["label"].to_numpy()


def xgb_booster(classes: int = 2) -> Any:
    import xgboost

    y = Y if classes == 2 else np.arange(len(Y)) % classes
    params: dict[str, Any] = {"objective": "binary:logistic", "max_depth": 2}
    if classes > 2:
        params = {"objective": "multi:softprob", "num_class": classes, "max_depth": 2}
    return xgboost.train(params, xgboost.DMatrix(X, label=y), num_boost_round=8)


def read_dir(model_dir: Path) -> dict[str, Any]:
    return {
        "files": sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()),
        "columns": read_feature_columns(model_dir / "feature_columns.txt"),
        "risk": load_data_pickle(model_dir / "risk_table_map.pkl"),
        "impute": load_data_pickle(model_dir / "impute_dict.pkl"),
        "hp": json.loads((model_dir / "hyperparameters.json").read_text()),
    }


def assert_calibration_pickle(path: Path, points: list[tuple[float, float]]) -> None:
    data = load_data_pickle(path)
    assert type(data) is list and len(data) == len(points)
    assert all(type(p) is tuple and len(p) == 2 and all(type(v) is np.float64 for v in p) for p in data)
    assert [(float(a), float(b)) for a, b in data] == points


def test_xgboost_booster_directory(tmp_path: Path) -> None:
    import xgboost

    booster = xgb_booster()
    points = fit_percentile_table(booster.predict(xgboost.DMatrix(X)))
    out = package_model(tmp_path / "m", booster, feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK,
                        impute_values=IMPUTE, calibration={"kind": "percentile", "points": points},
                        hyperparameters={"id_name": "order_id", "label_name": "label", "eta": 0.3})
    assert out == tmp_path / "m"
    got = read_dir(out)
    assert got["files"] == ["calibration/percentile_score.pkl", "feature_columns.txt", "feature_importance.json",
                            "hyperparameters.json", "impute_dict.pkl", "risk_table_map.pkl", "xgboost_model.bst"]
    assert got["columns"] == FEATURES
    assert got["risk"] == RISK
    for table in got["risk"].values():
        assert set(table) == {"bins", "default_bin"} and type(table["default_bin"]) is float
        assert all(type(k) is str and type(v) is float for k, v in table["bins"].items())
    assert set(got["risk"]["size"]["bins"]) == {"1", "2", "3"}
    assert got["impute"] == IMPUTE and all(type(v) is float for v in got["impute"].values())
    hp = got["hp"]
    assert hp["tab_field_list"] == NUMERIC and hp["cat_field_list"] == CATS
    assert hp["full_field_list"] == FEATURES + ["order_id", "label"]
    assert (hp["is_binary"], hp["num_classes"], hp["model_class"]) == (True, 2, "xgboost")
    assert (hp["id_name"], hp["label_name"], hp["eta"], hp["multiclass_categories"]) == ("order_id", "label", 0.3, [0, 1])
    text = (out / "hyperparameters.json").read_text()
    assert text == json.dumps(hp, indent=2, sort_keys=True) + "\n"
    assert_calibration_pickle(out / "calibration/percentile_score.pkl", points)
    loaded = xgboost.Booster(model_file=str(out / "xgboost_model.bst"))
    assert loaded.feature_names == FEATURES
    assert booster.feature_names is None  # the caller's booster is left as it was
    dmatrix = xgboost.DMatrix(X, feature_names=FEATURES)
    np.testing.assert_array_equal(loaded.predict(dmatrix), booster.predict(xgboost.DMatrix(X)))
    assert set(json.loads((out / "feature_importance.json").read_text())) <= set(FEATURES)


def test_xgb_classifier_keeps_the_early_stopping_trees(tmp_path: Path) -> None:
    import xgboost

    frame = pd.DataFrame(X, columns=FEATURES)
    model = xgboost.XGBClassifier(n_estimators=40, max_depth=2, early_stopping_rounds=2, eval_metric="logloss")
    model.fit(frame[:200], Y[:200], eval_set=[(frame[200:], Y[200:])], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    out = package_model(tmp_path / "m", model, feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK)
    loaded = xgboost.Booster(model_file=str(out / "xgboost_model.bst"))
    assert loaded.feature_names == FEATURES
    np.testing.assert_allclose(loaded.inplace_predict(X), model.predict_proba(frame)[:, 1], rtol=1e-6)
    assert load_data_pickle(out / "impute_dict.pkl") == {}
    assert not (out / "calibration").exists()


def test_lightgbm_model(tmp_path: Path) -> None:
    import lightgbm

    model = lightgbm.LGBMClassifier(n_estimators=10, num_leaves=4, verbose=-1).fit(X, Y)
    out = package_model(tmp_path / "m", model, feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK,
                        impute_values=IMPUTE)
    got = read_dir(out)
    assert "model.txt" in got["files"] and got["hp"]["model_class"] == "lightgbm"
    loaded = lightgbm.Booster(model_file=str(out / "model.txt"))
    np.testing.assert_allclose(loaded.predict(X), np.asarray(model.predict_proba(X))[:, 1], rtol=1e-12)


def test_sklearn_model_multiclass_calibration(tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression

    y = np.arange(len(X)) % 3
    model = LogisticRegression(max_iter=200).fit(X, y)
    tables = {0: fit_percentile_table(model.predict_proba(X)[:, 0]), "2": [(0.0, 0.1), (1.0, 0.9)]}
    out = package_model(tmp_path / "m", model, feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK,
                        calibration={"kind": "multiclass", "points": tables})
    got = read_dir(out)
    assert got["files"] == ["calibration/calibration_models/calibration_model_class_0.pkl",
                            "calibration/calibration_models/calibration_model_class_2.pkl",
                            "feature_columns.txt", "hyperparameters.json", "impute_dict.pkl", "model.joblib",
                            "risk_table_map.pkl"]
    hp = got["hp"]
    assert (hp["is_binary"], hp["num_classes"], hp["model_class"], hp["multiclass_categories"]) == \
        (False, 3, "sklearn", [0, 1, 2])
    assert_calibration_pickle(out / "calibration/calibration_models/calibration_model_class_2.pkl",
                              [(0.0, 0.1), (1.0, 0.9)])
    np.testing.assert_array_equal(joblib.load(out / "model.joblib").predict_proba(X), model.predict_proba(X))
    calibrator = load_calibrator(out)
    assert calibrator is not None and calibrator.kind == "multiclass" and sorted(calibrator.tables) == [0, 2]


def test_xgboost_multiclass_and_binary_tables(tmp_path: Path) -> None:
    booster = xgb_booster(classes=3)
    out = package_model(tmp_path / "multi", booster, feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK,
                        calibration={"kind": "multiclass", "points": {1: [(0.0, 0.0), (1.0, 1.0)]}})
    assert read_dir(out)["hp"]["num_classes"] == 3
    points = fit_isotonic_table(np.linspace(0, 1, 50), np.arange(50) % 2, n_points=11)
    out = package_model(tmp_path / "bin", xgb_booster(), feature_columns=FEATURES, cat_columns=CATS,
                        risk_tables=RISK, calibration={"kind": "binary", "points": np.array(points)})
    assert_calibration_pickle(out / "calibration/calibration_model.pkl", points)
    calibrator = load_calibrator(out)
    assert calibrator is not None and calibrator.kind == "binary"
    # A loaded Calibrator packages back to the same table.
    again = package_model(tmp_path / "again", xgb_booster(), feature_columns=FEATURES, cat_columns=CATS,
                          risk_tables=RISK, calibration=calibrator)
    reloaded = load_calibrator(again)
    assert reloaded is not None and dict(reloaded.tables) == dict(calibrator.tables)


def test_archive_has_the_files_at_its_top_level(tmp_path: Path) -> None:
    result = package_model(tmp_path / "model", xgb_booster(), feature_columns=FEATURES, cat_columns=CATS,
                           risk_tables=RISK, impute_values=IMPUTE,
                           calibration={"kind": "percentile", "points": [(0.0, 0.0), (0.5, 0.4), (1.0, 1.0)]},
                           archive=True)
    assert result == tmp_path / "model.tar.gz"
    with tarfile.open(result) as tar:
        names = tar.getnames()
        assert all(not n.startswith(("/", "./", "..")) and ".." not in n.split("/") for n in names)
        files = sorted(m.name for m in tar.getmembers() if m.isfile())
        assert all(m.uid == 0 and m.uname == "" for m in tar.getmembers())
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert files == sorted(p.relative_to(tmp_path / "model").as_posix()
                           for p in (tmp_path / "model").rglob("*") if p.is_file())
    assert "xgboost_model.bst" in files and "calibration/percentile_score.pkl" in files
    assert read_dir(tmp_path / "unpacked") == read_dir(tmp_path / "model")
    assert sorted(os.listdir(tmp_path)) == ["model", "model.tar.gz", "unpacked"]  # no staging leftovers


def test_fit_and_package_fits_an_unfitted_model_and_serves_the_same_numbers(tmp_path: Path) -> None:
    import xgboost

    from mainsail.handlers.tabular import TabularHandler

    model = xgboost.XGBClassifier(n_estimators=10, max_depth=2)
    frame = FRAME.assign(label=FRAME["label"].where(FRAME.index % 50 != 0, -1))  # a few unlabelled rows
    out = fit_and_package(tmp_path / "m", model, frame, label="label", feature_columns=FEATURES, cat_columns=CATS,
                          calibrate="percentile", smooth_factor=0.01, count_threshold=2)
    got = read_dir(out)
    assert got["risk"] == fit_risk_tables(frame, "label", CATS, smooth_factor=0.01, count_threshold=2)
    assert got["impute"] == IMPUTE
    assert got["hp"]["label_name"] == "label"
    matrix = transform_features(frame, FEATURES, got["risk"], got["impute"])
    keep = frame["label"].to_numpy() != -1
    reference = xgboost.XGBClassifier(n_estimators=10, max_depth=2).fit(
        pd.DataFrame(matrix[keep], columns=FEATURES), frame["label"].to_numpy()[keep])
    scores = reference.predict_proba(pd.DataFrame(matrix, columns=FEATURES))[:, 1]
    np.testing.assert_allclose(model.predict_proba(pd.DataFrame(matrix, columns=FEATURES))[:, 1], scores)
    table = LookupTable.from_points(fit_percentile_table(scores))
    assert_calibration_pickle(out / "calibration/percentile_score.pkl", table.points())

    handler = TabularHandler(out)
    handler.load()
    body = frame[FEATURES].to_json(orient="records").encode()
    raw, calibrated = handler.score(handler.features(body, "application/json"))
    np.testing.assert_allclose(raw[:, 1], scores, rtol=1e-6)
    np.testing.assert_allclose(calibrated[:, 1], table(raw[:, 1]), rtol=1e-6)


def test_fit_and_package_isotonic_with_given_scores(tmp_path: Path) -> None:
    import lightgbm

    model = lightgbm.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(
        pd.DataFrame(X, columns=FEATURES), Y)
    scores = np.linspace(0.0, 1.0, len(FRAME))
    out = fit_and_package(tmp_path / "m", model, FRAME, label="label", feature_columns=FEATURES, cat_columns=CATS,
                          calibrate="isotonic", scores=scores, calibration_bins=21, archive=True)
    assert out.name == "m.tar.gz"
    assert_calibration_pickle(tmp_path / "m/calibration/calibration_model.pkl",
                              fit_isotonic_table(scores, Y, n_points=21))
    with pytest.raises(ValueError, match="one class-1 probability per row"):
        fit_and_package(tmp_path / "n", model, FRAME, label="label", feature_columns=FEATURES, cat_columns=CATS,
                        calibrate="isotonic", scores=scores[:10])


def test_fit_and_package_sklearn_without_calibration(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    out = fit_and_package(tmp_path / "m", RandomForestClassifier(n_estimators=5, random_state=0), FRAME,
                          label="label", feature_columns=FEATURES, cat_columns=CATS)
    got = read_dir(out)
    assert got["hp"]["model_class"] == "sklearn" and "calibration" not in " ".join(got["files"])


def test_overwrite_replaces_a_model_directory(tmp_path: Path) -> None:
    out = tmp_path / "m"
    package_model(out, xgb_booster(), feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        package_model(out, xgb_booster(), feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK)
    (out / "stale.txt").write_text("old")
    from sklearn.linear_model import LogisticRegression

    package_model(out, LogisticRegression().fit(X, Y), feature_columns=FEATURES, cat_columns=CATS,
                  risk_tables=RISK, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["feature_columns.txt", "hyperparameters.json",
                                                     "impute_dict.pkl", "model.joblib", "risk_table_map.pkl"]
    empty = tmp_path / "empty"
    empty.mkdir()
    package_model(empty, xgb_booster(), feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK)
    assert (empty / "xgboost_model.bst").is_file()


def test_destination_errors(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"feature_columns": FEATURES, "cat_columns": CATS, "risk_tables": RISK}
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="only replaces a model directory"):
        package_model(other, xgb_booster(), overwrite=True, **kwargs)
    assert (other / "notes.txt").read_text() == "mine"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        package_model(a_file, xgb_booster(), **kwargs)
    (tmp_path / "m.tar.gz").write_text("x")
    with pytest.raises(FileExistsError, match="m.tar.gz exists"):
        package_model(tmp_path / "m", xgb_booster(), archive=True, **kwargs)
    assert not (tmp_path / "m").exists()


def test_a_failure_while_writing_leaves_nothing(tmp_path: Path) -> None:
    class Unpicklable:
        """A 'classifier' joblib cannot write."""

        classes_ = np.array([0, 1])

        def fit(self, x: Any, y: Any) -> Unpicklable:
            return self

        def predict_proba(self, x: Any) -> Any:
            return np.zeros((len(x), 2))

        def __reduce__(self) -> Any:
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        package_model(tmp_path / "m", Unpicklable(), feature_columns=FEATURES, cat_columns=CATS, risk_tables=RISK)
    assert os.listdir(tmp_path) == []


def _xgb_named(names: list[str]) -> Any:
    import xgboost

    return xgboost.XGBClassifier(n_estimators=2).fit(pd.DataFrame(X, columns=names), Y)


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"model": object()}, TypeError, "cannot package a builtins.object"),
    ({"model": "xgb_unfitted"}, ValueError, "not fitted"),
    ({"model": "lgb_unfitted"}, ValueError, "not fitted"),
    ({"model": "sk_unfitted"}, ValueError, "not fitted"),
    ({"model": "regressor"}, ValueError, "does not give class probabilities"),
    ({"model": "renamed"}, ValueError, "differ from feature_columns"),
    ({"model": "native_categorical"}, ValueError, "native categorical"),
    ({"feature_columns": NUMERIC + CATS + ["extra"], "model": "booster"}, ValueError, "takes 4 features"),
    ({"feature_columns": ["num1", "num,2", "color", "size"]}, ValueError, "commas"),
    ({"feature_columns": []}, ValueError, "at least one"),
    ({"feature_columns": "num1"}, TypeError, "list of column names"),
    ({"cat_columns": ["color", "nope"]}, ValueError, r"cat_columns \['nope'\] are not in feature_columns"),
    ({"risk_tables": {**RISK, "nope": RISK["color"]}}, ValueError, "risk tables for unknown column"),
    ({"risk_tables": {**RISK, "num1": RISK["color"]}}, ValueError, "not in cat_columns"),
    ({"risk_tables": {"color": RISK["color"]}}, ValueError, r"\['size'\] have no risk table"),
    ({"risk_tables": {**RISK, "size": {"bins": {}}}}, ValueError, "'bins'.*'default_bin'"),
    ({"risk_tables": {**RISK, "size": {"bins": {"a": "x"}, "default_bin": 0.1}}}, ValueError, "real number"),
    ({"risk_tables": {**RISK, "size": {"bins": {3: 0.1, "3": 0.2}, "default_bin": 0.1}}}, ValueError, "two bins"),
    ({"impute_values": {"nope": 1.0}}, ValueError, "impute values for unknown column"),
    ({"impute_values": {"color": 1.0}}, ValueError, "risk-mapped"),
    ({"impute_values": {"num1": "mean"}}, ValueError, "real number"),
    ({"impute_values": {"num1": float("nan")}}, ValueError, "finite"),
    ({"calibration": {"kind": "platt", "points": [(0.0, 0.0)]}}, ValueError, "calibration kind must be"),
    ({"calibration": {"kind": "binary"}}, ValueError, "'kind': ..., 'points'"),
    ({"calibration": [(0.0, 0.0)]}, TypeError, "calibration must be a dict"),
    ({"calibration": {"kind": "binary", "points": []}}, ValueError, "at least one"),
    ({"calibration": {"kind": "binary", "points": [(0.0, "a")]}}, ValueError, "not a number"),
    ({"calibration": {"kind": "multiclass", "points": {2: [(0.0, 0.0)]}}}, ValueError, "model has 2 classes"),
    ({"calibration": {"kind": "multiclass", "points": {-1: [(0.0, 0.0)]}}}, ValueError, "class indices"),
    ({"calibration": {"kind": "multiclass", "points": {1: [(0, 0)], "1": [(0, 0)]}}}, ValueError, "twice"),
    ({"calibration": {"kind": "multiclass", "points": {}}}, ValueError, "non-empty"),
    ({"calibration": {"kind": "percentile", "points": [(0, 0)]}, "model": "multiclass"}, ValueError,
     "needs a binary model"),
    ({"hyperparameters": {"num_classes": 3}}, ValueError, r"hyperparameters\['num_classes'\] = 3 contradicts"),
    ({"hyperparameters": {"tab_field_list": ["num1"]}}, ValueError, "tab_field_list"),
    ({"hyperparameters": {"model_class": "base_model"}}, ValueError, "model_class"),
    ({"hyperparameters": {"full_field_list": ["num1"]}}, ValueError, "full_field_list"),
    ({"hyperparameters": {"multiclass_categories": [0, 1, 2]}}, ValueError, "multiclass_categories"),
    ({"hyperparameters": {"when": pd.Timestamp(0)}}, TypeError, "JSON-serializable"),
    ({"hyperparameters": {1: "x"}}, TypeError, "keys must be str"),
])
def test_package_model_validates_before_writing(tmp_path: Path, change: dict[str, Any], error: type[Exception],
                                                match: str) -> None:
    import lightgbm
    import xgboost
    from sklearn.linear_model import LogisticRegression

    models = {
        "booster": xgb_booster(), "xgb_unfitted": xgboost.XGBClassifier(), "lgb_unfitted": lightgbm.LGBMClassifier(),
        "sk_unfitted": LogisticRegression(), "multiclass": xgb_booster(classes=3),
        "regressor": xgboost.train({"objective": "reg:squarederror"}, xgboost.DMatrix(X, label=Y), 2),
        "renamed": _xgb_named(["a", "b", "c", "d"]) if change.get("model") == "renamed" else None,
        "native_categorical": xgboost.XGBClassifier(n_estimators=2, enable_categorical=True).fit(
            FRAME[FEATURES].astype({"color": "category"}), Y) if change.get("model") == "native_categorical" else None,
    }
    args: dict[str, Any] = {"model": "booster", "feature_columns": FEATURES, "cat_columns": CATS,
                            "risk_tables": RISK, **change}
    model = args.pop("model")
    model = models[model] if isinstance(model, str) else model
    with pytest.raises(error, match=match):
        package_model(tmp_path / "m", model, **args)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"calibrate": "platt"}, ValueError, "calibrate must be"),
    ({"frame": {"num1": [1.0]}}, TypeError, "DataFrame"),
    ({"label": "num1"}, ValueError, "cannot be a feature column"),
    ({"label": "nope"}, ValueError, "label column"),
    ({"hyperparameters": {"label_name": "other"}}, ValueError, "label_name"),
    ({"cat_columns": ["color"]}, ValueError, "'size' has dtype"),  # a text column must be risk-mapped
    ({"model": "multiclass", "calibrate": "percentile"}, ValueError, "needs a binary model"),
])
def test_fit_and_package_validates(tmp_path: Path, change: dict[str, Any], error: type[Exception], match: str) -> None:
    frame = FRAME.assign(size=FRAME["size"].astype(str))
    args: dict[str, Any] = {"model": xgb_booster(), "frame": frame, "label": "label", "feature_columns": FEATURES,
                            "cat_columns": CATS, **change}
    if args["model"] == "multiclass":
        args["model"] = xgb_booster(classes=3)
    model, data = args.pop("model"), args.pop("frame")
    with pytest.raises(error, match=match):
        fit_and_package(tmp_path / "m", model, data, **args)
    assert os.listdir(tmp_path) == []
