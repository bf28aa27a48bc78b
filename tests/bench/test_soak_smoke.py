"""The soak test's harness works end to end (seconds instead of minutes). No timing or target is asserted."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.rateload import IntervalResult, interval_bounds  # noqa: E402
from bench.report import markers  # noqa: E402
from bench.soak import ProcSample, SoakBenchmark, SoakInterval, process_tree, sample_processes  # noqa: E402
from bench.soak_report import TABLE_HEAD  # noqa: E402


def test_intervals_cut_the_run_after_the_warm_up() -> None:
    assert interval_bounds(6, 2, 1) == [("warmup", 0, 0, 1), ("soak", 1, 1, 3), ("soak", 2, 3, 5), ("soak", 3, 5, 7)]
    assert interval_bounds(5, 2) == [("soak", 1, 0, 2), ("soak", 2, 2, 4), ("soak", 3, 4, 5)]
    assert interval_bounds(600, 60, 30)[-1] == ("soak", 10, 570, 630)
    with pytest.raises(ValueError):
        interval_bounds(0, 1)


def _interval(index: int, p99_ms: float, rss_mib: float, errors: int = 0, late_ms: float = 0.1) -> SoakInterval:
    load = IntervalResult("warmup" if index == 0 else "soak", index, 0.0, 1.0, 100, 100, errors, {"200": 100},
                          100.0, 1.0, 2.0, p99_ms, p99_ms, late_ms, 0, 8, 0.01)
    procs = ProcSample(3, rss_mib, rss_mib / 3, 40, 9, 1.0, 1.0, 0.0, 0.0)
    return SoakInterval(load, procs, 0.5, 0.01, 0.0)


def _bench(*intervals: SoakInterval) -> SoakBenchmark:
    bench = SoakBenchmark(datetime.now(UTC), "python -m bench soak", "up", 3.0, 1.0, 1.0, 0.8, 2, 2.0, 64)
    bench.intervals = list(intervals)
    return bench


def test_the_verdict_compares_the_last_interval_with_the_first_after_the_warm_up() -> None:
    # The warm-up (index 0) is left out: its RSS and p99 would fail both targets.
    bench = _bench(_interval(0, 50.0, 100.0), _interval(1, 10.0, 500.0), _interval(2, 30.0, 600.0),
                   _interval(3, 10.9, 524.0))
    assert bench.rss_growth_pct == pytest.approx(4.8) and bench.p99_drift_pct == pytest.approx(9.0)
    assert bench.passed and [c.met for c in bench.checks()] == [True, True, True]
    assert not _bench(_interval(1, 10.0, 500.0), _interval(2, 11.0, 500.0)).passed  # p99 +10 %
    assert not _bench(_interval(1, 10.0, 500.0), _interval(2, 9.0, 526.0)).passed  # RSS +5.2 %
    assert _bench(_interval(1, 10.0, 500.0), _interval(2, 5.0, 400.0)).passed  # getting better passes
    assert not _bench(_interval(1, 10.0, 500.0), _interval(2, 10.0, 500.0, errors=1)).passed
    assert not bench.behind
    # Requests that waited in the client mean the server fell behind the rate: flagged, the verdict unchanged.
    queued = _bench(_interval(0, 10.0, 500.0, late_ms=900.0), _interval(1, 10.0, 500.0), _interval(2, 10.0, 500.0),
                    _interval(3, 400.0, 500.0, late_ms=350.0))
    assert [i.load.index for i in queued.behind] == [3] and not queued.passed
    one = _bench(_interval(1, 10.0, 500.0))  # nothing to compare: not measured, so not a pass
    assert one.rss_growth_pct is None and [c.met for c in one.checks()] == [None, None, True] and not one.passed


def test_the_server_processes_are_the_root_and_all_its_descendants() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                              "subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"])
    try:
        deadline = time.monotonic() + 10
        while len(process_tree(child.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(process_tree(child.pid)) == 2
        sample = sample_processes(child.pid)
        assert sample.processes == 2 and sample.rss_mib > sample.root_rss_mib > 0
        assert sample.fds >= 6 and sample.threads >= 2
    finally:
        for pid in reversed(process_tree(child.pid)):
            os.kill(pid, signal.SIGTERM)
        child.wait(10)
    assert process_tree(child.pid) == []


@pytest.mark.slow
def test_a_seconds_long_soak_through_mainsail_up_writes_its_table_in_place(tmp_path: Path) -> None:
    out = tmp_path / "reliability.md"
    start, end = markers("soak")
    out.write_text(f"# Reliability\n\n{start}\nan older soak\n{end}\n\n<!-- bench:other:start -->\nkept\n"
                   "<!-- bench:other:end -->\n")
    argv = [sys.executable, "-m", "bench", "soak", "--duration", "6", "--interval", "2", "--warmup", "1",
            "--capacity-seconds", "2", "--search-seconds", "1", "--out", str(out)]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: a target was not met (seconds are noisy)
    assert time.monotonic() - started < 120  # the capacity search is at most 15 runs of 1.25 s

    text = out.read_text()
    assert text.count(start) == 1 and text.count(end) == 1 and "an older soak" not in text
    assert text.index(start) < text.index("<!-- bench:other:start -->") and "kept" in text  # replaced in place
    verdict = "PASS" if done.returncode == 0 else "FAIL"
    assert f"### Verdict: {verdict}" in text and f"soak: {verdict}" in done.stdout
    assert "## Soak" in text and "`mainsail up`" in text and "A shorter run than the issue's" in text
    lines = text.splitlines()
    head = lines.index(TABLE_HEAD)
    rows = [line.split("|")[1:-1] for line in itertools.takewhile(lambda line: line.startswith("| "), lines[head + 2:])]
    assert [r[0].strip() for r in rows] == ["before (idle, after the capacity run)", "warm-up", "1", "2", "3"]
    columns = len(TABLE_HEAD.split("|")) - 2
    number = re.compile(r"^-?[\d,]+(\.\d+)?$")
    for row in rows[1:]:
        assert len(row) == columns, row
        cells = [c.strip() for c in row]
        assert all(number.match(c) for i, c in enumerate(cells[1:], 1) if i != 14), cells
        assert float(cells[2].replace(",", "")) > 0 and int(cells[4].replace(",", "")) >= 0  # req/s, errors
        assert float(cells[8].replace(",", "")) > 0 and int(cells[10]) > 0 and int(cells[12]) >= 3  # RSS, fds, procs
    assert "Capacity:" in text and "closed loop with" in text and "(`BatchSize`" in text
    # the open-loop capacity search ran and its table is there, ending at the rate held (or at its last step)
    assert "| share of the closed-loop figure |" in text and ("| yes |" in text or "no open-loop rate" in text)
    # Nothing left running: the soak's mainsail up took its instance with it.
    assert "bench-soak" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
