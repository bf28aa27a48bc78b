"""The default decoders/encoders give exactly what the SageMaker inference toolkit gives."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.codecs import toolkit
from mainsail.errors import BadRequest, UnsupportedAccept, UnsupportedContentType

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
number_text = st.one_of(
    st.integers(-10**12, 10**12).map(str),
    finite.map(repr),
    finite.map(lambda f: f"{f:.6e}"),
    finite.map(lambda f: f" {f} "),
)


def genfromtxt(text: str) -> np.ndarray:
    return np.genfromtxt(io.StringIO(text), delimiter=",")


def assert_as_the_toolkit(text: str) -> None:
    """Ours is the real toolkit's ``decoder.decode`` (``genfromtxt(dtype=None)``), dtype included, except
    where the toolkit builds a structured array (columns of different types): float64 there."""
    import warnings

    from sagemaker_inference import decoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = decoder.decode(text, "text/csv")
    ours = toolkit.decode_csv(text)
    if theirs.dtype.names is not None:
        theirs = genfromtxt(text)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (text, ours.dtype, theirs.dtype)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(toolkit.decode_csv(text, numeric=True), genfromtxt(text))  # the float reading


@settings(max_examples=300, deadline=None)
@given(st.lists(number_text, min_size=1, max_size=30), st.booleans())
def test_csv_single_line_equals_the_toolkit(fields: list[str], newline: bool) -> None:
    assert_as_the_toolkit(",".join(fields) + ("\n" if newline else ""))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6).flatmap(lambda n: st.lists(st.lists(number_text, min_size=n, max_size=n),
                                                    min_size=1, max_size=8)))
def test_csv_multi_line_equals_the_toolkit(rows: list[list[str]]) -> None:
    assert_as_the_toolkit("\n".join(",".join(r) for r in rows) + "\n")


@pytest.mark.parametrize("text", ["1,,3", "a,b", "1,nan,inf", "# comment\n1,2", "1_000,2", "\n\n1,2\n\n",
                                  "  7  ", "1e5,-2.5E-3", "+1,.5,-.5", "1,2,3", "True,False", "a,b\nc,d",
                                  "1, 2\n3, 4\n", "-7"])
def test_csv_edge_cases_equal_the_toolkit(text: str) -> None:
    assert_as_the_toolkit(text)


json_values = st.recursive(
    st.one_of(st.integers(-2**70, 2**70), finite, st.booleans()),
    lambda children: st.lists(children, min_size=1, max_size=4), max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=5) | json_values)
def test_json_decode_equals_np_array_of_json_loads(value: object) -> None:
    text = json.dumps(value)
    try:
        theirs = np.array(json.loads(text))
    except ValueError:
        with pytest.raises(BadRequest):
            toolkit.decode_json(text)
        return
    ours = toolkit.decode_json(text)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_json_nan_literal_is_accepted_like_the_stdlib() -> None:
    assert np.isnan(toolkit.decode_json("[NaN, 1]")[0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(-1e15, 1e15), min_size=2, max_size=2), min_size=1, max_size=5),
       st.sampled_from([np.float64, np.float32, np.int64]))
def test_json_encode_equals_the_toolkit(rows: list[list[float]], dtype: type) -> None:
    array = np.array(rows).astype(dtype)

    def default(obj: object) -> object:
        return obj.tolist()  # type: ignore[attr-defined]

    assert json.loads(toolkit.encode_json(array)) == json.loads(json.dumps(array, default=default))
    assert json.loads(toolkit.encode_json({"p": array[0]})) == json.loads(
        json.dumps({"p": array[0]}, default=default))


def test_csv_and_npy_encode_equal_the_toolkit() -> None:
    array = np.array([[1.5, 2.0], [3.25, 4.0]])
    buf = io.StringIO()
    np.savetxt(buf, array, delimiter=",", fmt="%s")
    assert toolkit.encode_csv(array).decode() == buf.getvalue()
    assert np.load(io.BytesIO(toolkit.encode_npy(array))).tolist() == array.tolist()


def test_encode_takes_the_first_supported_accept_as_given() -> None:
    body, content_type = toolkit.encode([1, 2], "application/xml, text/csv")
    assert (body, content_type) == (b"1\n2\n", "text/csv")
    with pytest.raises(UnsupportedAccept):
        toolkit.encode([1], "application/xml")


def test_npy_with_pickles_is_refused() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest, match="pickled"):
        toolkit.decode(buf.getvalue(), "application/x-npy")


def test_unknown_type_is_unsupported() -> None:
    with pytest.raises(UnsupportedContentType):
        toolkit.decode(b"x", "text/plain")
    with pytest.raises(UnsupportedContentType):
        toolkit.decode(b"x", None)


def test_content_type_parameters_and_case_are_ignored() -> None:
    assert toolkit.decode("[1, 2]", "Application/JSON; charset=utf-8").tolist() == [1, 2]


def test_npz_sparse_matrix_decodes() -> None:
    import scipy.sparse

    matrix = scipy.sparse.csr_matrix(np.eye(3))
    buf = io.BytesIO()
    scipy.sparse.save_npz(buf, matrix)
    decoded = toolkit.decode(buf.getvalue(), "application/x-npz")
    assert (decoded != matrix).nnz == 0
