"""The tabular benchmark's harness works end to end (quick mode). No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.report import markers, write_section  # noqa: E402
from bench.tabular import (  # noqa: E402
    HTTP,
    IN_PROCESS,
    PIECES,
    SEQUENCES,
    render_tabular_section,
    run_tabular_benchmark,
    tabular_checks,
)


@pytest.mark.slow
def test_quick_tabular_benchmark_measures_every_cell_and_writes_its_section(tmp_path: Path) -> None:
    bench = run_tabular_benchmark(quick=True, log=lambda line: None)

    assert bench.rounds == 1 and bench.model["trees"] == 100 and bench.model["features"] == 30
    for spec in IN_PROCESS + PIECES:
        cell = bench.cell(spec.key)
        assert cell is not None and cell.count > 0 and 0 < cell.p50_ms <= cell.p99_ms, spec.key
    for kind, keys in SEQUENCES.items():
        for key in keys:
            cell = bench.cell(f"seq-{kind}/{key}")
            assert cell is not None and cell.count > 0, (kind, key)
    for spec in HTTP:
        cell = bench.cell(spec.key)
        assert cell is not None, spec.key
        assert cell.errors == 0, [s.result.error_samples for s in cell.samples]  # type: ignore[union-attr]
        assert cell.count > 0 and cell.rate > 0 and 0 < cell.p50_ms <= cell.p99_ms, spec.key
    assert bench.errors == 0
    # Over HTTP, mainsail picked the tabular handler and answered what the handler answers in process.
    reply = bench.replies["in-process"]
    assert '"calibrated-score"' in reply
    assert all(reply.startswith(bench.replies[key]) for key in ("http-w1-c1", "http-w2-c1", "http-w2-c16"))
    assert all(s.stop_s is not None and s.exit_code == 0 for s in bench.servers), bench.servers
    assert [c.met is not None for c in tabular_checks(bench)] == [True, True, True]

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:serve:start -->\nkept\n<!-- bench:serve:end -->\n")
    section = render_tabular_section(bench)
    write_section(out, "tabular", section)
    write_section(out, "tabular", section)  # a re-run replaces its section instead of adding one
    text = out.read_text()
    start, end = markers("tabular")
    assert text.count(start) == 1 and text.count(end) == 1
    assert "kept" in text and "Target checks" in text and "Quick smoke run" in text
    assert "| (d) `mainsail serve --workers 1`: JSON record | HTTP | 1 |" in text
    assert "Where the time goes" in text and "sum of the stages" in text
