"""The soak test: a batching endpoint held at 80 % of its measured capacity for ten minutes.

``python -m bench soak`` trains the tabular XGBoost demo model (``bench.tabular``), serves it with
adaptive batching on, and by default deploys it through ``mainsail up`` (one ``ml.m5.large``
instance, requests to ``POST /endpoints/NAME/invocations``); ``--target serve`` drives
``mainsail serve`` directly instead. Then:

1. **Capacity**: a closed-loop run at high concurrency (``bench.loadgen`` by default, or wrk)
   for ``capacity_s`` seconds gives an upper bound; then (``capacity_mode="open"``, the default) short
   open-loop runs of ``bench.rateload`` at 100 %, 95 %, 90 %, ... of it find the highest rate the server
   holds with the soak's own client and arrival pattern (every request answered, the rate reached, no
   queue building in the client): that rate is the capacity. A closed loop at concurrency 64 keeps the
   batcher's queue full, so its batches are larger and each request is cheaper than under a steady
   stream of single requests; 80 % of it can be more than the server sustains open loop.
2. **Soak**: ``bench.rateload`` (its own process) sends ``load`` times that rate, open loop, over at
   most ``capacity_concurrency`` keep-alive connections (a client's connection pool: past it requests
   queue in the client, and the server's descriptors stay bounded), for a warm-up and then
   ``duration_s`` seconds, reporting each ``interval_s`` as it ends. At each report
   this process reads RSS, open file descriptors, threads and CPU of every server process (the root
   process and all its descendants: ``mainsail up``, its instance's supervisor and workers).

The verdict compares the last interval with the first one after the warm-up: RSS growth under 5 %,
p99 drift under 10 %, and no failed request anywhere (capacity run included).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.loadgen import LoadResult
from bench.procs import free_port, machine_busy_s, machine_steal_s, process_cpu_s, running, stop
from bench.rateload import IntervalResult
from bench.report import Check
from bench.serve import HOST, ROOT, mainsail_argv, run_loadgen, server_env
from bench.wrk import choose_loadgen, run_wrk

TARGETS = ("up", "serve")
ENDPOINT = "bench-soak"
CONTENT_TYPE = "application/json"
RSS_GROWTH_TARGET_PCT = 5.0
P99_DRIFT_TARGET_PCT = 10.0
BATCHING_ENV = {"MAINSAIL_BATCHING": "true"}
SATURATED_LATE_MS = 100.0
CAPACITY_MODES = ("open", "closed")
#: the open-loop capacity search: fractions of the closed-loop figure tried, highest first
SEARCH_STEPS = tuple(round(1.0 - 0.05 * k, 2) for k in range(15))
SEARCH_S = 8.0
#: each search run's warm-up, as a share of its measured seconds
SEARCH_WARMUP_SHARE = 0.25
#: a rate is held when requests left the client at most this late (p99): no queue built up behind the server
HELD_LATE_MS = 20.0
HELD_RATE_SHARE = 0.97


@dataclass
class SearchTrial:
    """One open-loop run of the capacity search."""

    fraction: float
    rate: float
    result: IntervalResult

    @property
    def held(self) -> bool:
        r = self.result
        return r.errors == 0 and r.rps >= HELD_RATE_SHARE * self.rate and r.late_p99_ms <= HELD_LATE_MS


@dataclass
class ProcSample:
    """The server's processes at one moment: summed over the root process and its descendants."""

    processes: int
    rss_mib: float
    root_rss_mib: float
    """RSS of the root process alone (``mainsail up``, or ``mainsail serve``'s supervisor)."""
    fds: int
    threads: int
    cpu_s: float
    busy_s: float
    """CPU seconds the whole machine spent busy since boot (for the other-load column)."""
    steal_s: float
    """CPU seconds the hypervisor ran other guests on this machine's cores since boot (``steal``)."""
    at: float
    """``time.monotonic()`` of the sample."""


@dataclass
class SoakInterval:
    load: IntervalResult
    procs: ProcSample
    server_cores: float
    """CPU the server's processes used over the interval, in cores."""
    client_cores: float
    """CPU the load generator used over the interval, in cores."""
    other_cores: float
    """CPU used by anything but the server and the load generator, in cores (noise)."""
    steal_cores: float = 0.0
    """CPU the hypervisor gave other guests while this machine's cores wanted it, in cores (noise beyond
    the machine)."""


@dataclass
class SoakBenchmark:
    """Everything one soak run measured; ``bench.soak_report`` turns it into tables and markdown."""

    started: datetime
    command: str
    target: str
    duration_s: float
    interval_s: float
    warmup_s: float
    load: float
    workers: int
    capacity_s: float
    capacity_concurrency: int
    capacity_loadgen: str = ""
    #: the client of the capacity run: ``python`` (``bench.loadgen``, asyncio: costs the machine's cores about what the
    #: soak's own client does, so 80 % of its capacity is 80 % of what server and client reach together on a
    #: machine they share) or ``wrk`` (cheaper: a capacity the soak's Python client cannot hold beside it)
    capacity_client: str = "python"
    capacity: LoadResult | None = None
    capacity_mode: str = "open"
    search: list[SearchTrial] = field(default_factory=list)
    search_s: float = SEARCH_S
    sustained_rate: float | None = None
    """The highest open-loop rate held in the search (the capacity in ``open`` mode)."""
    capacity_cores: tuple[float, float] = (0.0, 0.0)
    """(server CPU, CPU of everything but the server and the load generator) over the capacity run, in cores."""
    rate: float = 0.0
    fixed_rate: bool = False
    before: ProcSample | None = None
    intervals: list[SoakInterval] = field(default_factory=list)
    batch_mean: float | None = None
    url: str = ""
    code: str = ""
    load_average: tuple[str, str] = ("unknown", "unknown")
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def soak(self) -> list[SoakInterval]:
        return [i for i in self.intervals if i.load.phase == "soak"]

    @property
    def errors(self) -> int:
        return sum(i.load.errors for i in self.intervals) + (self.capacity.errors if self.capacity else 0) + sum(
            t.result.errors for t in self.search if t.held)

    @property
    def behind(self) -> list[SoakInterval]:
        """Soak intervals in which requests waited in the client (``SATURATED_LATE_MS`` or more at p99):
        the server did not keep up with the rate, so their latency is mostly queueing."""
        return [i for i in self.soak if i.load.late_p99_ms >= SATURATED_LATE_MS]

    def growth_pct(self, value: Callable[[SoakInterval], float]) -> float | None:
        """Last soak interval vs the first one, in % of the first (None with fewer than two)."""
        soak = self.soak
        if len(soak) < 2 or value(soak[0]) <= 0:
            return None
        return (value(soak[-1]) - value(soak[0])) / value(soak[0]) * 100

    @property
    def p99_trend_pct(self) -> float | None:
        """The p99's least-squares line over the soak intervals: its rise from the first interval to the last,
        in % of the intervals' median p99 (None with fewer than three). Unlike the last-vs-first drift, one
        noisy interval at either end moves it little: it says whether the tail grows as the run goes on."""
        values = [i.load.p99_ms for i in self.soak]
        n = len(values)
        if n < 3:
            return None
        mean_x, mean_y = (n - 1) / 2, sum(values) / n
        slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / sum(
            (x - mean_x) ** 2 for x in range(n))
        median = sorted(values)[n // 2] if n % 2 else sum(sorted(values)[n // 2 - 1:n // 2 + 1]) / 2
        return slope * (n - 1) / median * 100 if median > 0 else None

    @property
    def rss_growth_pct(self) -> float | None:
        return self.growth_pct(lambda i: i.procs.rss_mib)

    @property
    def p99_drift_pct(self) -> float | None:
        return self.growth_pct(lambda i: i.load.p99_ms)

    def checks(self) -> list[Check]:
        rss, p99 = self.rss_growth_pct, self.p99_drift_pct
        soak = self.soak
        first, last = (soak[0], soak[-1]) if soak else (None, None)
        return [
            Check("RSS growth, last interval vs first after warm-up", f"< {RSS_GROWTH_TARGET_PCT:g} %",
                  f"{first.procs.rss_mib:,.1f} → {last.procs.rss_mib:,.1f} MiB: {rss:+.1f} %"
                  if rss is not None and first and last else "—",
                  None if rss is None else rss < RSS_GROWTH_TARGET_PCT),
            Check("p99 drift, last interval vs first after warm-up", f"< {P99_DRIFT_TARGET_PCT:g} %",
                  f"{first.load.p99_ms:.2f} → {last.load.p99_ms:.2f} ms: {p99:+.1f} %"
                  if p99 is not None and first and last else "—",
                  None if p99 is None else p99 < P99_DRIFT_TARGET_PCT),
            Check("failed requests (capacity run, warm-up and soak)", "0", f"{self.errors:,}", self.errors == 0),
        ]

    @property
    def passed(self) -> bool:
        return all(c.met is True for c in self.checks())


# -- the server's processes ----------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant of it (by parent pid, from ``/proc``)."""
    children: dict[int, list[int]] = {}
    alive: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        alive.add(int(entry.name))
        children.setdefault(parent, []).append(int(entry.name))
    tree, frontier = [], [root] if root in alive else []
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(children.get(pid, []))
    return tree


def _status(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, threads) of one process; (0, 0) when it is gone."""
    rss = threads = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, threads


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def sample_processes(root: int) -> ProcSample:
    pids = process_tree(root)
    stats = {pid: _status(pid) for pid in pids}
    return ProcSample(
        processes=len(pids), rss_mib=sum(r for r, _ in stats.values()) / 1024,
        root_rss_mib=stats.get(root, (0, 0))[0] / 1024, fds=sum(_fds(pid) for pid in pids),
        threads=sum(t for _, t in stats.values()), cpu_s=sum(process_cpu_s(pid) for pid in pids),
        busy_s=machine_busy_s(), steal_s=machine_steal_s(), at=time.monotonic())


def batch_mean(base_url: str) -> float | None:
    """Requests per model call over the server's life (``BatchSize`` of ``/metrics``); None if unreadable."""
    try:
        text = urllib.request.urlopen(f"{base_url}/metrics", timeout=10).read().decode()
    except OSError:
        return None
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("BatchSize_sum ", "BatchSize_count "))}
    count = values.get("BatchSize_count", 0.0)
    return values.get("BatchSize_sum", 0.0) / count if count else None


def _load_average() -> str:
    try:
        return ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# -- the run ---------------------------------------------------------------------------------------


def start_target(stack: contextlib.ExitStack, bench: SoakBenchmark, model_dir: Path, tmp: Path,
                 log: Callable[[str], None]) -> tuple[str, str, int]:
    """Start what the soak drives; returns (invocation URL, the model server's base URL, root pid).

    Everything started is stopped when ``stack`` closes, whatever happens.
    """
    if bench.target == "serve":
        port = free_port()
        env = server_env({"MAINSAIL_HOME": str(tmp / "home"), **BATCHING_ENV})
        log(f"starting mainsail serve --workers {bench.workers} (batching on) on port {port}")
        server = stack.enter_context(running("soak-serve", mainsail_argv(model_dir, port, bench.workers),
                                             host=HOST, port=port, env=env, cwd=ROOT))
        stack.callback(lambda: bench.exit_codes.update({"mainsail serve": server.exit_code}))
        return f"{server.url}/invocations", server.url, server.process.pid
    from bench.control import (
        InstanceInfo,
        create_endpoint,
        find_instance,
        instance_from_state,
        make_sure_stopped,
        start_up,
    )

    home = tmp / "home"
    log("starting mainsail up")
    up = start_up(home, tmp / "up.log")
    instance: InstanceInfo | None = None

    def stop_all() -> None:
        stop(up, grace_s=30.0)
        bench.exit_codes["mainsail up"] = up.exit_code
        make_sure_stopped(instance or instance_from_state(home, ENDPOINT))

    stack.callback(stop_all)
    log(f"  ready after {up.ready_s:.1f} s on port {up.port}; creating endpoint {ENDPOINT} (batching on, "
        f"{bench.workers} workers)")
    wait = create_endpoint(up.url, model_dir, ENDPOINT, environment={
        **BATCHING_ENV, "SAGEMAKER_MODEL_SERVER_WORKERS": str(bench.workers)})
    instance = find_instance(home, ENDPOINT)
    log(f"  InService after {wait:.1f} s; instance on port {instance.port} (pid {instance.pid})")
    return f"{up.url}/endpoints/{ENDPOINT}/invocations", f"http://{HOST}:{instance.port}", up.process.pid


def measure_capacity(bench: SoakBenchmark, url: str, body_file: Path) -> LoadResult:
    """Closed loop at ``capacity_concurrency`` for ``capacity_s`` (after a discarded 1 s)."""
    bench.capacity_loadgen = choose_loadgen(bench.capacity_client)
    if bench.capacity_loadgen == "wrk":
        return run_wrk(url, body_file, concurrency=bench.capacity_concurrency, duration_s=bench.capacity_s,
                       warmup_s=1.0, content_type=CONTENT_TYPE, script_dir=body_file.parent)
    return run_loadgen(url, body_file, concurrency=bench.capacity_concurrency, duration_s=bench.capacity_s,
                       warmup_s=1.0, content_type=CONTENT_TYPE)


def rateload(url: str, body_file: Path, *, rate: float, duration_s: float, interval_s: float, warmup_s: float,
             max_connections: int, requests_csv: Path | None = None) -> Iterator[IntervalResult]:
    """Run ``bench.rateload`` in its own process; yield each interval as it ends."""
    argv = [sys.executable, "-m", "bench.rateload", url, "--body-file", str(body_file), "--content-type",
            CONTENT_TYPE, "--rate", f"{rate:.3f}", "--duration", str(duration_s),
            "--interval", str(interval_s), "--warmup", str(warmup_s), "--max-connections", str(max_connections)]
    if requests_csv is not None:
        argv += ["--log", str(requests_csv)]
    process = subprocess.Popen(argv, cwd=ROOT, env=server_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            yield IntervalResult.from_json(line)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"the rate load generator failed ({process.returncode}):\n{stderr[-3000:]}")


def search_capacity(bench: SoakBenchmark, url: str, body_file: Path, upper: float,
                    log: Callable[[str], None]) -> float:
    """The highest rate of ``SEARCH_STEPS`` x ``upper`` the server holds open loop (0 if none)."""
    for fraction in SEARCH_STEPS:
        rate = fraction * upper
        results = [r for r in rateload(url, body_file, rate=rate, duration_s=bench.search_s, interval_s=bench.search_s,
                                       warmup_s=SEARCH_WARMUP_SHARE * bench.search_s,
                                       max_connections=bench.capacity_concurrency)
                   if r.phase == "soak"]
        trial = SearchTrial(fraction, rate, results[-1])
        bench.search.append(trial)
        r = trial.result
        log(f"  {fraction:.0%}: {rate:,.0f} req/s asked, {r.rps:,.0f} answered, p99 {r.p99_ms:.2f} ms, client late "
            f"p99 {r.late_p99_ms:.2f} ms, {r.errors} errors: {'held' if trial.held else 'not held'}")
        if trial.held:
            return rate
    return 0.0


def soak(bench: SoakBenchmark, url: str, body_file: Path, root: int, log: Callable[[str], None],
         requests_csv: Path | None = None) -> None:
    """Run ``bench.rateload`` at ``bench.rate``; sample the server's processes as each interval ends."""
    previous = bench.before = sample_processes(root)
    for load in rateload(url, body_file, rate=bench.rate, duration_s=bench.duration_s, interval_s=bench.interval_s,
                         warmup_s=bench.warmup_s, max_connections=bench.capacity_concurrency,
                         requests_csv=requests_csv):
        procs = sample_processes(root)
        wall = max(1e-9, procs.at - previous.at)
        server = max(0.0, procs.cpu_s - previous.cpu_s)
        other = max(0.0, (procs.busy_s - previous.busy_s) - server - load.client_cpu_s) / wall
        interval = SoakInterval(load, procs, server / wall, load.client_cpu_s / wall, other,
                                max(0.0, procs.steal_s - previous.steal_s) / wall)
        bench.intervals.append(interval)
        previous = procs
        name = "warm-up" if load.phase == "warmup" else f"interval {load.index}"
        log(f"  {name}: {load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, "
            f"{load.errors} errors; RSS {procs.rss_mib:,.1f} MiB, {procs.fds} fds, {procs.threads} threads, "
            f"{procs.processes} processes; other load {other:.2f} cores, steal {interval.steal_cores:.2f}")
        if load.errors:
            log(f"    e.g. {load.error_samples[:2]}")


def run_soak_benchmark(*, target: str = "up", duration_s: float = 600.0, interval_s: float = 60.0,
                       warmup_s: float = 30.0, capacity_s: float = 15.0, capacity_concurrency: int = 64,
                       load: float = 0.8, rate: float | None = None, workers: int = 2,
                       capacity_client: str = "python", capacity_mode: str = "open", search_s: float = SEARCH_S,
                       requests_csv: Path | None = None, command: str = "python -m bench soak",
                       log: Callable[[str], None] = print) -> SoakBenchmark:
    """Build the model, start the target, measure its capacity (unless ``rate`` is given), then soak it.

    Bounded: about ``capacity_s + 1 + warmup_s + duration_s`` plus training and start-up (seconds).
    """
    from bench.control import code_state
    from bench.tabular import build_tabular_model

    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}")
    if capacity_mode not in CAPACITY_MODES:
        raise ValueError(f"capacity mode must be one of {', '.join(CAPACITY_MODES)}")
    if duration_s <= 0 or interval_s <= 0 or warmup_s < 0 or capacity_s < 1 or capacity_concurrency < 1:
        raise ValueError("duration and interval must be positive, warm-up not negative, capacity run at least 1 s "
                         "at concurrency 1 or more")
    if search_s <= 0:
        raise ValueError("the search runs must last a positive number of seconds")
    if not 0 < load <= 1.5 or (rate is not None and rate <= 0) or workers < 1:
        raise ValueError("load must be in (0, 1.5], rate positive and workers at least 1")
    bench = SoakBenchmark(started=datetime.now(UTC), command=command, target=target, duration_s=duration_s,
                          interval_s=interval_s, warmup_s=warmup_s, load=load, workers=workers,
                          capacity_s=capacity_s, capacity_concurrency=capacity_concurrency,
                          capacity_client=capacity_client, capacity_mode=capacity_mode, search_s=search_s,
                          code=code_state("src/mainsail"))
    before = _load_average()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-soak-"))
    try:
        log(f"building the tabular model in {tmp / 'model'}")
        model = build_tabular_model(tmp / "model")
        body_file = tmp / "record.json"
        body_file.write_bytes(model.json_body)
        with contextlib.ExitStack() as stack:
            bench.url, base_url, root = start_target(stack, bench, model.path, tmp, log)
            if rate is None:
                log(f"capacity: closed loop, concurrency {capacity_concurrency}, {capacity_s:g} s")
                first = sample_processes(root)
                bench.capacity = c = measure_capacity(bench, bench.url, body_file)
                last = sample_processes(root)
                wall, server = last.at - first.at, last.cpu_s - first.cpu_s
                # wrk reports its CPU per measured request; its discarded first second is not counted
                client = c.client_cpu_us_per_req * c.requests / 1e6
                bench.capacity_cores = (server / wall, max(0.0, last.busy_s - first.busy_s - server - client) / wall)
                log(f"  {bench.capacity.rps:,.0f} req/s (p99 {bench.capacity.p99_ms:.2f} ms, "
                    f"{bench.capacity.errors} errors)")
                capacity = bench.capacity.rps
                if capacity_mode == "open" and capacity > 0:
                    log(f"capacity: the highest open-loop rate held for {search_s:g} s")
                    bench.sustained_rate = capacity = search_capacity(bench, bench.url, body_file, capacity, log)
                bench.rate = load * capacity
            else:
                bench.rate, bench.fixed_rate = rate, True
            if bench.rate <= 0:
                raise RuntimeError("the capacity run answered nothing: no rate to hold")
            log(f"soak: {bench.rate:,.0f} req/s open loop, {warmup_s:g} s warm-up + {duration_s:g} s, reported "
                f"every {interval_s:g} s")
            soak(bench, bench.url, body_file, root, log, requests_csv)
            bench.batch_mean = batch_mean(base_url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        bench.load_average = (before, _load_average())
        bench.wall_s = time.monotonic() - started
    return bench
