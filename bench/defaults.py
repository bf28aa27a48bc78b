"""A script that leaves ``predict_fn`` to the container's default: batching on (default) vs off.

The serve benchmark's model (an XGBoost classifier saved with joblib, ``bench/model.py``) behind a
script that defines ``model_fn`` only, so the scikit-learn container's default ``input_fn`` /
``predict_fn`` / ``output_fn`` answer (``model.predict`` on float32 rows). ``mainsail serve`` runs it
twice, side by side: as a user starts it (adaptive batching on, which for this script stacks the
queued requests' rows into one ``predict``) and with ``MAINSAIL_BATCHING=false`` (one request per
call, what SageMaker's container does). wrk drives one CSV record per request; the in-process row is
the same default chain called directly, one request at a time. Rounds are interleaved and the table
shows medians. At the end each server's ``/metrics`` says how many requests its model calls carried,
and its log whether stacking stayed on.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.loadgen import LoadResult
from bench.model import build_model_dir
from bench.procs import Server, free_port, running
from bench.report import machine_summary, write_section
from bench.systems import HOST, ROOT, mainsail_argv, server_env
from bench.wrk import run_wrk, wrk_path

SCRIPT = '''import os

import joblib


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
'''

ON, OFF = "batching on (default)", "MAINSAIL_BATCHING=false"


@dataclass
class DefaultsBenchmark:
    started: datetime
    command: str
    concurrencies: list[int]
    rounds: int
    duration_s: float
    results: dict[tuple[str, int], list[LoadResult]] = field(default_factory=dict)
    floor_ms: list[float] = field(default_factory=list)
    batch_means: dict[str, float] = field(default_factory=dict)
    stopped_stacking: dict[str, bool] = field(default_factory=dict)
    wall_s: float = 0.0

    def median(self, system: str, concurrency: int, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.results[(system, concurrency)]))


def floor_p50_ms(model_dir: Path, body: bytes, duration_s: float) -> float:
    """The default chain in this process, one request at a time: p50 of each call, in ms."""
    from mainsail.handlers.base import Invocation
    from mainsail.handlers.script import ScriptHandler

    handler = ScriptHandler(model_dir / "code" / "inference.py", model_dir)
    handler.load()
    invocation = Invocation(body, "text/csv", "application/json")
    times: list[float] = []
    deadline = time.perf_counter() + duration_s
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        handler.invoke(invocation)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def batch_mean(server: Server) -> float:
    text = urllib.request.urlopen(f"{server.url}/metrics", timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("BatchSize_sum ", "BatchSize_count "))}
    count = values.get("BatchSize_count", 0.0)
    return values.get("BatchSize_sum", 0.0) / count if count else 1.0


def run_defaults_benchmark(*, duration_s: float = 5.0, warmup_s: float = 1.0, rounds: int = 3,
                           concurrencies: tuple[int, ...] = (1, 16, 64), command: str = "python -m bench defaults",
                           log: Callable[[str], None] = print) -> DefaultsBenchmark:
    if wrk_path() is None:
        raise RuntimeError("this benchmark drives the servers with wrk: install it (apt install wrk)")
    bench = DefaultsBenchmark(datetime.now(UTC), command, list(concurrencies), rounds, duration_s)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-defaults-"))
    try:
        model = build_model_dir(tmp / "model")
        (model.path / "code" / "inference.py").write_text(SCRIPT)
        body = tmp / "record.csv"
        body.write_bytes(model.csv_row)
        with contextlib.ExitStack() as stack:
            servers: dict[str, Server] = {}
            for system, extra in ((ON, {}), (OFF, {"MAINSAIL_BATCHING": "false"})):
                port = free_port()
                env = server_env({"MAINSAIL_HOME": str(tmp / f"home-{len(servers)}"), **extra})
                log(f"starting mainsail serve, {system}, on port {port}")
                servers[system] = stack.enter_context(running(
                    system, mainsail_argv(model.path, port, 2), host=HOST, port=port, env=env, cwd=ROOT))
            for round_ in range(1, rounds + 1):
                log(f"round {round_}/{rounds}: in-process default chain")
                bench.floor_ms.append(floor_p50_ms(model.path, model.csv_row, min(duration_s, 3.0)))
                for concurrency in concurrencies:
                    for system in (list(servers) if round_ % 2 else list(reversed(servers))):
                        log(f"round {round_}/{rounds}: {system}, concurrency {concurrency}")
                        result = run_wrk(f"{servers[system].url}/invocations", body, concurrency=concurrency,
                                         duration_s=duration_s, warmup_s=warmup_s)
                        bench.results.setdefault((system, concurrency), []).append(result)
            for system, server in servers.items():
                bench.batch_means[system] = batch_mean(server)
                bench.stopped_stacking[system] = "stops stacking rows" in server.log_path.read_text()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        bench.wall_s = time.monotonic() - started
    return bench


def results_table(bench: DefaultsBenchmark) -> str:
    lines = ["| system | concurrency | p50 ms | p99 ms | req/s | errors | req/s on ÷ off |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| in-process default chain (no HTTP) | 1 (one thread) | {statistics.median(bench.floor_ms):.3f} "
             "| – | – | – | – |"]
    for concurrency in bench.concurrencies:
        for system in (ON, OFF):
            rps = bench.median(system, concurrency, "rps")
            ratio = rps / bench.median(OFF, concurrency, "rps") if system == ON else None
            errors = sum(r.errors for r in bench.results[(system, concurrency)])
            p50, p99 = bench.median(system, concurrency, "p50_ms"), bench.median(system, concurrency, "p99_ms")
            cells = f"{p50:.3f} | {p99:.3f} | {rps:,.0f} | {errors} | " + (f"{ratio:.2f}×" if ratio else "–")
            lines.append(f"| mainsail serve, {system} | {concurrency} | {cells} |")
    return "\n".join(lines)


def render_section(bench: DefaultsBenchmark) -> str:
    stacking = ("stayed on" if not bench.stopped_stacking.get(ON) else
                "**stopped** (the server's log says why)")
    return f"""## A script that leaves `predict_fn` to the default: batching on vs off

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all).

* **Machine**: {machine_summary()}.
* **Model and script**: the serve benchmark's XGBoost classifier (`bench/model.py`, joblib) behind a
  script that defines `model_fn` only: the scikit-learn container's default `input_fn` / `predict_fn` /
  `output_fn` answer. One CSV record of 20 numbers per request, `Accept: application/json`.
* **Servers**: `mainsail serve MODEL --workers 2` twice, side by side, one as users start it (adaptive
  batching on: the queued requests' rows are stacked into one `predict`, each answer checked byte for
  byte against the answer alone for each new row count), one with `MAINSAIL_BATCHING=false` (one
  request per call, as SageMaker's container). Load: wrk (`bench/wrk.py`), 1 s warm-up then
  {bench.duration_s:g} s per cell, {bench.rounds} interleaved rounds, medians.

{results_table(bench)}

Requests per model call over the whole run (`BatchSize` in `/metrics`): {bench.batch_means.get(ON, 1):.2f} with
batching on, {bench.batch_means.get(OFF, 1):.2f} with it off. Stacking {stacking} for the whole run.
"""


def main(*, duration_s: float, rounds: int, command: str, out: Path, log: Callable[[str], None]) -> int:
    bench = run_defaults_benchmark(duration_s=duration_s, rounds=rounds, command=command, log=log)
    print(results_table(bench))
    write_section(out, "defaults", render_section(bench))
    print(f"\nwrote the defaults section of {out} ({bench.wall_s:.0f} s in all)")
    return 1 if any(r.errors for rs in bench.results.values() for r in rs) else 0
