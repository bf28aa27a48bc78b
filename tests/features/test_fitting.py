"""Fitting risk tables, imputation and calibration tables: hand-computed examples, an independent plain-Python
oracle, errors; written calibration tables read back by the calibration loader."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.features.artifacts import load_data_pickle
from mainsail.features.calibration import Calibrator, LookupTable, calibrate, load_calibrator
from mainsail.features.fitting import (
    fit_imputation,
    fit_isotonic_table,
    fit_percentile_table,
    fit_risk_tables,
    labelled_rows,
    transform_features,
    write_table,
)
from mainsail.features.tabular import RiskTable, TabularPreprocessor

NAN = float("nan")


def test_risk_table_hand_computed_with_smoothing_and_threshold() -> None:
    frame = pd.DataFrame({
        "cat": ["a", "a", "a", "b", "b", "c", None, "a", "b"],
        "y": [1, 1, 0, 1, 0, 0, 1, -1, np.nan],
    })
    # Kept: the first 7 rows (label -1 / NaN dropped; the None category row counts for default and s).
    # default = 4/7; s = int(7 * 0.3) = 2; a: count 3, risk 2/3; b: count 2, risk 1/2; c: count 1 < 2.
    tables = fit_risk_tables(frame, "y", ["cat"], smooth_factor=0.3, count_threshold=2)
    table = tables["cat"]
    assert set(table) == {"bins", "default_bin"}
    assert table["default_bin"] == pytest.approx(4 / 7, rel=1e-15)
    assert set(table["bins"]) == {"a", "b", "c"}  # the missing category gets no bin
    assert table["bins"]["a"] == pytest.approx(22 / 35, rel=1e-15)
    assert table["bins"]["b"] == pytest.approx(15 / 28, rel=1e-15)
    assert table["bins"]["c"] == table["default_bin"]
    assert all(type(v) is float for v in table["bins"].values()) and type(table["default_bin"]) is float


def test_risk_table_without_smoothing_is_the_positive_rate() -> None:
    frame = pd.DataFrame({"n": [1, 1, 2, 2, 2, 3], "f": [1.0, 1.0, 2.5, 2.5, 2.5, 3.0],
                          "y": [1, 0, 1, 1, 0, 1]})
    tables = fit_risk_tables(frame, "y", ["n", "f"])
    # Keys are str(value), as the handler looks values up: int columns "1", float columns "1.0".
    assert tables["n"] == {"bins": {"1": 0.5, "2": 2 / 3, "3": 1.0}, "default_bin": 4 / 6}
    assert tables["f"]["bins"] == {"1.0": 0.5, "2.5": 2 / 3, "3.0": 1.0}


def test_values_with_the_same_string_are_one_category() -> None:
    frame = pd.DataFrame({"c": pd.Series([3, "3", "x", True], dtype=object), "y": [1, 0, 1, 1]})
    assert fit_risk_tables(frame, "y", ["c"])["c"]["bins"] == {"3": 0.5, "x": 1.0, "True": 1.0}


def test_bool_and_float_labels_are_binary() -> None:
    frame = pd.DataFrame({"c": ["a", "b", "a"], "y": [True, False, True]})
    assert fit_risk_tables(frame, "y", ["c"])["c"]["bins"] == {"a": 1.0, "b": 0.0}
    frame = pd.DataFrame({"c": ["a", "b", "a"], "y": [1.0, 0.0, np.nan]})
    assert fit_risk_tables(frame, "y", ["c"])["c"] == {"bins": {"a": 1.0, "b": 0.0}, "default_bin": 0.5}


def test_a_column_with_no_category_has_empty_bins() -> None:
    frame = pd.DataFrame({"c": [None, None], "y": [1, 0]})
    assert fit_risk_tables(frame, "y", ["c"]) == {"c": {"bins": {}, "default_bin": 0.5}}
    assert fit_risk_tables(frame, "y", []) == {}


def reference_tables(rows: list[tuple[Any, Any]], smooth_factor: float, threshold: int) -> dict[str, Any]:
    """The fit math of ARTIFACTS.md section 3, one row at a time (the oracle)."""
    kept = [(c, y) for c, y in rows if not (y is None or (isinstance(y, float) and math.isnan(y))) and y != -1]
    default = sum(y for _, y in kept) / len(kept)
    s = int(len(kept) * smooth_factor)
    counts: dict[str, list[int]] = {}
    for c, y in kept:
        if c is None:
            continue
        entry = counts.setdefault(str(c), [0, 0])
        entry[0 if y == 0 else 1] += 1
    bins = {}
    for key, (neg, pos) in counts.items():
        count = neg + pos
        risk = pos / (pos + neg)
        bins[key] = (count * risk + s * default) / (count + s) if count >= threshold else default
    return {"bins": bins, "default_bin": default}


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", None, 7, 8]),
                            st.sampled_from([0, 1, 1, -1, math.nan])), min_size=1, max_size=60),
    smooth_factor=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
    threshold=st.integers(0, 4),
)
def test_risk_tables_match_a_plain_python_loop(rows: list[tuple[Any, Any]], smooth_factor: float,
                                               threshold: int) -> None:
    if all(y == -1 or (isinstance(y, float) and math.isnan(y)) for _, y in rows):
        rows = [*rows, ("a", 1)]
    frame = pd.DataFrame({"c": pd.Series([c for c, _ in rows], dtype=object), "y": [y for _, y in rows]})
    got = fit_risk_tables(frame, "y", ["c"], smooth_factor=smooth_factor, count_threshold=threshold)
    assert got == {"c": reference_tables(rows, smooth_factor, threshold)}


def test_risk_tables_match_the_loop_on_a_larger_seeded_frame() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    cats = rng.choice(np.array(["u", "v", "w", "x", "y", "z", None], dtype=object), size=n)
    labels = rng.choice(np.array([0.0, 1.0, -1.0, np.nan]), size=n, p=[0.5, 0.4, 0.05, 0.05])
    frame = pd.DataFrame({"c": cats, "label": labels})
    got = fit_risk_tables(frame, "label", ["c"], smooth_factor=0.01, count_threshold=400)
    want = reference_tables(list(zip(cats.tolist(), labels.tolist(), strict=True)), 0.01, 400)
    assert got["c"] == want
    assert any(v == want["default_bin"] for v in want["bins"].values())  # the threshold bit


@pytest.mark.parametrize(("args", "kwargs", "error", "match"), [
    (("nope", ["c"]), {}, ValueError, "label column"),
    (("y", ["zz"]), {}, ValueError, "'zz'"),
    (("y", ["y"]), {}, ValueError, "label column 'y' cannot"),
    (("y", "c"), {}, TypeError, "one string"),
    (("y", ["c", "c"]), {}, ValueError, "more than once"),
    (("y", [1]), {}, TypeError, "column names"),
    (("y", ["c"]), {"smooth_factor": 1.5}, ValueError, "smooth_factor"),
    (("y", ["c"]), {"smooth_factor": -0.1}, ValueError, "smooth_factor"),
    (("y", ["c"]), {"count_threshold": -1}, ValueError, "count_threshold"),
    (("y", ["c"]), {"count_threshold": True}, ValueError, "count_threshold"),
    (("two", ["c"]), {}, ValueError, "binary"),
    (("text", ["c"]), {}, ValueError, "0/1"),
    (("unlabelled", ["c"]), {}, ValueError, "no labelled row"),
])
def test_fit_risk_tables_validates(args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception],
                                   match: str) -> None:
    frame = pd.DataFrame({"c": ["a", "b"], "y": [0, 1], "two": [0, 2], "text": ["yes", "no"],
                          "unlabelled": [-1, np.nan]})
    with pytest.raises(error, match=match):
        fit_risk_tables(frame, *args, **kwargs)


def test_fit_risk_tables_needs_a_dataframe() -> None:
    with pytest.raises(TypeError, match="DataFrame"):
        fit_risk_tables({"c": ["a"], "y": [1]}, "y", ["c"])


def test_labelled_rows() -> None:
    frame = pd.DataFrame({"y": [0, 1, -1, np.nan, 1]})
    assert labelled_rows(frame, "y").tolist() == [True, True, False, False, True]


def test_fit_imputation_means_of_non_missing_values() -> None:
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0, np.nan], "i": [1, 2, 3, 4], "b": [True, False, False, False],
                          "n": pd.array([1, None, 2, None], dtype="Int64"), "s": ["x", "y", "z", "w"]})
    values = fit_imputation(frame, ["a", "i", "b", "n"])
    assert values == {"a": 2.0, "i": 2.5, "b": 0.25, "n": 1.5}
    assert list(values) == ["a", "i", "b", "n"]
    assert all(type(v) is float for v in values.values())
    assert fit_imputation(frame, []) == {}


@pytest.mark.parametrize(("frame", "match"), [
    (pd.DataFrame({"a": ["1", "2"]}), "'a' has dtype .* not numeric"),
    (pd.DataFrame({"a": pd.to_datetime(["2024-01-01", "2024-01-02"])}), "'a' has dtype"),
    (pd.DataFrame({"a": [np.nan, np.nan]}), "'a' has no non-missing value"),
    (pd.DataFrame({"a": [1.0, np.inf]}), "'a' has a non-finite mean"),
    (pd.DataFrame({"b": [1.0]}), "'a'"),
])
def test_fit_imputation_rejects(frame: pd.DataFrame, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_imputation(frame, ["a"])


def test_transform_features_is_the_serving_rule() -> None:
    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0], "c": ["x", "zzz", None], "extra": [9, 9, 9]})
    tables = {"c": {"bins": {"x": 0.9}, "default_bin": 0.1}}
    matrix = transform_features(frame, ["c", "a"], tables, {"a": 2.0})
    assert matrix.dtype == np.float32
    assert matrix.tolist() == [[pytest.approx(0.9), 1.0], [pytest.approx(0.1), 2.0], [pytest.approx(0.1), 3.0]]
    serving = TabularPreprocessor(["c", "a"], {"c": RiskTable.from_artifact("c", tables["c"])}, {"a": 2.0})
    np.testing.assert_array_equal(matrix, serving.transform_frame(frame))
    with pytest.raises(ValueError, match="'b'"):
        transform_features(frame, ["b"])
    with pytest.raises(ValueError, match="bins"):
        transform_features(frame, ["c"], {"c": {"bins": {}}})


# ---------------------------------------------------------------------------------------------
# Calibration tables: fitting and writing
# ---------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.5, 1.0])), min_size=1, max_size=300),
    n_bins=st.integers(1, 50),
)
def test_fit_percentile_table_is_a_monotone_empirical_cdf(scores: list[float], n_bins: int) -> None:
    table = fit_percentile_table(np.array(scores), n_bins=n_bins)
    assert table[0] == (0.0, 0.0) and table[-1] == (1.0, 1.0)
    assert len(table) <= n_bins + 1
    xs = np.array([x for x, _ in table])
    ys = np.array([y for _, y in table])
    assert not np.isnan(xs).any() and not np.isnan(ys).any()
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) >= 0)
    values = np.array(scores)
    for x, y in table[1:-1]:
        assert y == np.count_nonzero(values <= x) / values.size


def test_fit_percentile_table_spreads_scores_uniformly() -> None:
    scores = np.random.default_rng(3).beta(2, 8, size=20_000)
    table = LookupTable.from_points(fit_percentile_table(scores))
    ranks = table(scores)
    assert abs(np.quantile(ranks, 0.5) - 0.5) < 0.01 and abs(np.quantile(ranks, 0.9) - 0.9) < 0.01


@pytest.mark.parametrize(("scores", "n_bins"), [([], 10), ([0.5, NAN], 10), ([1.5], 10), ([0.5], 0)])
def test_fit_percentile_table_rejects_bad_input(scores: list[float], n_bins: int) -> None:
    with pytest.raises(ValueError):
        fit_percentile_table(np.array(scores), n_bins=n_bins)


def test_isotonic_table_improves_the_brier_score_of_miscalibrated_scores() -> None:
    rng = np.random.default_rng(4)
    truth = rng.random(20_000)
    labels = (rng.random(truth.size) < truth).astype(np.float64)
    raw = truth**3  # systematically under-confident for class 1
    table = fit_isotonic_table(raw[:10_000], labels[:10_000])
    assert len(table) == 1000
    xs = np.array([x for x, _ in table])
    ys = np.array([y for _, y in table])
    np.testing.assert_array_equal(xs, np.linspace(0, 1, 1000))
    assert np.all((ys >= 0) & (ys <= 1)) and np.all(np.diff(ys) >= 0)

    calibrator = Calibrator("binary", {1: LookupTable.from_points(table)}, "iso")
    test_scores = np.column_stack([1 - raw[10_000:], raw[10_000:]]).astype(np.float32)
    calibrated = calibrate(test_scores, calibrator)
    test_labels = labels[10_000:]
    brier_raw = float(np.mean((test_scores[:, 1] - test_labels) ** 2))
    brier_cal = float(np.mean((calibrated[:, 1] - test_labels) ** 2))
    assert brier_cal < brier_raw - 0.01


def test_write_table_round_trips_through_load_calibrator(tmp_path: Path) -> None:
    points = [(0.0, 0.0), (0.25, 0.1), (NAN, 0.999), (1.0, 1.0)]
    path = tmp_path / "calibration" / "calibration_model.pkl"
    write_table(path, points)
    stored = load_data_pickle(path)
    assert type(stored) is list and all(type(p) is tuple and len(p) == 2 for p in stored)
    assert all(type(v) is np.float64 for p in stored for v in p)
    calibrator = load_calibrator(tmp_path)
    assert calibrator is not None and calibrator.kind == "binary"
    assert calibrator.tables[1] == LookupTable.from_points(points)
    assert calibrator == Calibrator("binary", {1: LookupTable.from_points(points)}, str(path))


def test_write_table_refuses_a_non_table(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_table(tmp_path / "c.pkl", [(0.0, "x")])
    assert not (tmp_path / "c.pkl").exists()
