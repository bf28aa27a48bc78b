"""Markdown for ``docs/benchmarks.md``: each benchmark owns one marked section and replaces only it."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.serve import ServeBenchmark
from bench.systems import BARE, FASTAPI, FLASK, MAINSAIL, MAINSAIL_TUNED, SYSTEM_LABELS

FILE_HEADER = """# mainsail benchmarks

Each section below is written by one benchmark in `bench/` (`python -m bench <name>`) and is
replaced, and only it, when that benchmark runs again. The machines these run on are shared and
noisy: read differences under about 10 % as noise, and compare numbers only within one section.
"""

PACKAGES = ("mainsail", "xgboost", "scikit-learn", "numpy", "joblib", "starlette", "uvicorn", "uvloop",
            "httptools", "flask", "werkzeug", "gunicorn")

LATENCY_TARGET_MS = 1.0
THROUGHPUT_TARGET = 1.5
# Issue 14 ("Fast by default"), as ratios within one run: mainsail in its default configuration.
BARE_RATIO_TARGET = 0.95
FASTAPI_RATIO_TARGET = 1.15
FLOOR_GAP_TARGET_MS = 0.3


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def write_section(path: Path, name: str, body: str, header: str = FILE_HEADER) -> None:
    """Put ``body`` between the ``name`` markers of ``path``, creating the file (``header`` first) or
    the section if missing."""
    start, end = markers(name)
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else header
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")


def machine_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        pass
    return (f"{os.cpu_count()} cores ({cpu}){memory}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def versions(names: Sequence[str] = PACKAGES) -> str:
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    measured: str
    met: bool | None

    @property
    def verdict(self) -> str:
        return "not measured" if self.met is None else ("**met**" if self.met else "**not met**")


def _ratio_check(bench: ServeBenchmark, peer: str, target: float) -> Check:
    high = max(bench.concurrencies)
    name = f"concurrency {high}: mainsail serve (default) req/s ÷ {SYSTEM_LABELS[peer]} req/s"
    ours, theirs = bench.cell(MAINSAIL, high), bench.cell(peer, high)
    if ours is None or theirs is None or theirs.rps <= 0:
        return Check(name, f"≥ {target:g}×", "—", None)
    ratio = ours.rps / theirs.rps
    return Check(name, f"≥ {target:g}×", f"{ours.rps:,.0f} ÷ {theirs.rps:,.0f} = {ratio:.2f}×",
                 ratio >= target and ours.errors == 0)


def issue14_checks(bench: ServeBenchmark) -> list[Check]:
    """The "Fast by default" targets: ratios to the bare ASGI app and FastAPI, and the gap to the floor."""
    low = min(bench.concurrencies)
    name = f"concurrency {low}: mainsail serve (default) p50 − in-process chain p50"
    cell, floor = bench.cell(MAINSAIL, low), bench.floor_p50_ms
    if cell is not None and floor is not None:
        gap = cell.p50_ms - floor
        latency = Check(name, f"≤ {FLOOR_GAP_TARGET_MS:g} ms", f"{cell.p50_ms:.3f} − {floor:.3f} = {gap:.3f} ms",
                        gap <= FLOOR_GAP_TARGET_MS and cell.errors == 0)
    else:
        latency = Check(name, f"≤ {FLOOR_GAP_TARGET_MS:g} ms", "—", None)
    return [_ratio_check(bench, BARE, BARE_RATIO_TARGET), _ratio_check(bench, FASTAPI, FASTAPI_RATIO_TARGET),
            latency]


def ratios_table(bench: ServeBenchmark) -> str:
    """Every system's throughput at the highest concurrency over the bare ASGI app's and FastAPI's."""
    low, high = min(bench.concurrencies), max(bench.concurrencies)
    bare, fastapi, floor = bench.cell(BARE, high), bench.cell(FASTAPI, high), bench.floor_p50_ms
    rows = [f"| system | req/s at {high} | ÷ bare ASGI | ÷ FastAPI + uvicorn | p50 at {low} − in-process p50, ms |",
            "|---|---:|---:|---:|---:|"]
    for system in bench.systems:
        cell, cell_low = bench.cell(system, high), bench.cell(system, low)
        if cell is None:
            continue
        over_bare = f"{cell.rps / bare.rps:.2f}×" if bare is not None and bare.rps > 0 else "–"
        over_fastapi = f"{cell.rps / fastapi.rps:.2f}×" if fastapi is not None and fastapi.rps > 0 else "–"
        gap = f"{cell_low.p50_ms - floor:.3f}" if cell_low is not None and floor is not None else "–"
        rows.append(f"| {_label(bench, system)} | {cell.rps:,.0f} | {over_bare} | {over_fastapi} | {gap} |")
    return "\n".join(rows)


def milestone_checks(bench: ServeBenchmark) -> list[Check]:
    low, high = min(bench.concurrencies), max(bench.concurrencies)
    name_i = f"(i) concurrency {low}: mainsail p50 − in-process chain p50"
    name_ii = f"(ii) concurrency {high}: mainsail req/s ÷ Flask + gunicorn req/s"
    ms_low, floor = bench.cell(MAINSAIL, low), bench.floor_p50_ms
    if ms_low is not None and floor is not None:
        gap = ms_low.p50_ms - floor
        latency = Check(name_i, f"≤ {LATENCY_TARGET_MS:g} ms",
                        f"{ms_low.p50_ms:.3f} − {floor:.3f} = {gap:.3f} ms",
                        gap <= LATENCY_TARGET_MS and ms_low.errors == 0)
    else:
        latency = Check(name_i, f"≤ {LATENCY_TARGET_MS:g} ms", "—", None)
    ms_high, peer_high = bench.cell(MAINSAIL, high), bench.cell(FLASK, high)
    if ms_high is not None and peer_high is not None and peer_high.rps > 0:
        ratio = ms_high.rps / peer_high.rps
        throughput = Check(name_ii, f"≥ {THROUGHPUT_TARGET:g}×",
                           f"{ms_high.rps:,.0f} ÷ {peer_high.rps:,.0f} = {ratio:.2f}×",
                           ratio >= THROUGHPUT_TARGET and ms_high.errors == 0)
    else:
        throughput = Check(name_ii, f"≥ {THROUGHPUT_TARGET:g}×", "—", None)
    return [latency, throughput]


def _label(bench: ServeBenchmark, system: str) -> str:
    label = SYSTEM_LABELS[system]
    if label.endswith(")"):  # "... (tuned)" -> "... (tuned, 2 workers)"
        return f"{label[:-1]}, {bench.workers} workers)"
    return f"{label} ({bench.workers} workers)"


def results_table(bench: ServeBenchmark) -> str:
    rows = ["| system | concurrency | p50 ms | p99 ms | req/s | errors |",
            "|---|---:|---:|---:|---:|---:|"]
    if bench.floors:
        rows.append(f"| in-process handler chain (no HTTP) | 1 (one thread) | {bench.floor_p50_ms:.3f} | "
                    f"{bench.floor_p99_ms:.3f} | {bench.floor_calls_per_s:,.0f} calls/s | 0 |")
    for cell in bench.cells():
        rows.append(f"| {_label(bench, cell.system)} | {cell.concurrency} | {cell.p50_ms:.3f} | "
                    f"{cell.p99_ms:.3f} | {cell.rps:,.0f} | {cell.errors} |")
    return "\n".join(rows)


def rounds_table(bench: ServeBenchmark) -> str:
    rows = ["| round | system | conc. | req/s | p50 ms | p90 ms | p99 ms | max ms | requests | "
            "connections opened | split across workers | server CPU cores | client CPU µs/req | "
            "other load, cores |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    if bench.loadgen_check is not None:
        r = bench.loadgen_check
        opened = f"{r.connections_opened:,}" if r.connections_opened >= 0 else "–"
        rows.append(f"| – | canned server (client self-check) | {r.concurrency} | {r.rps:,.0f} | "
                    f"{r.p50_ms:.3f} | {r.p90_ms:.3f} | {r.p99_ms:.3f} | {r.max_ms:.3f} | {r.requests:,} | "
                    f"{opened} | – | – | {r.client_cpu_us_per_req:.1f} | – |")
    for i, f in enumerate(bench.floors, 1):
        rows.append(f"| {i} | in-process handler chain | 1 | {f.calls_per_s:,.0f} | {f.p50_ms:.3f} | – | "
                    f"{f.p99_ms:.3f} | – | {f.calls:,} | – | – | – | – | – |")
    ordered = sorted(bench.measurements, key=lambda m: (m.round, m.concurrency, m.system))
    for m in ordered:
        r = m.result
        window = bench.warmup_s + bench.duration_s
        keep_alive = r.connections_opened <= 2 * m.concurrency  # -1: not known (wrk does not say)
        split = ("/".join(str(n) for n in m.connection_split) if m.connection_split and any(m.connection_split)
                 and keep_alive
                 else "–" if keep_alive else "no keep-alive")
        opened = f"{r.connections_opened:,}" if r.connections_opened >= 0 else "–"
        rows.append(
            f"| {m.round} | {SYSTEM_LABELS[m.system]} | {m.concurrency} | {r.rps:,.0f} | {r.p50_ms:.3f} | "
            f"{r.p90_ms:.3f} | {r.p99_ms:.3f} | {r.max_ms:.3f} | {r.requests:,} | {opened} | "
            f"{split} | {m.server_cpu_s / window:.2f} | {r.client_cpu_us_per_req:.1f} | "
            f"{m.other_cpu_cores:.2f} |"
        )
    return "\n".join(rows)


def skew_note(bench: ServeBenchmark) -> str:
    """Says how often one worker held every keep-alive connection, and what that did to throughput."""
    notes = []
    for cell in bench.cells():
        if cell.concurrency < 2 or bench.workers < 2:
            continue
        sampled = [m for m in cell.rounds if m.connection_split
                   and m.result.connections_opened <= 2 * m.concurrency]
        lopsided = [m for m in sampled if m.connection_split and m.connection_split[0] >= m.concurrency]
        if not lopsided:
            continue
        rest = [m.result.rps for m in sampled if m not in lopsided]
        rest_text = (f", against {statistics.median(rest):,.0f} req/s (median) in the other rounds"
                     if rest else "")
        notes.append(
            f"In {len(lopsided)} of {len(cell.rounds)} rounds at concurrency {cell.concurrency}, one "
            f"{SYSTEM_LABELS[cell.system]} worker held all {cell.concurrency} keep-alive connections "
            f"and the other none (see \"split across workers\" below); those rounds reached "
            f"{statistics.median(m.result.rps for m in lopsided):,.0f} req/s{rest_text}. Which worker "
            f"accepts a new connection is left to the workers racing on the shared listening socket, "
            f"and a keep-alive connection stays with the worker that accepted it."
        )
    return "\n\n".join(notes)


def checks_table(checks: list[Check]) -> str:
    rows = ["| check | target | measured | result |", "|---|---|---|---|"]
    rows += [f"| {c.name} | {c.target} | {c.measured} | {c.verdict} |" for c in checks]
    return "\n".join(rows)


def _load_method(bench: ServeBenchmark) -> str:
    if bench.loadgen == "wrk":
        return (f"""* **Load** (`bench/wrk.py`): wrk, a C client on epoll, in its own process (`wrk -t1 -cN
  -d{bench.duration_s:g}s --latency` with a Lua script posting the body file), keeping connections alive
  and reconnecting when the server closes them (gunicorn's sync worker closes every connection).
  Each cell gets a separate, discarded {bench.warmup_s:g} s wrk run first, then {bench.duration_s:g} s
  measured. Percentiles are wrk's; like `bench/loadgen.py` it does not correct for coordinated omission.
  Errors count non-2xx answers and socket errors (connect, read, write, 10 s timeout) of the measured
  run. The client's CPU is wrk's own rusage.""")
    return f"""* **Load** (`bench/loadgen.py`): a closed-loop client in its own process, on asyncio protocols and
  uvloop over raw HTTP/1.1. It keeps connections alive when the server allows it and reconnects when
  the server closes them (gunicorn's sync worker closes every connection, so that peer's latency
  includes a TCP connect). Each cell gets {bench.warmup_s:g} s of discarded warm-up on fresh connections,
  then {bench.duration_s:g} s measured; only requests that start and end inside that window count.
  Latency runs from the start of a request (including any reconnect) to the last byte of its
  response; like wrk, the client does not correct for coordinated omission. Errors count every non-2xx
  answer, socket error and 10 s timeout, warm-up included."""


def render_serve_section(bench: ServeBenchmark) -> str:
    checks = milestone_checks(bench)
    check = bench.loadgen_check
    check_line = ""
    if check is not None:
        check_line = (
            f" Against a canned server (a fixed 200 from a bare asyncio protocol, nearly free) the client "
            f"reached {check.rps:,.0f} req/s at concurrency {check.concurrency}, spending "
            f"{check.client_cpu_us_per_req:.0f} µs of its own CPU per request. What it spent in the real "
            f"runs is in the per-round table"
            + (", taken from the cores the servers run on." if bench.loadgen == "wrk" else
               ": a reconnect per request costs it about four times the CPU of a keep-alive request, taken "
               "from the cores the server runs on, so it handicaps the gunicorn peer's throughput somewhat "
               "(a C client such as wrk would reconnect more cheaply).")
        )
    servers = "; ".join(
        f"{SYSTEM_LABELS[s.system]} was ready {s.ready_s:.1f} s after start and "
        + (f"stopped on SIGTERM in {s.stop_s:.1f} s (exit code {s.exit_code})" if s.stop_s is not None
           else f"did not stop within the grace period and was killed (exit code {s.exit_code})")
        for s in bench.servers
    )
    quick = ("\n> **Quick smoke run**: measurements this short only show that the harness works; "
             "do not read the numbers.\n" if bench.quick else "")
    worst_other = max((m.other_cpu_cores for m in bench.measurements), default=0.0)
    noise = (
        f"Other processes on the machine used up to {worst_other:.2f} cores during a measurement "
        "(last column of the per-round table)"
        + (": treat this run's numbers with care." if worst_other >= 0.25 else ".")
    )
    calls = sum(f.calls for f in bench.floors)
    return f"""
## Serving one XGBoost model: mainsail vs FastAPI, a bare ASGI app and Flask + gunicorn

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all).
{quick}
* **Machine**: {machine_summary()}.
* **Versions**: {versions()}.

### Results

Median over {bench.rounds} interleaved round{"s" if bench.rounds > 1 else ""} of {bench.duration_s:g} s per
cell (each round's figures are under [Per round](#per-round)). Latencies in milliseconds.

{results_table(bench)}

### Issue 14 targets ("fast by default", ratios within this run)

mainsail in its default configuration (no `--log-level`), against the bare ASGI app and FastAPI + uvicorn
measured in the same rounds. Rows marked "(tuned)" are extra configurations and count for no target.

{checks_table(issue14_checks(bench))}

{ratios_table(bench)}

### Milestone checks

{checks_table(checks)}

{skew_note(bench)}

### Method

* **Model**: an `xgboost.XGBClassifier` (20 numeric features, 50 trees of depth 4, `n_jobs=1`)
  trained on synthetic data and saved with joblib. It is served by `bench/models/xgb_inference.py`, a
  script in the style of SageMaker's scikit-learn container (`model_fn` = `joblib.load`; `input_fn`
  parses CSV with `np.genfromtxt` or JSON with `json.loads`; `predict_fn` = `predict_proba(x)[:, 1]`;
  `output_fn` = `json.dumps(list)`). Every system runs that same file, copied to
  `<model>/code/inference.py`.
* **Request**: `POST /invocations`, `Content-Type: text/csv`, `Accept: application/json`, one record
  of 20 numbers (about 200 bytes); the answer is a one-element JSON list.
* **In-process floor**: the same `input_fn -> predict_fn -> output_fn` chain called directly in the
  benchmark process on the same body (decoded to `str`, as both servers do), one call at a time in one
  thread, each call timed ({calls:,} calls in all).
* **mainsail**: `mainsail serve MODEL_DIR --workers {bench.workers}`, every setting at its default, the
  log level included (so the access log is on, as users get it). The extra row
  "{SYSTEM_LABELS[MAINSAIL_TUNED]}" adds `--log-level warning` and nothing else.
* **FastAPI + uvicorn** (`bench/peers/fastapi_app.py`): an `async def /invocations` calling the same
  functions on the event loop, under `uvicorn --workers {bench.workers} --loop uvloop --http httptools
  --no-access-log` (`fastapi_uvicorn_w2` of the peer baseline).
* **Bare ASGI app** (`bench/peers/bare_asgi.py`): a raw ASGI callable (no framework, routing, logging or
  metrics) calling the same functions on the event loop, under the same uvicorn command line: the
  ceiling for a Python server on uvicorn + httptools + uvloop with this script.
* **Flask + gunicorn** (`bench/peers/flask_app.py`): the request path of SageMaker's scikit-learn
  container (a Flask app calling the same four functions) under `gunicorn -k sync -w {bench.workers}`
  straight on TCP with the access log off: `flask_gunicorn_sync_w2` of the peer baseline
  (`/work/shared/PEER_BASELINE.md`). The real container puts nginx in front of gevent workers, which
  the baseline measured slower (1,620 vs 1,836 req/s at concurrency 16), so this is the kinder peer.
* **Servers** run side by side as subprocesses on free loopback ports with `OMP_NUM_THREADS=1`, but
  only one is under load at a time. Each is ready when `GET /ping` answers 200 (polled), and is
  stopped with SIGTERM at the end: {servers}.
{_load_method(bench)}{check_line}
* **Rounds**: each round measures the floor, then every system at every concurrency, alternating
  which system goes first; the table reports each figure's median over the rounds.
* **Noise**: client and servers share the machine's {os.cpu_count()} cores, so every throughput
  figure is "the cores minus the load generator". {noise}

### Per round

"split across workers" is how many established connections each worker process held half-way
through the window: keep-alive connections stay with the worker that accepted them. "server CPU
cores" is the CPU the server's processes used over warm-up plus window, in cores.

{rounds_table(bench)}
"""
