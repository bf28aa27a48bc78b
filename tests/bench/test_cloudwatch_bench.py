"""The CloudWatch benchmark's harness works end to end at a tiny size (two endpoints, half an hour of
minutes, two calls per request). No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.cloudwatch import METRICS, render_cloudwatch_section, run_cloudwatch_benchmark  # noqa: E402
from bench.report import markers, write_section  # noqa: E402


@pytest.mark.slow
def test_tiny_cloudwatch_benchmark(tmp_path: Path) -> None:
    lines: list[str] = []
    bench = run_cloudwatch_benchmark(endpoints=2, hours=0.5, repeats=2, warmup=1, command="test", log=lines.append)

    assert bench.rows == 2 * 30 * len(METRICS) and bench.db_mb > 0
    assert [t.queries for t in bench.timings] == [2, 2, 1]
    per_minute, sums, five_minutes = bench.timings
    assert per_minute.datapoints == sums.datapoints == 2 * 30  # every minute of both endpoints
    assert 6 <= five_minutes.datapoints <= 7
    for timing in bench.timings:
        assert len(timing.client_ms) == len(timing.http_ms) == len(timing.parse_ms) == len(timing.server_ms) == 2
        assert 0 < timing.client(0.5) <= timing.client(0.99) and 0 < timing.server(0.5)
        assert 0 < timing.http(0.5) and 0 < timing.parse(0.5)

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other:start -->\nkept\n<!-- bench:other:end -->\n")
    section = render_cloudwatch_section(bench)
    write_section(out, "cloudwatch", section)
    write_section(out, "cloudwatch", section)  # a re-run replaces its section
    text = out.read_text()
    assert text.count(markers("cloudwatch")[0]) == 1 and "kept" in text
    assert "GetMetricData" in text and "2 endpoints × ModelLatency p99, Period 60" in text
    assert "Where the time goes" in text
