"""Calibration lookup tables: reference interpolation semantics, loading and applying (fitting: test_fitting)."""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.errors import ModelLoadError
from mainsail.features.calibration import Calibrator, LookupTable, calibrate, load_calibrator

NAN = float("nan")
INF = float("inf")
LOGGER = "mainsail.features.calibration"


# ---------------------------------------------------------------------------------------------
# Oracle: a straightforward port of the reference handlers' scalar rule and row loops.
# ---------------------------------------------------------------------------------------------


def oracle(raw: float, mapping: Sequence[tuple[float, float]]) -> float:
    if raw <= mapping[0][0]:
        return mapping[0][1]
    if raw >= mapping[-1][0]:
        return mapping[-1][1]
    for i in range(len(mapping) - 1):
        if mapping[i][0] <= raw <= mapping[i + 1][0]:
            x1, y1 = mapping[i]
            x2, y2 = mapping[i + 1]
            if x2 == x1:
                return y1
            return y1 + (y2 - y1) * (raw - x1) / (x2 - x1)
    return mapping[-1][1]


def reference_class1(scores: np.ndarray, mapping: list[tuple[float, float]], percentile: bool) -> np.ndarray:
    """The reference's row loop: zeros_like, class 1 stored, class 0 = 1 - (value or stored value)."""
    calibrated = np.zeros_like(scores)
    for i in range(scores.shape[0]):
        value = oracle(float(scores[i, 1]), mapping)
        calibrated[i, 1] = value
        calibrated[i, 0] = 1 - value if percentile else 1 - calibrated[i, 1]
    return calibrated


def write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def np_pairs(points: Sequence[tuple[float, float]]) -> list[tuple[np.float64, np.float64]]:
    return [(np.float64(a), np.float64(b)) for a, b in points]


# ---------------------------------------------------------------------------------------------
# LookupTable semantics
# ---------------------------------------------------------------------------------------------

_x_value = st.one_of(
    st.floats(-2, 2),
    st.sampled_from([0.0, 0.25, 0.5, 1.0]),  # makes duplicates likely
    st.just(NAN),
    st.floats(allow_nan=False, allow_infinity=True),
)
_y_value = st.one_of(st.floats(-10, 10), st.sampled_from([0.0, 1.0, INF]), st.floats(allow_nan=True))


@st.composite
def tables(draw: st.DrawFn) -> list[tuple[float, float]]:
    xs = draw(st.lists(_x_value, min_size=1, max_size=12))
    order = draw(st.sampled_from(["sorted", "sorted_nan", "unsorted"]))
    if order != "unsorted":
        xs = sorted(x for x in xs if not math.isnan(x))
        if order == "sorted_nan" or not xs:
            for _ in range(draw(st.integers(1, 3))):
                xs.insert(draw(st.integers(0, len(xs))), NAN)
    ys = draw(st.lists(_y_value, min_size=len(xs), max_size=len(xs)))
    return list(zip(xs, ys, strict=True))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), table=tables())
def test_lookup_table_equals_the_reference_scalar_rule(data: st.DataObject, table: list[tuple[float, float]]) -> None:
    on_table = [x for x, _ in table]
    values = data.draw(st.lists(
        st.one_of(st.floats(-3, 3), st.sampled_from(on_table), st.sampled_from([NAN, INF, -INF, 0.0, 1.0])),
        min_size=1, max_size=40,
    ))
    got = LookupTable.from_points(table)(np.array(values, dtype=np.float64))
    want = np.array([oracle(v, table) for v in values], dtype=np.float64)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("points", "values", "expected"),
    [
        ([(0.3, 0.7)], [-1.0, 0.3, 5.0, NAN], [0.7, 0.7, 0.7, 0.7]),  # one point: a constant
        ([(0.0, 0.0), (0.5, 0.2), (0.5, 0.8), (1.0, 1.0)], [0.5, 0.75], [0.2, 0.9]),  # first segment wins
        ([(0.0, 0.0), (NAN, 0.999), (0.5, 0.5), (1.0, 1.0)], [0.25, 0.75, 0.0, 1.0, NAN], [1.0, 0.75, 0.0, 1.0, 1.0]),
        # unsorted: the first matching segment in scan order
        ([(0.0, 0.0), (0.8, 0.4), (0.2, 1.0), (0.6, 0.0), (1.0, 1.0)], [0.5, 0.7, 0.9], [0.25, 0.35, 0.75]),
        ([(0.8, 0.0), (0.2, 1.0), (0.5, 0.5)], [0.1, 0.3, 0.9], [0.0, 0.0, 0.5]),  # x[0] > x[-1]
    ],
)
def test_lookup_table_edge_cases(points: list[tuple[float, float]], values: list[float], expected: list[float]) -> None:
    got = LookupTable.from_points(points)(np.array(values))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert got.tolist() == [oracle(v, points) for v in values]


def test_lookup_table_keeps_the_shape_and_returns_float64() -> None:
    table = LookupTable.from_points([(0.0, 0.0), (1.0, 0.5)])
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    got = table(values)
    assert got.shape == (3, 4) and got.dtype == np.float64
    assert table.points() == [(0.0, 0.0), (1.0, 0.5)]
    assert table.x.dtype == np.float64 and not table.x.flags.writeable


def test_a_large_batch_matches_the_oracle_on_a_reference_sized_table() -> None:
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 1000)
    points = list(zip(grid.tolist(), np.sqrt(grid).tolist(), strict=True))
    values = np.concatenate([rng.random(10_000), grid[::7], [-0.5, 1.5, NAN]])
    got = LookupTable.from_points(points)(values)
    step = 37  # the oracle is slow: check a spread-out sample plus the edge values
    sample = np.r_[np.arange(0, values.size, step), np.arange(values.size - 3, values.size)]
    np.testing.assert_array_equal(got[sample], [oracle(float(v), points) for v in values[sample]])


@pytest.mark.parametrize(
    ("points", "match"),
    [
        ([], "at least one"),
        ([(0.0, "a")], "point 0: the calibrated value 'a' is not a number"),
        ([(0.0, 0.0), ("0.5", 0.5)], "point 1: the raw value '0.5' is not a number"),
        ([(0.0, 0.0), (True, 1.0)], "point 1: the raw value True is not a number"),
        ([(0.0, 0.0, 1.0)], "point 0 is not a"),
        ([0.5], "point 0 is not a"),
        ({"a": 1}, "expected a list"),
        ("0,0", "expected a list"),
    ],
)
def test_from_points_rejects_non_tables(points: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LookupTable.from_points(points)


def test_tables_compare_by_points_including_nan() -> None:
    a = LookupTable.from_points([(0.0, 0.0), (NAN, 0.9), (1.0, 1.0)])
    b = LookupTable.from_points(np_pairs([(0.0, 0.0), (NAN, 0.9), (1.0, 1.0)]))
    assert a == b and hash(a) == hash(b)
    assert a != LookupTable.from_points([(0.0, 0.0), (1.0, 1.0)])


# ---------------------------------------------------------------------------------------------
# calibrate()
# ---------------------------------------------------------------------------------------------


def _binary_scores(n: int = 200, dtype: type = np.float32) -> np.ndarray:
    p1 = np.random.default_rng(1).random(n)
    p1[:4] = [0.0, 1.0, 0.5, 1e-9]
    return np.column_stack([1 - p1, p1]).astype(dtype)


def test_binary_calibration_matches_the_reference_rows_bit_for_bit_in_float32() -> None:
    grid = np.linspace(0, 1, 1000)
    points = np_pairs(list(zip(grid.tolist(), (grid**2).tolist(), strict=True)))
    calibrator = Calibrator("binary", {1: LookupTable.from_points(points)}, "t")
    scores = _binary_scores()
    got = calibrate(scores, calibrator)
    assert got.dtype == np.float32 and got.shape == scores.shape and got is not scores
    np.testing.assert_array_equal(got, reference_class1(scores, [(float(a), float(b)) for a, b in points], False))
    np.testing.assert_array_equal(scores, _binary_scores())  # input untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentile_calibration_with_nan_entries_matches_the_reference(dtype: type) -> None:
    points = [(0.0, 0.0), (NAN, 0.999), (0.5, 0.5), (1.0, 1.0)]
    calibrator = Calibrator("percentile", {1: LookupTable.from_points(points)}, "p")
    scores = _binary_scores(dtype=dtype)
    got = calibrate(scores, calibrator)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, reference_class1(scores, points, True))
    low = scores[:, 1] < 0.5
    low &= scores[:, 1] > 0.0
    assert np.all(got[low, 1] == 1.0)  # the sklearn>=1.3 accident: NaN rows break those segments


def test_multiclass_calibrates_listed_classes_then_renormalises() -> None:
    rng = np.random.default_rng(2)
    raw = rng.random((50, 3)).astype(np.float32)
    scores = raw / raw.sum(axis=1, keepdims=True)
    half = LookupTable.from_points([(0.0, 0.0), (1.0, 0.5)])
    calibrator = Calibrator("multiclass", {0: half, 2: half, 7: half}, "m")  # no table for 1; 7 is out of range
    got = calibrate(scores, calibrator)
    assert got.dtype == np.float32 and got.shape == scores.shape
    expected = scores.copy()
    for k in (0, 2):
        expected[:, k] = scores[:, k].astype(np.float64) * 0.5
    expected = expected / expected.sum(axis=1)[:, np.newaxis]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)


def test_percentile_on_multiclass_serves_raw_scores_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    calibrator = Calibrator("percentile", {1: LookupTable.from_points([(0.0, 0.0), (1.0, 0.5)])}, "p.pkl")
    scores = np.full((4, 3), 1 / 3, dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        first = calibrate(scores, calibrator)
        second = calibrate(scores, calibrator)
    np.testing.assert_array_equal(first, scores)
    np.testing.assert_array_equal(second, scores)
    assert first is not scores and first.dtype == np.float32
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "p.pkl" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "scores",
    [np.array([0.2, 0.8]), np.zeros((3, 1)), np.array([["a", "b"]]), np.zeros((2, 2, 2))],
    ids=["1-d", "one-column", "strings", "3-d"],
)
def test_calibrate_never_raises_and_serves_a_raw_copy(scores: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    calibrator = Calibrator("binary", {1: LookupTable.from_points([(0.0, 0.0), (1.0, 0.5)])}, "b.pkl")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = calibrate(scores, calibrator)
    assert got is not scores and got.dtype == scores.dtype
    np.testing.assert_array_equal(got, scores)
    assert any(r.levelno == logging.WARNING and "b.pkl" in r.getMessage() for r in caplog.records)


def test_multiclass_on_one_dimensional_scores_serves_raw(caplog: pytest.LogCaptureFixture) -> None:
    calibrator = Calibrator("multiclass", {0: LookupTable.from_points([(0.0, 0.0), (1.0, 0.5)])}, "m")
    scores = np.array([0.1, 0.9])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        np.testing.assert_array_equal(calibrate(scores, calibrator), scores)
    assert caplog.records


def test_no_calibrator_returns_a_copy() -> None:
    scores = _binary_scores(5)
    got = calibrate(scores, None)
    assert got is not scores and got.dtype == scores.dtype
    np.testing.assert_array_equal(got, scores)


@pytest.mark.parametrize(
    ("kind", "tables"),
    [
        ("binary", {0: None}), ("percentile", {}), ("multiclass", {}), ("isotonic", {1: None}),
        ("multiclass", {-1: None}),
    ],
)
def test_calibrator_validates_its_tables(kind: str, tables: dict[int, None]) -> None:
    table = LookupTable.from_points([(0.0, 0.0)])
    with pytest.raises(ValueError):
        Calibrator(kind, {k: table for k in tables}, "x")


# ---------------------------------------------------------------------------------------------
# load_calibrator()
# ---------------------------------------------------------------------------------------------

TABLE_A = [(0.0, 0.0), (1.0, 0.25)]
TABLE_B = [(0.0, 0.0), (1.0, 0.5)]
TABLE_C = [(0.0, 0.0), (1.0, 0.75)]


def test_no_calibration_directory_means_no_calibrator(tmp_path: Path) -> None:
    assert load_calibrator(tmp_path) is None
    (tmp_path / "calibration" / "calibration_models").mkdir(parents=True)
    assert load_calibrator(tmp_path) is None


def test_percentile_file_wins_over_the_others(tmp_path: Path) -> None:
    cal = tmp_path / "calibration"
    write_pickle(cal / "percentile_score.pkl", TABLE_A)
    write_pickle(cal / "calibration_model.pkl", np_pairs(TABLE_B))
    write_pickle(cal / "calibration_models" / "calibration_model_class_0.pkl", np_pairs(TABLE_C))
    calibrator = load_calibrator(tmp_path)
    assert calibrator is not None and calibrator.kind == "percentile"
    assert calibrator.tables[1].points() == TABLE_A
    assert calibrator.source.endswith("percentile_score.pkl")

    (cal / "percentile_score.pkl").unlink()
    calibrator = load_calibrator(tmp_path)
    assert calibrator is not None and calibrator.kind == "binary" and calibrator.tables[1].points() == TABLE_B


def test_class_files_make_a_multiclass_calibrator(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "calibration" / "calibration_models"
    write_pickle(models / "calibration_model_class_0.pkl", np_pairs(TABLE_A))
    write_pickle(models / "calibration_model_class_12.pkl", np_pairs(TABLE_B))
    marker = tmp_path / "pwned"
    write_pickle(models / "calibration_model_class_01.pkl", [_Exploit(marker)])  # not a class file name
    (models / "notes.txt").write_text("hello")
    (models / "calibration_model_class_x.pkl").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        calibrator = load_calibrator(tmp_path)
    assert calibrator is not None and calibrator.kind == "multiclass"
    assert sorted(calibrator.tables) == [0, 12] and not marker.exists()
    assert calibrator.tables[0].points() == TABLE_A and calibrator.tables[12].points() == TABLE_B
    ignored = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for name in ("calibration_model_class_01.pkl", "notes.txt", "calibration_model_class_x.pkl"):
        assert name in ignored


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_pickle(tmp_path / "calibration" / "calibration_model.pkl", [_Exploit(marker)])
    with pytest.raises(ModelLoadError, match=r"calibration/calibration_model\.pkl") as info:
        load_calibrator(tmp_path)
    assert "only lookup tables (lists of (raw, calibrated) pairs) are supported" in info.value.message
    assert not marker.exists()


def test_a_legacy_sklearn_calibrator_is_refused_with_a_hint(tmp_path: Path) -> None:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(out_of_bounds="clip").fit([0.0, 0.5, 1.0], [0.0, 0.0, 1.0])
    write_pickle(tmp_path / "calibration" / "calibration_model.pkl", model)
    with pytest.raises(ModelLoadError, match=r"only lookup tables \(lists of \(raw, calibrated\) pairs\)"):
        load_calibrator(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"x": [0.0], "y": [0.0]}, "expected a list"),
        ([(0.0, "a")], "not a number"),
        ([], "at least one"),
        (None, "expected a list"),
    ],
)
def test_a_file_without_a_table_is_a_load_error_naming_it(tmp_path: Path, content: object, match: str) -> None:
    write_pickle(tmp_path / "calibration" / "percentile_score.pkl", content)
    with pytest.raises(ModelLoadError, match=match) as info:
        load_calibrator(tmp_path)
    assert "calibration/percentile_score.pkl" in info.value.message


def test_a_corrupt_class_file_is_a_load_error_naming_it(tmp_path: Path) -> None:
    models = tmp_path / "calibration" / "calibration_models"
    write_pickle(models / "calibration_model_class_0.pkl", np_pairs(TABLE_A))
    (models / "calibration_model_class_1.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ModelLoadError, match="calibration_model_class_1.pkl"):
        load_calibrator(tmp_path)


def test_reference_written_files_load(tmp_path: Path) -> None:
    grid = np.linspace(0, 1, 1000)
    write_pickle(tmp_path / "calibration" / "calibration_model.pkl", list(zip(grid, grid**0.5, strict=True)))
    calibrator = load_calibrator(tmp_path)
    assert calibrator is not None and len(calibrator.tables[1].points()) == 1000
    # the older percentile format: np.column_stack(...).tolist(), a list of 2-item lists
    write_pickle(tmp_path / "calibration" / "percentile_score.pkl", np.column_stack([grid, grid]).tolist())
    calibrator = load_calibrator(tmp_path)
    assert calibrator is not None and calibrator.kind == "percentile"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-0.5, 1.5) | st.just(float("nan")), st.floats(0, 1)), min_size=1, max_size=12),
    st.booleans(),
    st.lists(st.floats(-1, 2) | st.just(float("nan")), min_size=1, max_size=20),
)
def test_the_one_value_path_equals_the_vectorized_path(points: list[tuple[float, float]], sort: bool,
                                                       values: list[float]) -> None:
    if sort:
        points = sorted(points, key=lambda p: (p[0] != p[0], p[0]))
    table = LookupTable.from_points(points)
    vector = table(np.array(values))
    for value, expected in zip(values, vector.tolist(), strict=True):
        got = table.value(value)
        assert got == expected or (got != got and expected != expected)
