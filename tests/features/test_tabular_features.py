"""Risk tables, imputation and coercion: the fast (record) and batch (frame) paths agree."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.errors import MissingColumns, ModelLoadError
from mainsail.features.artifacts import load_data_pickle, read_feature_columns, write_feature_columns
from mainsail.features.tabular import RiskTable, TabularPreprocessor, series_to_float, to_float


def test_risk_table_maps_str_of_the_value_with_default() -> None:
    table = RiskTable.from_artifact("c", {"bins": {"a": 0.2, "3": 0.7, "None": 0.9}, "default_bin": 0.5})
    assert [table.map_value(v) for v in ["a", 3, 3.0, "zzz", None, float("nan")]] == [0.2, 0.7, 0.7, 0.5, 0.9, 0.5]
    series = pd.Series(["a", 3, 3.0, "zzz", None, float("nan")], dtype=object)
    assert table.map_series(series).tolist() == [0.2, 0.7, 0.7, 0.5, 0.9, 0.5]


def test_numeric_keys_from_offline_binning_match_values() -> None:
    table = RiskTable.from_artifact("n", {"bins": {3: 0.1, 4.0: 0.2, "x": 0.3}, "default_bin": 0.0})
    assert [table.map_value(v) for v in [3, 3.0, "3", 4, 4.0, "x", 5]] == [0.1, 0.1, 0.1, 0.2, 0.2, 0.3, 0.0]
    assert table.map_series(pd.Series([3.0, 4.0, np.nan])).tolist() == [0.1, 0.2, 0.0]


@pytest.mark.parametrize("bad", [{"bins": {}}, {"default_bin": 1}, {"bins": {"a": "x"}, "default_bin": 0}, [1, 2]])
def test_malformed_risk_tables_fail_the_load(bad: object) -> None:
    with pytest.raises(ModelLoadError):
        RiskTable.from_artifact("c", bad)


def test_to_float_rule() -> None:
    assert [to_float(v) for v in [1, 2.5, True, "3.5", " 4 ", "abc", "", "1_000", None, "inf"]] == \
        [1.0, 2.5, 1.0, 3.5, 4.0, 0.0, 0.0, 0.0, to_float(None), math.inf]
    assert math.isnan(to_float(None)) and math.isnan(to_float("NaN")) and math.isnan(to_float(float("nan")))
    assert to_float([1, 2]) == 0.0


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["nan", "NaN", " 2.5", "abc", "", "1_0", "1e3", "-3", "inf", "x,y"]),
    st.text(max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(scalars, min_size=1, max_size=8))
def test_series_rule_equals_scalar_rule(values: list[object]) -> None:
    series = pd.Series(values, dtype=object)
    expected = [to_float(v) for v in values]
    np.testing.assert_array_equal(series_to_float(series), np.array(expected, dtype=np.float64))


def make_pre() -> TabularPreprocessor:
    tables = {"cat": RiskTable.from_artifact("cat", {"bins": {"a": 0.25, "b": 0.75, "1": 0.6}, "default_bin": 0.4})}
    return TabularPreprocessor(["num1", "num2", "cat"], tables, {"num1": 10.0, "cat": "mode-string"})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.fixed_dictionaries({"num1": scalars, "num2": scalars, "cat": scalars, "extra": scalars}),
                min_size=1, max_size=6))
def test_record_and_frame_paths_agree(records: list[dict[str, object]]) -> None:
    pre = make_pre()
    frame = pd.DataFrame(records)
    batch = pre.transform_frame(frame)
    singles = np.vstack([pre.transform_record(r) for r in records])
    np.testing.assert_array_equal(batch, singles)
    assert batch.dtype == np.float32


def test_imputation_and_missing() -> None:
    pre = make_pre()
    row = pre.transform_record({"num1": None, "num2": None, "cat": None})
    assert row[0, 0] == 10.0 and math.isnan(row[0, 1]) and row[0, 2] == pytest.approx(0.4)
    with pytest.raises(MissingColumns, match="num2, cat"):
        pre.transform_record({"num1": 1})
    with pytest.raises(MissingColumns, match="cat"):
        pre.transform_frame(pd.DataFrame({"num1": [1], "num2": [2]}))


def test_ten_thousand_rows_in_one_pass() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"num1": rng.normal(size=10_000), "num2": rng.normal(size=10_000),
                          "cat": rng.choice(["a", "b", "c", None], size=10_000)})
    frame.loc[::7, "num1"] = np.nan
    out = make_pre().transform_frame(frame)
    assert out.shape == (10_000, 3)
    assert np.all(out[::7, 0] == 10.0)


def test_artifacts_round_trip_and_malicious_pickle_is_refused(tmp_path: Path) -> None:
    write_feature_columns(tmp_path / "feature_columns.txt", ["a", "b"])
    assert read_feature_columns(tmp_path / "feature_columns.txt") == ["a", "b"]
    (tmp_path / "risk_table_map.pkl").write_bytes(pickle.dumps({"b": {"bins": {"x": 0.1}, "default_bin": 0.5}}))
    (tmp_path / "impute_dict.pkl").write_bytes(pickle.dumps({"a": np.float64(1.5)}))
    pre = TabularPreprocessor.from_model_dir(tmp_path, ["a", "b"])
    assert pre.transform_record({"a": None, "b": "x"}).tolist() == [[1.5, np.float32(0.1)]]

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            import os
            return (os.system, (f"touch {marker}",))

    (tmp_path / "impute_dict.pkl").write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(ModelLoadError, match="impute_dict.pkl: refused to load posix.system"):
        TabularPreprocessor.from_model_dir(tmp_path, ["a", "b"])
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="x.pkl"):
        (tmp_path / "x.pkl").write_bytes(b"garbage")
        load_data_pickle(tmp_path / "x.pkl")


def test_feature_columns_file_skips_comments_and_odd_lines(tmp_path: Path) -> None:
    path = tmp_path / "feature_columns.txt"
    path.write_text("# header\n# more\n0,num1\n1,odd,name\n2,cat\n\n")
    assert read_feature_columns(path) == ["num1", "cat"]
