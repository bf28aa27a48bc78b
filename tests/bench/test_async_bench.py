"""The asynchronous inference benchmark's harness works end to end (quick mode, 10 requests, one
instance, a 1 MB large request). No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.async_inference import large_table, render_async_section, results_table, run_async_benchmark  # noqa: E402
from bench.procs import group_pids  # noqa: E402
from bench.report import markers, write_section  # noqa: E402


@pytest.mark.slow
def test_quick_async_benchmark_measures_the_queue_and_cleans_up(tmp_path: Path) -> None:
    bench = run_async_benchmark(requests=10, instances=(1,), per_instance=(None,), threads=2, large_mb=1,
                                quick=True, deadline_s=60, command="python -m bench async --quick",
                                log=lambda line: None)

    assert bench.errors == 0, [f for c in bench.cells for f in c.failures]
    [cell] = bench.cells
    assert (cell.instances, cell.per_instance, cell.concurrency) == (1, None, 4)
    for latencies in (cell.submit, cell.end_to_end, cell.realtime):
        assert latencies.requests == 10 and latencies.failed == 0
        assert 0 < latencies.p50_ms <= latencies.p99_ms and latencies.rps > 0
    assert bench.large is not None and bench.large.failure is None
    assert bench.large.rows > 0 and bench.large.end_to_end_s > 0 and bench.large.output_mb > 0
    # Nothing left running: mainsail up stopped its instances (and its own process group is gone).
    assert bench.up_exit_code == 0 and bench.left_running == 0 and len(bench.pids) == 2
    assert not any(group_pids(pid) for pid in bench.pids)

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other:start -->\nkept\n<!-- bench:other:end -->\n")
    section = render_async_section(bench)
    write_section(out, "async", section)
    write_section(out, "async", section)  # a re-run replaces its section instead of adding one
    text = out.read_text()
    start, end = markers("async")
    assert text.count(start) == 1 and text.count(end) == 1
    assert "kept" in text and "InvokeEndpointAsync" in text and "Quick smoke run" in text
    assert results_table(bench) in text and large_table(bench) in text
