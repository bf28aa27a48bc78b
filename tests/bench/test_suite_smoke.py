"""The peer suite's harness works end to end on a tiny subset (no MLServer). No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # ``bench/`` lives at the repository root, outside the package
    sys.path.insert(0, str(ROOT))

from bench.report import markers  # noqa: E402
from bench.suite import run_suite  # noqa: E402
from bench.suite_report import suite_checks, write_report  # noqa: E402
from bench.suite_systems import FLOOR  # noqa: E402


@pytest.mark.slow
def test_suite_on_one_model_measures_every_cell_and_writes_its_section_and_chart(tmp_path: Path) -> None:
    bench = run_suite(models=["sklearn"], systems=["mainsail", "fastapi"], concurrencies=[1, 16], records=[1, 4],
                      duration_s=1.0, warmup_s=0.2, quick=True, log=lambda line: None)

    for records in (1, 4):
        floor = bench.cell("sklearn", FLOOR, records, 1)
        assert floor is not None and floor.rps > 0
        for system in ("mainsail", "fastapi"):
            for concurrency in (1, 16):
                cell = bench.cell("sklearn", system, records, concurrency)
                assert cell is not None, (system, records, concurrency)
                assert cell.errors == 0, cell.result
                assert cell.rps > 0 and 0 < cell.result.p50_ms <= cell.result.p99_ms
    # Both servers ran the same script on the same body, so they answered the same probabilities.
    assert bench.replies[("sklearn", "mainsail")] == bench.replies[("sklearn", "fastapi")]
    assert bench.replies[("sklearn", "mainsail")].startswith("[0.")
    assert all(m.pss_mib > 0 and m.processes >= 2 for m in bench.memory.values()) and len(bench.memory) == 2
    assert not bench.skipped
    assert [c.met for c in suite_checks(bench)][-1] is not None  # the sklearn tail check was computed

    out, img = tmp_path / "benchmarks.md", tmp_path / "img"
    out.write_text("# Benchmarks\n\n<!-- bench:serve:start -->\nkept\n<!-- bench:serve:end -->\n")
    charts = write_report(bench, out, img)
    write_report(bench, out, img)  # a re-run replaces its section instead of adding one
    text = out.read_text()
    start, end = markers("suite")
    assert text.count(start) == 1 and text.count(end) == 1 and "kept" in text
    assert "| FastAPI + uvicorn | 4 | 16 |" in text and "Target checks" in text and "Quick smoke run" in text
    assert "![sklearn: throughput vs p99](img/suite-sklearn.png)" in text
    assert charts["sklearn"].read_bytes().startswith(b"\x89PNG")
