"""The serve benchmark's harness works end to end (quick mode). No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.report import markers, milestone_checks, render_serve_section, write_section  # noqa: E402
from bench.serve import FLASK, MAINSAIL, run_serve_benchmark  # noqa: E402


@pytest.mark.slow
def test_quick_serve_benchmark_measures_every_cell_and_writes_its_section(tmp_path: Path) -> None:
    bench = run_serve_benchmark(quick=True, duration_s=1.0, log=lambda line: None)

    assert bench.floors and bench.floors[0].calls > 0 and bench.floor_p50_ms
    assert bench.loadgen_check is not None and bench.loadgen_check.errors == 0
    for system in (MAINSAIL, FLASK):
        for concurrency in (1, 16):
            cell = bench.cell(system, concurrency)
            assert cell is not None, (system, concurrency)
            assert cell.errors == 0, [m.result.error_samples for m in cell.rounds]
            assert cell.requests > 0 and cell.rps > 0 and 0 < cell.p50_ms <= cell.p99_ms
    assert all(info.stop_s is not None and info.exit_code == 0 for info in bench.servers), bench.servers
    assert all(check.met is not None for check in milestone_checks(bench))

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other:start -->\nkept\n<!-- bench:other:end -->\n")
    section = render_serve_section(bench)
    write_section(out, "serve", section)
    write_section(out, "serve", section)  # a re-run replaces its section instead of adding one
    text = out.read_text()
    start, end = markers("serve")
    assert text.count(start) == 1 and text.count(end) == 1
    assert "kept" in text and "| mainsail serve (2 workers) | 16 |" in text
    assert "Milestone checks" in text
