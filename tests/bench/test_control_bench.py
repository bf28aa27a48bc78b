"""The control-plane hop benchmark's harness works end to end (quick mode). No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.control import (  # noqa: E402
    DIRECT,
    HOP,
    control_checks,
    instance_from_logs,
    render_control_section,
    run_control_benchmark,
)
from bench.procs import group_pids  # noqa: E402
from bench.report import markers, write_section  # noqa: E402


@pytest.mark.slow
def test_quick_control_benchmark_measures_both_paths_and_cleans_up(tmp_path: Path) -> None:
    bench = run_control_benchmark(quick=True, duration_s=0.5, warmup_s=0.2, log=lambda line: None)

    assert bench.rounds == 1 and bench.errors == 0
    assert bench.instance is not None and bench.instance.found_via == "state.db" and bench.instance.pid
    for path in (DIRECT, HOP):
        for concurrency in (1, 16):
            cell = bench.cell(path, concurrency)
            assert cell is not None, (path, concurrency)
            assert cell.errors == 0, [m.result.error_samples for m in cell.rounds]
            assert cell.requests > 0 and cell.rps > 0 and 0 < cell.p50_ms <= cell.p99_ms, (path, concurrency)
    # Both paths reached the same model and got the same answer shape.
    assert bench.sample_response.startswith("[")
    assert all(m.up_cpu_s > 0 for m in bench.measurements if m.path == HOP)
    assert bench.overhead_ms(1) is not None and bench.overhead_ms(16) is not None
    assert len(bench.boto3_loops) == 1 and bench.boto3_loops[0].calls > 0
    assert [c.met is not None for c in control_checks(bench)] == [True]
    # Nothing left running: the control plane exited on SIGTERM and took its instance with it.
    assert bench.up_stop_s is not None and bench.up_exit_code == 0
    assert not bench.instance.left_running and group_pids(bench.instance.pid) == []

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other:start -->\nkept\n<!-- bench:other:end -->\n")
    section = render_control_section(bench)
    write_section(out, "control", section)
    write_section(out, "control", section)  # a re-run replaces its section instead of adding one
    text = out.read_text()
    start, end = markers("control")
    assert text.count(start) == 1 and text.count(end) == 1
    assert "kept" in text and "Hop overhead" in text and "boto3" in text


def test_instance_port_falls_back_to_the_log_file_name(tmp_path: Path) -> None:
    logs = tmp_path / "logs" / "my-endpoint"
    logs.mkdir(parents=True)
    (logs / "All-Traffic-0-41234.log").write_text("")
    info = instance_from_logs(tmp_path, "my-endpoint")
    assert info is not None and (info.variant, info.port, info.pid) == ("All-Traffic", 41234, None)
    assert instance_from_logs(tmp_path, "absent") is None
