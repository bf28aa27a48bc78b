"""The serve benchmark's harness works end to end (quick mode). No timing is asserted."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.report import (  # noqa: E402
    issue14_checks,
    markers,
    milestone_checks,
    ratios_table,
    render_serve_section,
    write_section,
)
from bench.serve import DEFAULT_SYSTEMS, SYSTEM_LABELS, run_serve_benchmark  # noqa: E402
from bench.systems import BARE, MAINSAIL, MAINSAIL_TUNED  # noqa: E402


@pytest.mark.slow
def test_quick_serve_benchmark_measures_every_cell_and_writes_its_section(tmp_path: Path) -> None:
    # every system (mainsail default and tuned, FastAPI, the bare ASGI app, Flask), the Python load generator
    bench = run_serve_benchmark(quick=True, duration_s=1.0, loadgen="python", log=lambda line: None)

    assert bench.loadgen == "python" and bench.systems == list(DEFAULT_SYSTEMS)
    assert bench.floors and bench.floors[0].calls > 0 and bench.floor_p50_ms
    assert bench.loadgen_check is not None and bench.loadgen_check.errors == 0
    for system in DEFAULT_SYSTEMS:
        for concurrency in (1, 16):
            cell = bench.cell(system, concurrency)
            assert cell is not None, (system, concurrency)
            assert cell.errors == 0, [m.result.error_samples for m in cell.rounds]
            assert cell.requests > 0 and cell.rps > 0 and 0 < cell.p50_ms <= cell.p99_ms
    assert all(info.stop_s is not None and info.exit_code == 0 for info in bench.servers), bench.servers
    assert all(check.met is not None for check in [*milestone_checks(bench), *issue14_checks(bench)])
    mainsail = next(s for s in bench.servers if s.system == MAINSAIL)
    assert "--log-level" not in mainsail.argv  # the default configuration, as users run it
    assert next(s for s in bench.servers if s.system == MAINSAIL_TUNED).argv[-2:] == ["--log-level", "warning"]
    assert f"| {SYSTEM_LABELS[BARE]} (2 workers) |" in ratios_table(bench)

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other:start -->\nkept\n<!-- bench:other:end -->\n")
    section = render_serve_section(bench)
    write_section(out, "serve", section)
    write_section(out, "serve", section)  # a re-run replaces its section instead of adding one
    text = out.read_text()
    start, end = markers("serve")
    assert text.count(start) == 1 and text.count(end) == 1
    assert "kept" in text and "| mainsail serve (2 workers) | 16 |" in text
    assert "Milestone checks" in text and "Issue 14 targets" in text
    assert "| mainsail serve --log-level warning (tuned, 2 workers) | 16 |" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_quick_serve_benchmark_with_wrk() -> None:
    bench = run_serve_benchmark(quick=True, duration_s=1.0, loadgen="auto", systems=(MAINSAIL, BARE),
                                loadgen_check=False, log=lambda line: None)

    assert bench.loadgen == "wrk" and bench.warmup_s == 1.0
    for system in (MAINSAIL, BARE):
        for concurrency in (1, 16):
            cell = bench.cell(system, concurrency)
            assert cell is not None and cell.errors == 0 and cell.requests > 0, (system, concurrency)
            assert 0 < cell.p50_ms <= cell.p99_ms and cell.rounds[0].result.client_cpu_us_per_req > 0
