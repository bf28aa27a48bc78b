"""The defaults benchmark's harness works end to end (one short round). No timing is asserted."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.defaults import OFF, ON, render_section, run_defaults_benchmark  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_defaults_benchmark_measures_batching_on_and_off(tmp_path: Path) -> None:
    bench = run_defaults_benchmark(duration_s=1.0, warmup_s=0.0, rounds=1, concurrencies=(1, 16),
                                   log=lambda line: None)

    for system in (ON, OFF):
        for concurrency in (1, 16):
            (result,) = bench.results[(system, concurrency)]
            assert result.errors == 0 and result.requests > 0 and 0 < result.p50_ms <= result.p99_ms
    assert bench.floor_ms and bench.floor_ms[0] > 0
    # Batching off: one request per call. On: the requests' rows stacked, and the check kept them.
    assert bench.batch_means[OFF] == 1.0 and bench.batch_means[ON] >= 1.0
    assert bench.stopped_stacking == {ON: False, OFF: False}
    section = render_section(bench)
    assert "| mainsail serve, batching on (default) | 16 |" in section and "Stacking stayed on" in section
