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

from bench.serve import FLASK, MAINSAIL, SYSTEM_LABELS, ServeBenchmark

FILE_HEADER = """# mainsail benchmarks

Each section below is written by one benchmark in `bench/` (`python -m bench <name>`) and is
replaced, and only it, when that benchmark runs again. The machines these run on are shared and
noisy: read differences under about 10 % as noise, and compare numbers only within one section.
"""

PACKAGES = ("mainsail", "xgboost", "scikit-learn", "numpy", "joblib", "starlette", "uvicorn", "uvloop",
            "httptools", "flask", "werkzeug", "gunicorn")

LATENCY_TARGET_MS = 1.0
THROUGHPUT_TARGET = 1.5


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def write_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` between the ``name`` markers of ``path``, creating the file or section if missing."""
    start, end = markers(name)
    section = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else FILE_HEADER
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
    return f"{SYSTEM_LABELS[system]} ({bench.workers} workers)"


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
        rows.append(f"| – | canned server (client self-check) | {r.concurrency} | {r.rps:,.0f} | "
                    f"{r.p50_ms:.3f} | {r.p90_ms:.3f} | {r.p99_ms:.3f} | {r.max_ms:.3f} | {r.requests:,} | "
                    f"{r.connections_opened:,} | – | – | {r.client_cpu_us_per_req:.1f} | – |")
    for i, f in enumerate(bench.floors, 1):
        rows.append(f"| {i} | in-process handler chain | 1 | {f.calls_per_s:,.0f} | {f.p50_ms:.3f} | – | "
                    f"{f.p99_ms:.3f} | – | {f.calls:,} | – | – | – | – | – |")
    ordered = sorted(bench.measurements, key=lambda m: (m.round, m.concurrency, m.system))
    for m in ordered:
        r = m.result
        window = bench.warmup_s + bench.duration_s
        keep_alive = r.connections_opened <= 2 * m.concurrency
        split = ("/".join(str(n) for n in m.connection_split) if m.connection_split and keep_alive
                 else "–" if keep_alive else "no keep-alive")
        rows.append(
            f"| {m.round} | {SYSTEM_LABELS[m.system]} | {m.concurrency} | {r.rps:,.0f} | {r.p50_ms:.3f} | "
            f"{r.p90_ms:.3f} | {r.p99_ms:.3f} | {r.max_ms:.3f} | {r.requests:,} | {r.connections_opened:,} | "
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


def render_serve_section(bench: ServeBenchmark) -> str:
    checks = milestone_checks(bench)
    check = bench.loadgen_check
    check_line = ""
    if check is not None:
        check_line = (
            f" Against a canned server (a fixed 200 from a bare asyncio protocol, nearly free) the client "
            f"reached {check.rps:,.0f} req/s at concurrency {check.concurrency}, spending "
            f"{check.client_cpu_us_per_req:.0f} µs of its own CPU per request. What it spent in the real "
            f"runs is in the per-round table: a reconnect per request costs it about four times the CPU "
            f"of a keep-alive request, taken from the cores the server runs on, so it handicaps the "
            f"gunicorn peer's throughput somewhat (a C client such as wrk would reconnect more cheaply)."
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
## Serving one XGBoost model: mainsail vs Flask + gunicorn

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all).
{quick}
* **Machine**: {machine_summary()}.
* **Versions**: {versions()}.

### Results

Median over {bench.rounds} interleaved round{"s" if bench.rounds > 1 else ""} of {bench.duration_s:g} s per
cell (each round's figures are under [Per round](#per-round)). Latencies in milliseconds.

{results_table(bench)}

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
* **mainsail**: `mainsail serve MODEL_DIR --workers {bench.workers} --log-level warning`, every other
  setting at its default.
* **Flask + gunicorn** (`bench/peers/flask_app.py`): the request path of SageMaker's scikit-learn
  container (a Flask app calling the same four functions) under `gunicorn -k sync -w {bench.workers}`
  straight on TCP with the access log off: `flask_gunicorn_sync_w2` of the peer baseline
  (`/work/shared/PEER_BASELINE.md`). The real container puts nginx in front of gevent workers, which
  the baseline measured slower (1,620 vs 1,836 req/s at concurrency 16), so this is the kinder peer.
* **Servers** run side by side as subprocesses on free loopback ports with `OMP_NUM_THREADS=1`, but
  only one is under load at a time. Each is ready when `GET /ping` answers 200 (polled), and is
  stopped with SIGTERM at the end: {servers}.
* **Load** (`bench/loadgen.py`): a closed-loop client in its own process, on asyncio protocols and
  uvloop over raw HTTP/1.1. It keeps connections alive when the server allows it and reconnects when
  the server closes them (gunicorn's sync worker closes every connection, so that peer's latency
  includes a TCP connect). Each cell gets {bench.warmup_s:g} s of discarded warm-up on fresh connections,
  then {bench.duration_s:g} s measured; only requests that start and end inside that window count.
  Latency runs from the start of a request (including any reconnect) to the last byte of its
  response; like wrk, the client does not correct for coordinated omission. Errors count every non-2xx
  answer, socket error and 10 s timeout, warm-up included.{check_line}
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
