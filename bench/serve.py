"""The serving benchmark: the in-process floor, ``mainsail serve`` and its peers, one model.

The systems (``bench.systems``): ``mainsail serve`` in its default configuration, the same with
``--log-level warning`` as a labelled tuned row, Flask + gunicorn, FastAPI + uvicorn and the bare ASGI
app. The load generator is wrk when it is installed (``bench.wrk``), else ``bench.loadgen``.

The servers run side by side as subprocesses on free loopback ports, but only one is under load at
a time; the load generator runs in yet another process. Nothing is left running: each server is
stopped with SIGTERM (then its process group killed) whatever happens.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.floor import FloorResult, measure_floor
from bench.loadgen import LoadResult
from bench.model import ModelDir, build_model_dir
from bench.procs import Server, connections_by_pid, free_port, machine_busy_s, running
from bench.summary import RoundsSummary

# Re-exported ("X as X"): the other benchmarks import these from bench.serve.
from bench.systems import BARE as BARE
from bench.systems import DEFAULT_SYSTEMS, SYSTEM_LABELS, system_argv
from bench.systems import FASTAPI as FASTAPI
from bench.systems import FLASK as FLASK
from bench.systems import HOST as HOST
from bench.systems import MAINSAIL as MAINSAIL
from bench.systems import MAINSAIL_TUNED as MAINSAIL_TUNED
from bench.systems import ROOT as ROOT
from bench.systems import canned_argv as canned_argv
from bench.systems import gunicorn_argv as gunicorn_argv
from bench.systems import mainsail_argv as mainsail_argv
from bench.systems import server_env as server_env
from bench.wrk import choose_loadgen, lua_script, parse_wrk_output, run_wrk, wrk_argv, wrk_seconds


@dataclass
class Measurement:
    """One round of one cell: a system at one concurrency."""

    system: str
    concurrency: int
    round: int
    result: LoadResult
    server_cpu_s: float
    """CPU the server's processes used while the load generator ran."""
    other_cpu_cores: float
    """CPU used on the machine by anything but the benchmark's own processes, in cores (noise)."""
    connection_split: list[int] | None
    """Established connections each worker held at mid-window, largest first (None: not sampled)."""


@dataclass
class Cell(RoundsSummary):
    """A system at one concurrency, summarised over rounds (median of each figure)."""

    system: str
    concurrency: int
    rounds: list[Measurement]


@dataclass
class FloorRound:
    round: int
    result: FloorResult


@dataclass
class ServerInfo:
    system: str
    argv: list[str]
    ready_s: float
    stop_s: float | None
    exit_code: int | None


@dataclass
class ServeBenchmark:
    """Everything one run measured; ``report.render_serve_section`` turns it into markdown."""

    started: datetime
    command: str
    duration_s: float
    warmup_s: float
    rounds: int
    workers: int
    concurrencies: list[int]
    systems: list[str]
    quick: bool
    floors: list[FloorResult] = field(default_factory=list)
    loadgen_check: LoadResult | None = None
    measurements: list[Measurement] = field(default_factory=list)
    servers: list[ServerInfo] = field(default_factory=list)
    wall_s: float = 0.0
    loadgen: str = "python"
    """The load generator that ran: ``wrk`` or ``python`` (``bench.loadgen``)."""

    def cell(self, system: str, concurrency: int) -> Cell | None:
        rounds = [m for m in self.measurements if m.system == system and m.concurrency == concurrency]
        return Cell(system, concurrency, rounds) if rounds else None

    def cells(self) -> list[Cell]:
        found = [self.cell(s, c) for s in self.systems for c in self.concurrencies]
        return [c for c in found if c is not None]

    @property
    def floor_p50_ms(self) -> float | None:
        return statistics.median(f.p50_ms for f in self.floors) if self.floors else None

    @property
    def floor_p99_ms(self) -> float | None:
        return statistics.median(f.p99_ms for f in self.floors) if self.floors else None

    @property
    def floor_calls_per_s(self) -> float | None:
        return statistics.median(f.calls_per_s for f in self.floors) if self.floors else None


def loadgen_argv(url: str, body_file: Path, *, concurrency: int, duration_s: float,
                 warmup_s: float, content_type: str = "text/csv") -> list[str]:
    return [sys.executable, "-m", "bench.loadgen", url, "--body-file", str(body_file),
            "--content-type", content_type, "--concurrency", str(concurrency),
            "--duration", str(duration_s), "--warmup", str(warmup_s)]


def run_loadgen(url: str, body_file: Path, *, concurrency: int, duration_s: float,
                warmup_s: float, content_type: str = "text/csv") -> LoadResult:
    """Run the load generator in its own process and return what it measured."""
    argv = loadgen_argv(url, body_file, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s,
                        content_type=content_type)
    done = subprocess.run(argv, cwd=ROOT, env=server_env(), capture_output=True, text=True,
                          timeout=duration_s + warmup_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return LoadResult.from_json(done.stdout.strip().splitlines()[-1])


def run_serve_benchmark(*, duration_s: float = 5.0, warmup_s: float | None = None, rounds: int = 3,
                        quick: bool = False, workers: int = 2, concurrencies: Sequence[int] = (1, 16),
                        systems: Sequence[str] = DEFAULT_SYSTEMS, loadgen_check: bool = True,
                        loadgen: str = "auto", command: str = "python -m bench serve",
                        log: Callable[[str], None] = print) -> ServeBenchmark:
    """Build the model, start every server, then measure every cell ``rounds`` times, interleaved.

    Interleaving (round 1: floor, A, B; round 2: floor, B, A; ...) and taking medians keeps a burst of
    unrelated load on this shared machine from landing on one system only. Bounded in time: about
    ``rounds * (1 + len(systems) * len(concurrencies)) * (warmup_s + duration_s)`` plus start-up.
    ``loadgen``: ``auto`` (wrk when installed), ``wrk`` or ``python``; wrk runs whole seconds, so the
    durations are rounded for it (the warm-up to at least 1 s when there is one).
    """
    if quick:
        duration_s, rounds = min(duration_s, 1.0), 1
    if warmup_s is None:
        warmup_s = 0.3 if quick else 1.0
    if rounds < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("rounds must be >= 1, duration_s > 0 and warmup_s >= 0")
    unknown = [s for s in systems if s not in SYSTEM_LABELS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}: use {list(SYSTEM_LABELS)}")
    chosen = choose_loadgen(loadgen)
    if chosen == "wrk":
        duration_s, warmup_s = float(wrk_seconds(duration_s)), float(wrk_seconds(warmup_s)) if warmup_s else 0.0
    bench = ServeBenchmark(started=datetime.now(UTC), command=command, duration_s=duration_s,
                           warmup_s=warmup_s, rounds=rounds, workers=workers, concurrencies=list(concurrencies),
                           systems=list(systems), quick=quick, loadgen=chosen)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-"))
    try:
        log(f"building the model in {tmp}")
        model = build_model_dir(tmp / "model")
        body_file = tmp / "record.csv"
        body_file.write_bytes(model.csv_row)
        body_file.with_suffix(".lua").write_text(lua_script(body_file, "text/csv"))
        if loadgen_check:
            check_s = min(duration_s, 2.0)
            log(f"load generator self-check against a canned server: {check_s:g} s")
            port = free_port()
            with running("canned", canned_argv(port), host=HOST, port=port, env=server_env(),
                         cwd=ROOT, ready_timeout_s=30) as canned:
                check = run_wrk if chosen == "wrk" else run_loadgen
                bench.loadgen_check = check(f"{canned.url}/invocations", body_file, concurrency=max(concurrencies),
                                            duration_s=check_s, warmup_s=min(warmup_s, 0.5))
        servers: dict[str, Server] = {}
        try:
            with contextlib.ExitStack() as stack:
                for system in systems:
                    servers[system] = _start(stack, bench, system, model, tmp, log)
                for round_ in range(1, rounds + 1):
                    log(f"round {round_}/{rounds}: in-process floor, {duration_s:g} s")
                    bench.floors.append(measure_floor(model.path, model.csv_row, duration_s=duration_s,
                                                      warmup_s=min(warmup_s, 1.0)))
                    order = list(systems) if round_ % 2 else list(reversed(systems))
                    for concurrency in concurrencies:
                        for system in order:
                            log(f"round {round_}/{rounds}: {SYSTEM_LABELS[system]}, concurrency "
                                f"{concurrency}: {warmup_s:g} s warm-up + {duration_s:g} s")
                            bench.measurements.append(_measure(bench, servers, system, concurrency,
                                                               round_, body_file, log))
        finally:  # every server has been stopped by now
            bench.servers = [ServerInfo(system, s.argv, s.ready_s, s.stop_s, s.exit_code)
                             for system, s in servers.items()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        bench.wall_s = time.monotonic() - t_start
    return bench


def _start(stack: contextlib.ExitStack, bench: ServeBenchmark, system: str, model: ModelDir, tmp: Path,
           log: Callable[[str], None]) -> Server:
    port = free_port()
    argv, env = system_argv(system, model.path, port, bench.workers, tmp / f"home-{system}")
    log(f"starting {SYSTEM_LABELS[system]} on port {port}")
    server = stack.enter_context(running(system, argv, host=HOST, port=port, env=env, cwd=ROOT))
    log(f"  ready after {server.ready_s:.1f} s")
    return server


def _measure(bench: ServeBenchmark, servers: dict[str, Server], system: str, concurrency: int,
             round_: int, body_file: Path, log: Callable[[str], None]) -> Measurement:
    server = servers[system]
    url = f"{server.url}/invocations"
    ours = [s.cpu_s() for s in servers.values()]
    own = time.process_time()
    children = _children_cpu_s()
    busy = machine_busy_s()
    started = time.monotonic()
    if bench.loadgen == "wrk":  # the warm-up is a run of its own; the measured run follows at once
        script = body_file.with_suffix(".lua")
        if bench.warmup_s > 0:
            subprocess.run(wrk_argv(url, script, concurrency=concurrency, duration_s=bench.warmup_s),
                           capture_output=True, check=True, timeout=bench.warmup_s + 60)
        argv, mid = wrk_argv(url, script, concurrency=concurrency, duration_s=bench.duration_s), bench.duration_s / 2
    else:
        argv = loadgen_argv(url, body_file, concurrency=concurrency, duration_s=bench.duration_s,
                            warmup_s=bench.warmup_s)
        mid = bench.warmup_s + bench.duration_s / 2
    client = _children_cpu_s()
    process = subprocess.Popen(argv, cwd=ROOT, env=server_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        # Sample which worker holds which connection half-way through the measured window.
        split: list[int] | None = None
        try:
            process.wait(mid)
        except subprocess.TimeoutExpired:
            split = connections_by_pid(server.pids, server.port)[:bench.workers]
        stdout, stderr = process.communicate(timeout=bench.duration_s + bench.warmup_s + 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    wall = time.monotonic() - started
    server_deltas = [s.cpu_s() - before for s, before in zip(servers.values(), ours, strict=True)]
    used = (sum(server_deltas) + (_children_cpu_s() - children) + (time.process_time() - own))
    other = max(0.0, (machine_busy_s() - busy) - used) / wall
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed ({process.returncode}):\n{stderr[-3000:]}")
    if bench.loadgen == "wrk":
        result = parse_wrk_output(stdout, concurrency, client_cpu_s=_children_cpu_s() - client)
    else:
        result = LoadResult.from_json(stdout.strip().splitlines()[-1])
    if result.errors:
        log(f"  {result.errors} errors, e.g. {result.error_samples[:2]}; server log:\n"
            f"{server.log_tail(1500)}")
    server_cpu = server_deltas[list(servers).index(system)]
    return Measurement(system, concurrency, round_, result, server_cpu, other, split)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
