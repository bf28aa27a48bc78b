"""The PyTorch benchmark's harness works end to end (quick mode, tiny model only). No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.pytorch import (  # noqa: E402
    BATCH,
    http_specs,
    in_process_specs,
    pytorch_checks,
    render_pytorch_section,
    run_pytorch_benchmark,
    sizes_arg,
)
from bench.report import markers, write_section  # noqa: E402


@pytest.mark.slow
def test_quick_pytorch_benchmark_measures_every_cell_and_writes_its_section(tmp_path: Path) -> None:
    bench = run_pytorch_benchmark(quick=True, sizes=["tiny"], log=lambda line: None)

    assert bench.rounds == 1 and bench.sizes == ["tiny"] and bench.workers == [1]
    info = bench.models["tiny"]
    assert info.onnx_vs_pytorch < 1e-4 and info.export_max_abs_diff < 1e-4
    assert info.chunks >= 1 and len(info.batch_chunks) == BATCH
    for spec in in_process_specs("tiny"):
        cell = bench.cell(spec.key)
        assert cell is not None and cell.count > 0 and 0 < cell.p50_ms <= cell.p99_ms, spec.key
    for spec in http_specs("tiny", [1]):
        cell = bench.cell(spec.key)
        assert cell is not None, spec.key
        assert cell.errors == 0, [s.result.error_samples for s in cell.samples]  # type: ignore[union-attr]
        assert cell.count > 0 and cell.rate > 0 and 0 < cell.p50_ms <= cell.p99_ms, spec.key
    # Over HTTP, mainsail picked the PyTorch handler and answered in its layout.
    assert '"legacy-score"' in info.reply and '"score-percentile"' in info.reply
    assert all('"legacy-score"' in reply for reply in info.http_replies.values())
    assert info.reply.startswith(info.http_replies["tiny/pytorch/w1-c1"])
    assert len(bench.servers) == 2
    assert bench.errors == 0
    assert all(s.stop_s is not None and s.exit_code == 0 for s in bench.servers), bench.servers
    assert all(c.met is not None for c in pytorch_checks(bench))

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:serve:start -->\nkept\n<!-- bench:serve:end -->\n")
    section = render_pytorch_section(bench)
    write_section(out, "pytorch", section)
    write_section(out, "pytorch", section)  # a re-run replaces its section instead of adding one
    text = out.read_text()
    start, end = markers("pytorch")
    assert text.count(start) == 1 and text.count(end) == 1
    assert "kept" in text and "Quick smoke run" in text and "20–200 ms" in text
    assert "| tiny | `mainsail serve --workers 1`, onnx | HTTP | 16 |" in text


def test_size_option() -> None:
    assert sizes_arg("both") == ["tiny", "minilm"] and sizes_arg("tiny") == ["tiny"]
    assert sizes_arg("auto")[0] == "tiny"
    with pytest.raises(ValueError):
        sizes_arg("huge")
