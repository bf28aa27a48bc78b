"""The serverless cold-start benchmark's harness works end to end (quick mode, tabular model only).

No timing is asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.procs import group_pids  # noqa: E402
from bench.report import markers, write_section  # noqa: E402
from bench.serverless import (  # noqa: E402
    TABULAR,
    ColdStart,
    render_serverless_section,
    results_table,
    run_serverless_benchmark,
    split_from_log,
)


@pytest.mark.slow
def test_quick_serverless_benchmark_times_cold_starts_and_cleans_up(tmp_path: Path) -> None:
    bench = run_serverless_benchmark(quick=True, models=[TABULAR], warm_requests=5, import_repeats=1,
                                     log=lambda line: None)

    assert bench.errors == 0, [c.error for c in bench.cold]
    assert bench.repeats == 2 and len(bench.cold) == 2
    for cold in bench.cold:
        # Each counted cold start moved ModelSetupTime by one, and the first request came after it.
        assert cold.setup_ms is not None and 0 < cold.setup_ms < cold.total_ms
        assert cold.pid is not None and cold.to_spawn_ms is not None
        assert cold.to_listening_ms is not None and cold.to_loaded_ms is not None and cold.load_ms is not None
        assert cold.preloaded is not None and cold.to_accepting_ms is not None and cold.to_ready_ms is not None
    assert bench.cold[0].pid != bench.cold[1].pid  # the endpoint scaled to zero in between
    total, count = bench.setup_metric[TABULAR]
    assert count == 2 and total > 0
    warm = bench.warm[TABULAR]
    assert warm.requests == 5 and warm.errors == 0 and 0 < warm.p50_ms <= warm.p99_ms
    assert '"calibrated-score"' in bench.replies[TABULAR] or "score" in bench.replies[TABULAR]
    assert bench.imports and all(seconds > 0 for seconds in bench.imports.values())
    # Nothing left running.
    assert bench.up_stop_s is not None and bench.up_exit_code == 0 and bench.left_running == 0
    assert all(group_pids(i.pid) == [] for i in bench.instances if i.pid)

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other:start -->\nkept\n<!-- bench:other:end -->\n")
    section = render_serverless_section(bench)
    write_section(out, "serverless", section)
    write_section(out, "serverless", section)  # a re-run replaces its section instead of adding one
    text = out.read_text()
    start, end = markers("serverless")
    assert text.count(start) == 1 and text.count(end) == 1
    assert "kept" in text and "ModelSetupTime" in text and "Where the time goes" in text
    assert "several seconds" in text and results_table(bench) in text


def test_split_from_log_reads_the_instance_timeline(tmp_path: Path) -> None:
    from datetime import datetime

    log = tmp_path / "AllTraffic-0-41234.log"
    log.write_text(
        "2026-01-01 09:00:00,000 INFO [90] mainsail.serve.workers: mainsail serving /m on http://x:1 with 1 worker(s)\n"
        "2026-01-01 10:00:00,500 INFO [100] mainsail.serve.workers: mainsail serving /m on http://x:1 with 1 worker(s)\n"
        "2026-01-01 10:00:01,000 WARNING [100] mainsail.serve.workers: not preloading the model, each worker loads "
        "its own copy: it serves model.onnx\n"
        "2026-01-01 10:00:01,700 INFO [101] mainsail.serve.runtime: model loaded by the pytorch-multimodal handler "
        "in 0.40 s\n"
        "2026-01-01 10:00:01,800 INFO [101] uvicorn.error: Application startup complete.\n"
        "2026-01-01 10:00:05,000 INFO [100] mainsail.serve.workers: received SIGTERM: draining in-flight requests\n")
    started = datetime(2026, 1, 1, 10, 0, 0, 100000).timestamp()
    cold = ColdStart(TABULAR, 1, total_ms=2000.0, setup_ms=1900.0)
    split_from_log(cold, {"pid": 100, "log_path": str(log), "started": started}, sent_at=started - 0.05)
    assert cold.to_spawn_ms == pytest.approx(50, abs=1)
    assert cold.to_listening_ms == pytest.approx(400, abs=1)
    assert cold.no_preload_ms == pytest.approx(500, abs=1)
    assert cold.to_loaded_ms == pytest.approx(1200, abs=1)
    assert cold.load_ms == pytest.approx(400) and cold.preloaded is False
    assert cold.to_accepting_ms == pytest.approx(100, abs=1)
    assert cold.to_ready_ms == pytest.approx(1900 - 1750, abs=1)
    assert cold.request_ms == pytest.approx(100)
