"""``application/x-recordio-protobuf``: read and written as the SageMaker SDK writes it.

The fixtures in ``tests/fixtures/recordio`` were written by the SDK itself (``sagemaker`` 2.257.7,
``sagemaker.serializer_utils.write_numpy_to_dense_tensor`` / ``write_spmatrix_to_sparse_tensor``; the
arrays are in ``expected.json``), so the reader is checked against the real writer and the writer
byte for byte against it.
"""

from __future__ import annotations

import json
import struct
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest

from mainsail.codecs import recordio
from mainsail.errors import BadRequest
from tests.conftest import ServerProcess, write_script

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "recordio"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())["cases"]
LABELS = np.array([0, 1, 0, 1, 1], dtype=np.float32)


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.recordio").read_bytes()


def want(name: str) -> np.ndarray:
    case = EXPECTED[name]
    return np.array(case["rows"]).astype({"float32": np.float32, "float64": np.float64, "int64": np.int64}[case["dtype"]])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_what_the_sdk_writes_reads_back(name: str) -> None:
    rows = recordio.read_rows(fixture(name))
    if EXPECTED[name]["sparse"]:
        assert rows.format == "csr" and rows.shape == (4, 10) and rows.dtype == np.float32
        assert np.array_equal(rows.toarray(), want(name))  # the all-zero row included
    else:
        assert isinstance(rows, np.ndarray) and np.array_equal(rows, want(name))
        assert rows.dtype == {"float32": np.float32, "float64": np.float64, "int64": np.int32}[EXPECTED[name]["dtype"]]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_writer_writes_the_sdks_bytes(name: str) -> None:
    from scipy.sparse import csr_matrix

    array = csr_matrix(want(name)) if EXPECTED[name]["sparse"] else want(name)
    labels = LABELS if name.endswith("_labels") else None
    assert recordio.write_records(array, labels) == fixture(name)


def test_broken_bodies_are_400s_saying_where() -> None:
    body = fixture("dense_float64")
    cases = {
        b"": "holds no records",
        b"\x00" * 8 + body: "no record magic (0xced7230a) at byte 0",
        body[:-20]: "is truncated",
        body + b"\x0a\x23": "ends inside a record header",
        struct.pack("<II", recordio.MAGIC, 4) + b"\xff\xff\xff\xff": "is not a protobuf Record",
    }
    for raw, message in cases.items():
        with pytest.raises(BadRequest) as exc:
            recordio.read_rows(raw)
        assert message in exc.value.message, raw[:16]
    record = recordio.record_class()()
    record.features["values"].bytes.value.append(b"x")
    payload = record.SerializeToString()
    with pytest.raises(BadRequest, match="is bytes, not a tensor"):
        recordio.read_rows(struct.pack("<II", recordio.MAGIC, len(payload)) + payload + b"\0" * (-len(payload) % 4))


def test_the_xgboost_default_input_reads_recordio_over_http(tmp_path: Path, home: Path) -> None:
    """A script with only model_fn: the XGBoost container's default input_fn takes the SDK's
    RecordSerializer bodies, dense and sparse, and the answers are the booster's on the same rows."""
    import xgboost
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)), rng.integers(0, 2, 64)
    booster = xgboost.train({"max_depth": 3, "objective": "binary:logistic"}, xgboost.DMatrix(x, label=y), 8)
    booster.save_model(tmp_path / "model.json")
    write_script(tmp_path, textwrap.dedent("""
        import os
        import xgboost

        def model_fn(model_dir):
            booster = xgboost.Booster()
            booster.load_model(os.path.join(model_dir, "model.json"))
            return booster
    """))
    sparse = csr_matrix(np.array([[0.5, 0, -1.0, 0], [0, 0, 0, 0], [1.5, 2.0, 0, 0.25]], dtype=np.float32))
    with ServerProcess([str(tmp_path), "--workers", "1"], home=home) as server:
        def post(body: bytes) -> httpx.Response:
            return httpx.post(server.url + "/invocations", content=body,
                              headers={"Content-Type": "application/x-recordio-protobuf", "Accept": "application/json"})

        dense = post(fixture("dense_float32_labels"))
        assert dense.status_code == 200
        assert dense.json() == json.loads(json.dumps(booster.predict(xgboost.DMatrix(want("dense_float32_labels"))).tolist()))
        answer = post(recordio.write_records(sparse))
        assert answer.status_code == 200
        assert answer.json() == json.loads(json.dumps(booster.predict(xgboost.DMatrix(sparse)).tolist()))
        broken = post(b"not recordio at all")
        assert broken.status_code == 400 and "no record magic" in broken.json()["message"]
        assert post(fixture("dense_float32_labels")).json() == dense.json()  # the server goes on


def test_the_container_modules_read_and_write_recordio(tmp_path: Path) -> None:
    import sys

    import xgboost

    from mainsail.handlers import provided
    sys.path.append(provided.PATH)
    try:
        from sagemaker_containers.beta.framework import encoders
        from sagemaker_xgboost_container import encoder
    finally:
        sys.path.remove(provided.PATH)
    assert encoders.array_to_recordio_protobuf(want("dense_float64")) == fixture("dense_float64")
    assert encoders.array_to_recordio_protobuf(want("dense_float64")[0]) == fixture("dense_float64")[:72]
    matrix = encoder.recordio_protobuf_to_dmatrix(fixture("dense_float32_labels"))
    assert isinstance(matrix, xgboost.DMatrix) and (matrix.num_row(), matrix.num_col()) == (5, 4)
    assert encoder.decode(fixture("sparse_float32"), "application/x-recordio-protobuf").num_col() == 10
