"""ONNX export of a reference PyTorch model directory: layout, parity with PyTorch and the reference's own
export, serving through the handler, nothing written on failure, and the CLI command."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from mainsail.cli.app import app
from mainsail.errors import ModelLoadError
from mainsail.handlers.pytorch.export import ExportReport, OnnxExportError, ProbabilitiesModule, export_onnx
from mainsail.handlers.pytorch.handler import PyTorchHandler
from mainsail.handlers.pytorch.loading import load_pytorch_model
from tests.conftest import CURSUS_FIXTURE

MODEL = CURSUS_FIXTURE / "model"
REFERENCE_ONNX = MODEL / "model.onnx"
TEXT_INPUTS = ["dialogue_input_ids", "dialogue_attention_mask", "shiptrack_input_ids", "shiptrack_attention_mask"]
TAB_INPUTS = ["num1", "num2", "num3", "num4"]
VOCAB = 171
TOKENS = 32


def copy_model(dest: Path, *, keep_onnx: bool = False) -> Path:
    shutil.copytree(MODEL, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # the shelf is read-only
    if not keep_onnx:
        (dest / "model.onnx").unlink()
    return dest


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    model_dir = copy_model(tmp_path_factory.mktemp("export") / "model")
    extra = make_inputs(2, 2, TOKENS, padding_chunks=True, seed=99)
    extra = {k: (v.reshape(-1) if k in TAB_INPUTS else v) for k, v in extra.items()}  # tab fields as (B,)
    report = export_onnx(model_dir, sample_records=[extra])
    return model_dir, report


@pytest.fixture(scope="module")
def network(exported: tuple[Path, ExportReport]) -> nn.Module:
    model, _ = load_pytorch_model(exported[0])
    return model


def session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def make_inputs(batch: int, chunks: int, tokens: int, *, padding_chunks: bool, seed: int,
                secondary: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Named inputs, every text field (batch, chunks, tokens) unless ``secondary`` gives the second
    field's own (chunks, tokens); with ``padding_chunks`` every record i > 0 keeps only (i % chunks) + 1
    valid chunks, the rest all-zero as the reference's collate pads them."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for index, (ids_name, mask_name) in enumerate(zip(TEXT_INPUTS[::2], TEXT_INPUTS[1::2])):
        c, t = secondary if secondary is not None and index == 1 else (chunks, tokens)
        lengths = rng.integers(1, t + 1, size=(batch, c))
        if padding_chunks:
            for record in range(1, batch):
                lengths[record, record % c + 1:] = 0
        mask = (np.arange(t)[None, None, :] < lengths[:, :, None]).astype(np.int64)
        out[ids_name] = np.where(mask == 1, rng.integers(1, VOCAB, size=(batch, c, t)), 0).astype(np.int64)
        out[mask_name] = mask
    for name in TAB_INPUTS:
        out[name] = rng.normal(0, 3, size=(batch, 1)).astype(np.float32)
    return out


def torch_probs(model: nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        logits = model({k: torch.from_numpy(v) for k, v in inputs.items()})
        return torch.softmax(logits, dim=1).numpy()


SHAPES = [(b, c) for b in (1, 2, 3, 4) for c in (1, 2, 3)]


def test_the_graph_has_the_reference_layout(exported: tuple[Path, ExportReport]) -> None:
    model_dir, report = exported
    assert report.path == model_dir / "model.onnx"
    assert report.inputs == tuple(TEXT_INPUTS + TAB_INPUTS)
    assert report.opset == 14
    assert 0 <= report.max_abs_diff <= 1e-4
    assert oct(report.path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []  # no temporary file left

    ours, reference = onnx.load(str(report.path)), onnx.load(str(REFERENCE_ONNX))
    onnx.checker.check_model(ours)

    def layout(model: onnx.ModelProto) -> list[tuple[str, int, list[str | int]]]:
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in [*model.graph.input, *model.graph.output]]

    # Names, order, types and ranks as the reference's; only the dimension names differ (module docstring).
    assert [(n, t, len(d)) for n, t, d in layout(ours)] == [(n, t, len(d)) for n, t, d in layout(reference)]
    assert [d for _, _, d in layout(ours)] == [
        ["batch", "dialogue_chunks", "dialogue_tokens"], ["batch", "dialogue_chunks", "dialogue_tokens"],
        ["batch", "shiptrack_chunks", "shiptrack_tokens"], ["batch", "shiptrack_chunks", "shiptrack_tokens"],
        ["batch", 1], ["batch", 1], ["batch", 1], ["batch", 1], ["batch", 2],
    ]
    assert layout(ours)[0][1] == onnx.TensorProto.INT64 and layout(ours)[4][1] == onnx.TensorProto.FLOAT
    assert [(o.domain, o.version) for o in ours.opset_import] == [("", 14)]


@pytest.mark.parametrize(("batch", "chunks"), SHAPES)
def test_onnx_runtime_equals_pytorch(exported: tuple[Path, ExportReport], network: nn.Module, batch: int,
                                     chunks: int) -> None:
    run = session(exported[1].path)
    for tokens, padding in ((TOKENS, False), (TOKENS, True), (5, True)):
        inputs = make_inputs(batch, chunks, tokens, padding_chunks=padding, seed=10 * batch + chunks)
        got = run.run(["probs"], inputs)[0]
        np.testing.assert_allclose(got, torch_probs(network, inputs), atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_text_fields_may_differ_in_chunks_and_tokens(exported: tuple[Path, ExportReport], network: nn.Module,
                                                     batch: int) -> None:
    ours, reference = session(exported[1].path), session(REFERENCE_ONNX)
    for chunks, tokens, secondary in ((1, TOKENS, (3, TOKENS)), (3, TOKENS, (1, 9)), (2, 6, (3, TOKENS))):
        inputs = make_inputs(batch, chunks, tokens, padding_chunks=False, seed=batch + chunks, secondary=secondary)
        got = ours.run(["probs"], inputs)[0]
        np.testing.assert_allclose(got, torch_probs(network, inputs), atol=1e-5, rtol=0)
        np.testing.assert_allclose(got, reference.run(["probs"], inputs)[0], atol=1e-5, rtol=0)


def test_padding_chunks_do_not_change_a_records_score(exported: tuple[Path, ExportReport]) -> None:
    run = session(exported[1].path)
    inputs = make_inputs(3, 3, TOKENS, padding_chunks=True, seed=7)
    assert inputs["dialogue_attention_mask"].any(axis=2).sum(axis=1).tolist() == [3, 2, 3]
    together = run.run(["probs"], inputs)[0]
    for record, valid in enumerate([3, 2, 3]):  # record 0 keeps all its chunks, record i > 0 keeps i % 3 + 1
        alone = {k: v[record:record + 1, :valid] if k in TEXT_INPUTS else v[record:record + 1] for k, v in inputs.items()}
        np.testing.assert_allclose(together[record], run.run(["probs"], alone)[0][0], atol=1e-5, rtol=0)
    # The reference's graph, which averages padding chunks in, gives record 1 another score (by little:
    # the fixture's tiny random-init encoders carry a weak text signal).
    reference = session(REFERENCE_ONNX).run(["probs"], inputs)[0]
    assert np.abs(reference[1] - together[1]).max() > 1e-6


@pytest.mark.parametrize(("batch", "chunks"), SHAPES)
def test_it_agrees_with_the_reference_export(exported: tuple[Path, ExportReport], batch: int, chunks: int) -> None:
    # The reference's graph averages over every chunk, padding chunks included, so it is compared on
    # records whose chunks are all real (what the handler feeds: it groups records by chunk count).
    ours, reference = session(exported[1].path), session(REFERENCE_ONNX)
    for tokens in (TOKENS, 5):
        inputs = make_inputs(batch, chunks, tokens, padding_chunks=False, seed=100 + 10 * batch + chunks)
        np.testing.assert_allclose(ours.run(["probs"], inputs)[0], reference.run(["probs"], inputs)[0],
                                   atol=1e-5, rtol=0)


def test_the_handler_serves_the_export_like_the_pytorch_network(exported: tuple[Path, ExportReport]) -> None:
    model_dir = exported[0]
    with_onnx, with_torch = PyTorchHandler(model_dir, use_onnx=True), PyTorchHandler(model_dir, use_onnx=False)
    with_onnx.load()
    with_torch.load()
    assert with_onnx.network is not None and with_onnx.network.kind == "onnx"
    cases: list[dict[str, Any]] = json.loads((CURSUS_FIXTURE / "cases.json").read_text())
    bodies = {(c["request_file"], c["content_type"]) for c in cases}
    assert len(bodies) >= 10
    for request_file, content_type in sorted(bodies):
        body = (CURSUS_FIXTURE / request_file).read_bytes()
        records = with_onnx.records(body, content_type)
        np.testing.assert_allclose(with_onnx.predict_records(records), with_torch.predict_records(records),
                                   atol=1e-5, rtol=0, err_msg=request_file)


class Skewed(ProbabilitiesModule):
    """A deliberately wrong export: probabilities pulled towards class 0."""

    def forward(self, *inputs: Tensor) -> Tensor:
        probs = super().forward(*inputs)
        return probs * 0.9 + torch.tensor([0.1, 0.0])


def skewed(network: nn.Module, names: Sequence[str]) -> nn.Module:
    return Skewed(network, names)


def test_a_failed_parity_check_writes_nothing(tmp_path: Path) -> None:
    model_dir = copy_model(tmp_path / "model", keep_onnx=True)
    before = sorted(p.name for p in model_dir.iterdir())
    with pytest.raises(OnnxExportError, match=r"max abs difference of the probabilities 0\.\d+ > atol 0.0001"):
        export_onnx(model_dir, module_factory=skewed)
    assert sorted(p.name for p in model_dir.iterdir()) == before  # no temporary file left behind
    assert (model_dir / "model.onnx").read_bytes() == REFERENCE_ONNX.read_bytes()

    with pytest.raises(OnnxExportError):
        export_onnx(model_dir, output=tmp_path / "other.onnx", module_factory=skewed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model directory not found"):
        export_onnx(tmp_path / "missing")
    with pytest.raises(ValueError, match="atol"):
        export_onnx(MODEL, atol=-1.0)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(MODEL, opset=13)
    with pytest.raises(OnnxExportError, match="output folder does not exist"):
        export_onnx(MODEL, output=tmp_path / "no" / "model.onnx")


def test_the_cli_command(tmp_path: Path) -> None:
    model_dir = copy_model(tmp_path / "model")
    target = tmp_path / "exported.onnx"
    runner = CliRunner()
    result = runner.invoke(app, ["export-onnx", str(model_dir), "--output", str(target), "--opset", "14",
                                 "--atol", "1e-4"])
    assert result.exit_code == 0, result.output
    assert f"wrote {target}" in result.stdout
    assert "max abs diff" in result.stdout
    assert [i.name for i in session(target).get_inputs()] == TEXT_INPUTS + TAB_INPUTS
    assert not (model_dir / "model.onnx").exists()

    failed = runner.invoke(app, ["export-onnx", str(tmp_path / "missing")])
    assert failed.exit_code == 1
    assert "error: model directory not found" in failed.stderr
