"""The XGBoost container's default input_fn: its CSV rules, LIBSVM read as XGBoost's own reader
reads it (the oracle: xgboost.DMatrix over the same text as a file), and the types it refuses."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.codecs import xgboost_inputs
from mainsail.errors import BadRequest, UnsupportedContentType


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_csv_delimiter_is_sniffed_from_the_first_line(delimiter: str) -> None:
    text = f"1{delimiter}2.5{delimiter}-3\n4{delimiter}{delimiter}6\n"
    got = xgboost_inputs.csv_rows(text)
    assert got.dtype == np.float64 and got.shape == (2, 3)
    np.testing.assert_array_equal(got, [[1, 2.5, -3], [4, np.nan, 6]])


def test_csv_edge_cases() -> None:
    np.testing.assert_array_equal(xgboost_inputs.csv_rows(b"5"), [[5.0]])  # one column: ","
    np.testing.assert_array_equal(xgboost_inputs.csv_rows("1,2\r\n3,4\r\n"), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(xgboost_inputs.csv_rows(" 1, 2"), [[1, 2]])
    with pytest.raises(BadRequest, match="line 2 has 1 fields"):
        xgboost_inputs.csv_rows("1,2\n3")
    with pytest.raises(BadRequest, match="cannot be read as numbers"):
        xgboost_inputs.csv_rows("1,a")
    with pytest.raises(BadRequest, match="utf-8"):
        xgboost_inputs.csv_rows(b"\xff,1")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=2, max_size=6), min_size=1,
                max_size=5).filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_csv_numbers_read_back_exactly(rows: list[list[float]]) -> None:
    text = "\n".join(",".join(repr(v) for v in row) for row in rows)
    np.testing.assert_array_equal(xgboost_inputs.csv_rows(text), np.array(rows, dtype=np.float64))


def xgboost_reads(text: bytes, tmp: Path) -> object:
    import xgboost

    path = tmp / "body.libsvm"
    path.write_bytes(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XGBoost's text reader is deprecated since 3.1: still the oracle
        return xgboost.DMatrix(f"{path}?format=libsvm")


sparse_row = st.dictionaries(st.integers(0, 7), st.floats(-100, 100, allow_nan=False, width=32), max_size=5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), sparse_row), min_size=1, max_size=6))
def test_libsvm_is_read_as_xgboosts_own_reader_reads_it(tmp_path_factory: pytest.TempPathFactory,
                                                      rows: list[tuple[int, dict[int, float]]]) -> None:
    import xgboost

    text = "".join(f"{label} " + " ".join(f"{k}:{v!r}" for k, v in sorted(f.items())) + "\n" for label, f in rows)
    ours = xgboost.DMatrix(xgboost_inputs.libsvm_matrix(text.encode()))
    theirs = xgboost_reads(text.encode(), tmp_path_factory.mktemp("libsvm"))
    assert (ours.num_row(), ours.num_col()) == (theirs.num_row(), theirs.num_col())  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8))
    booster = xgboost.train({"max_depth": 3}, xgboost.DMatrix(x, label=x[:, 0] - x[:, 5]), 4)
    np.testing.assert_array_equal(booster.predict(ours, validate_features=False),
                                  booster.predict(theirs, validate_features=False))


def test_libsvm_comments_and_bad_tokens() -> None:
    matrix = xgboost_inputs.libsvm_matrix("1 0:1.5 2:3 # a comment\n\n0 1:-1\n")
    np.testing.assert_array_equal(matrix.toarray(), [[1.5, 0, 3], [0, -1, 0]])
    for bad, match in [("1 a:b", "not index:value"), ("1 3", "not index:value"), ("", "no rows")]:
        with pytest.raises(BadRequest, match=match):
            xgboost_inputs.libsvm_matrix(bad)


@pytest.mark.parametrize("content_type", ["application/json", "application/x-npy", "text/plain"])
def test_other_types_are_refused_as_the_container_refuses_them(content_type: str) -> None:
    with pytest.raises(UnsupportedContentType) as caught:
        xgboost_inputs.rows(b"[1, 2]", content_type)
    assert caught.value.status_code == 415 and "text/libsvm" in caught.value.message
    assert "application/x-recordio-protobuf" in caught.value.message
