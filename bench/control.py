"""The control-plane hop: what ``mainsail up``'s runtime route adds on top of the instance it forwards to.

One ``mainsail up`` in its default configuration on a loopback port; one endpoint created through it
with boto3, whose one ``ml.m5.large`` instance is the ``mainsail serve`` subprocess the local backend
starts (with the instance type's workers).
The same load generator (``bench/loadgen.py``, its own process), with the same body, then drives

* **direct**: the instance's own ``POST /invocations``, and
* **hop**: ``POST /endpoints/NAME/invocations`` on ``mainsail up``, which forwards to that instance,

at each concurrency, interleaved over rounds; plus a plain boto3 ``invoke_endpoint`` loop at
concurrency 1, to show what boto3 itself costs next to a raw HTTP client.

Finding the instance: ``DescribeEndpoint`` does not expose instances, so the benchmark reads the
endpoint's record from the control plane's SQLite state (``<home>/state.db``), opened read-only. That
record is what the runtime route itself reads on every request, so the port found there is the port
the hop forwards to, and it also carries the instance's pid, which lets the benchmark make sure the
instance is gone at the end even if ``mainsail up`` had to be killed. (The instance log file name,
``<home>/logs/<endpoint>/<variant>-<index>-<port>.log``, is only the fallback: files of earlier
instances stay behind, and a variant name may contain ``-``.)

Nothing is left running: ``mainsail up`` is stopped with SIGTERM (it stops its instances), then its
process group and the instance's are killed if anything is left, whatever happens (Ctrl-C included).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult, percentile
from bench.model import build_model_dir
from bench.procs import Server, ServerError, free_port, group_pids, machine_busy_s, ping, process_cpu_s, stop
from bench.report import Check, checks_table, machine_summary, versions
from bench.serve import HOST, ROOT, loadgen_argv, server_env
from bench.summary import RoundsSummary

DIRECT = "direct"
HOP = "hop"
# --instance-client both: a second `mainsail up` (MAINSAIL_INSTANCE_CLIENT=aiohttp) with its own instance
DIRECT_AIOHTTP = "direct-aiohttp"
HOP_AIOHTTP = "hop-aiohttp"
PATHS = (DIRECT, HOP, HOP_AIOHTTP, DIRECT_AIOHTTP)
PATH_LABELS = {
    DIRECT: "direct: client → instance `/invocations`",
    HOP: "hop: client → `mainsail up` `/endpoints/NAME/invocations` → instance",
    HOP_AIOHTTP: "hop, aiohttp: client → `mainsail up` (aiohttp client) → its instance",
    DIRECT_AIOHTTP: "direct to the aiohttp `mainsail up`'s instance",
}
#: how `mainsail up` reaches its instance (MAINSAIL_INSTANCE_CLIENT); "both": one `mainsail up` of each
INSTANCE_CLIENTS = ("loopback", "aiohttp", "both")
ENDPOINT_NAME = "bench-control"
VARIANT = "AllTraffic"
CONTENT_TYPE = "text/csv"
ACCEPT = "application/json"
OVERHEAD_TARGET_MS = 1.0
BOTO3_KW = {"region_name": "us-east-1", "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


@dataclass
class Measurement:
    """One round of one cell: a path at one concurrency."""

    path: str
    concurrency: int
    round: int
    result: LoadResult
    up_cpu_s: float
    """CPU ``mainsail up`` used while the load generator ran (warm-up included)."""
    instance_cpu_s: float
    """CPU the instance's processes used over the same time."""
    other_cpu_cores: float
    """CPU used on the machine by anything but the benchmark's own processes, in cores (noise)."""
    warmup_s: float

    def per_request_us(self, cpu_s: float) -> float:
        """CPU per request: the CPU spans warm-up plus window, at the window's request rate."""
        served = self.result.rps * (self.result.duration_s + self.warmup_s)
        return cpu_s / served * 1e6 if served else 0.0


@dataclass
class Cell(RoundsSummary):
    """A path at one concurrency, summarised over rounds (median of each figure)."""

    path: str
    concurrency: int
    rounds: list[Measurement]

    @property
    def up_us_per_req(self) -> float:
        return self._median([m.per_request_us(m.up_cpu_s) for m in self.rounds])

    @property
    def instance_us_per_req(self) -> float:
        return self._median([m.per_request_us(m.instance_cpu_s) for m in self.rounds])

    @property
    def client_us_per_req(self) -> float:
        return self._median([m.result.client_cpu_us_per_req for m in self.rounds])


@dataclass
class Boto3Loop:
    """One round of ``invoke_endpoint`` calls, one at a time, from this process."""

    round: int
    duration_s: float
    calls: int
    errors: int
    p50_ms: float
    p99_ms: float
    client_cpu_us_per_call: float
    error_samples: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.calls / self.duration_s if self.duration_s else 0.0


@dataclass
class InstanceInfo:
    variant: str
    port: int
    pid: int | None
    found_via: str
    left_running: bool = False
    """Whether the instance was still alive after ``mainsail up`` stopped (then the benchmark killed it)."""


@dataclass
class ControlBenchmark:
    """Everything one run measured; ``render_control_section`` turns it into markdown."""

    started: datetime
    command: str
    duration_s: float
    warmup_s: float
    rounds: int
    concurrencies: list[int]
    quick: bool
    boto3_loop: bool
    instance_client: str = "loopback"
    code: str = ""
    up_argv: list[str] = field(default_factory=list)
    up_ready_s: float = 0.0
    up_stop_s: float | None = None
    up_exit_code: int | None = None
    create_to_in_service_s: float = 0.0
    instance: InstanceInfo | None = None
    instance_b: InstanceInfo | None = None
    """With ``instance_client="both"``: the instance of the second (aiohttp) ``mainsail up``."""
    up_b_exit_code: int | None = None
    sample_response: str = ""
    measurements: list[Measurement] = field(default_factory=list)
    boto3_loops: list[Boto3Loop] = field(default_factory=list)
    wall_s: float = 0.0

    def cell(self, path: str, concurrency: int) -> Cell | None:
        rounds = [m for m in self.measurements if m.path == path and m.concurrency == concurrency]
        return Cell(path, concurrency, rounds) if rounds else None

    def cells(self) -> list[Cell]:
        found = [self.cell(p, c) for c in self.concurrencies for p in PATHS]
        return [c for c in found if c is not None]

    def overhead_ms(self, concurrency: int, field_name: str = "p50_ms") -> float | None:
        """hop − direct for one figure, from the medians over rounds."""
        direct, hop = self.cell(DIRECT, concurrency), self.cell(HOP, concurrency)
        if direct is None or hop is None:
            return None
        return float(getattr(hop, field_name)) - float(getattr(direct, field_name))

    def round_overheads_ms(self, concurrency: int) -> list[float]:
        """hop p50 − direct p50 in each round (the spread shows how much to trust the median)."""
        out = []
        for round_ in range(1, self.rounds + 1):
            pair = {m.path: m.result.p50_ms for m in self.measurements
                    if m.round == round_ and m.concurrency == concurrency}
            if DIRECT in pair and HOP in pair:
                out.append(pair[HOP] - pair[DIRECT])
        return out

    @property
    def errors(self) -> int:
        return (sum(m.result.errors for m in self.measurements)
                + sum(b.errors for b in self.boto3_loops))

    @property
    def boto3_p50_ms(self) -> float | None:
        return statistics.median(b.p50_ms for b in self.boto3_loops) if self.boto3_loops else None

    @property
    def boto3_p99_ms(self) -> float | None:
        return statistics.median(b.p99_ms for b in self.boto3_loops) if self.boto3_loops else None

    @property
    def boto3_rps(self) -> float | None:
        return statistics.median(b.rps for b in self.boto3_loops) if self.boto3_loops else None

    @property
    def boto3_client_us(self) -> float | None:
        return (statistics.median(b.client_cpu_us_per_call for b in self.boto3_loops)
                if self.boto3_loops else None)


# -- processes ---------------------------------------------------------------------------------


def up_argv(port: int, home: Path) -> list[str]:
    script = Path(sys.executable).parent / "mainsail"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "mainsail.cli"]
    # mainsail up as a user starts it: default log level (issue 14: benchmark what users get)
    return [*launcher, "up", "--host", HOST, "--port", str(port), "--home", str(home)]


def start_up(home: Path, log_path: Path, ready_timeout_s: float = 60.0, instance_client: str = "loopback") -> Server:
    """Start ``mainsail up`` in its own session (``MAINSAIL_INSTANCE_CLIENT=instance_client``); ready
    once it answers any HTTP request.

    (The control plane has no ``/ping``: a ``GET /ping`` gets a 404, which is an answer.)
    """
    port = free_port()
    argv = up_argv(port, home)
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=server_env({"MAINSAIL_INSTANCE_CLIENT": instance_client}), cwd=ROOT,
                                   start_new_session=True)
    server = Server("mainsail-up", process, HOST, port, log_path, argv)
    started = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                raise ServerError(f"mainsail up exited with code {process.returncode} before it was ready; "
                                  f"its log ends with:\n{server.log_tail()}")
            if ping(HOST, port, timeout=1.0) is not None:
                server.ready_s = time.monotonic() - started
                return server
            if time.monotonic() - started > ready_timeout_s:
                raise ServerError(f"mainsail up did not answer within {ready_timeout_s:.0f} s; its log ends "
                                  f"with:\n{server.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        stop(server)
        raise


def boto3_client(service: str, url: str) -> Any:
    import boto3
    from botocore.config import Config

    # One attempt per call: a retried failure must show up as an error, not as a slow call.
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                    read_timeout=30)
    return boto3.client(service, endpoint_url=url, config=config, **BOTO3_KW)


def create_endpoint(url: str, model_dir: Path, name: str = ENDPOINT_NAME, *,
                    max_wait_s: int = 120, environment: dict[str, str] | None = None) -> float:
    """CreateModel (with ``environment`` as its container's Environment), CreateEndpointConfig,
    CreateEndpoint, then wait for InService; returns the wait."""
    sm = boto3_client("sagemaker", url)
    container: dict[str, Any] = {"Image": "mainsail", "ModelDataUrl": f"file://{model_dir}"}
    if environment:
        container["Environment"] = dict(environment)
    sm.create_model(ModelName=f"{name}-model", ExecutionRoleArn="arn:aws:iam::123456789012:role/Bench",
                    PrimaryContainer=container)
    sm.create_endpoint_config(EndpointConfigName=f"{name}-config", ProductionVariants=[{
        "VariantName": VARIANT, "ModelName": f"{name}-model", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large"}])
    started = time.monotonic()
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name,
                                              WaiterConfig={"Delay": 1, "MaxAttempts": max_wait_s})
    return time.monotonic() - started


def instance_record(home: Path, endpoint: str) -> dict[str, Any] | None:
    """The endpoint's first instance record in ``<home>/state.db``, opened read-only: serving instances
    first (records without a ``ready`` flag predate it and serve); None if unreadable or none."""
    try:
        conn = sqlite3.connect(f"{(home / 'state.db').resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT body FROM records WHERE kind = 'endpoint' AND name = ?",
                               (endpoint,)).fetchone()
        finally:
            conn.close()
        instances = (json.loads(row[0]).get("Instances") or []) if row else []
    except (sqlite3.Error, OSError, ValueError):
        return None
    instances = sorted(instances, key=lambda i: not i.get("ready", True))
    return dict(instances[0]) if instances else None


def instance_from_state(home: Path, endpoint: str) -> InstanceInfo | None:
    """The endpoint's first instance from ``<home>/state.db`` (None if unreadable)."""
    first = instance_record(home, endpoint)
    try:
        return InstanceInfo(str(first["variant"]), int(first["port"]), int(first["pid"]), "state.db") \
            if first else None
    except (KeyError, ValueError, TypeError):
        return None


def instance_from_logs(home: Path, endpoint: str) -> InstanceInfo | None:
    """The fallback: the newest ``<variant>-<index>-<port>.log`` under ``<home>/logs/<endpoint>/``."""
    logs = sorted((home / "logs" / endpoint).glob("*.log"), key=lambda p: p.stat().st_mtime)
    for path in reversed(logs):
        variant, _, rest = path.stem.rpartition("-")
        variant = variant.rpartition("-")[0]
        if rest.isdigit() and variant:
            return InstanceInfo(variant, int(rest), None, "log file name")
    return None


def find_instance(home: Path, endpoint: str) -> InstanceInfo:
    info = instance_from_state(home, endpoint) or instance_from_logs(home, endpoint)
    if info is None:
        raise ServerError(f"no instance of endpoint {endpoint} in {home / 'state.db'} or {home / 'logs'}")
    if ping(HOST, info.port) != 200:
        raise ServerError(f"the instance found via {info.found_via} (port {info.port}) does not answer /ping")
    return info


def code_state(path: str = "src/mainsail") -> str:
    """The commit measured, and whether ``path`` differed from it (read-only git)."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("diff-index", "--quiet", "HEAD", "--", path)
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return f"commit {head.stdout.strip()}" + (
        f" with uncommitted changes under `{path}`" if dirty.returncode == 1 else "")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def make_sure_stopped(instance: InstanceInfo | None) -> None:
    """After ``mainsail up`` is gone: kill the instance's process group if anything of it is left."""
    if instance is None or instance.pid is None:
        return
    deadline = time.monotonic() + 3.0
    while _group_alive(instance.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(instance.pid):
        instance.left_running = True
        try:
            os.killpg(instance.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# -- measuring ---------------------------------------------------------------------------------


def _cpu_s(pgid: int | None) -> float:
    return sum(process_cpu_s(pid) for pid in group_pids(pgid)) if pgid else 0.0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(url: str, body_file: Path, *, path: str, concurrency: int, round_: int, duration_s: float,
            warmup_s: float, up: Server, instance: InstanceInfo) -> Measurement:
    """One load-generator run against ``url``, with the CPU each process spent meanwhile."""
    argv = loadgen_argv(url, body_file, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s,
                        content_type=CONTENT_TYPE)
    up_before, inst_before = _cpu_s(up.process.pid), _cpu_s(instance.pid)
    own, children, busy = time.process_time(), _children_cpu_s(), machine_busy_s()
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=ROOT, env=server_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=duration_s + warmup_s + 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    wall = time.monotonic() - started
    up_cpu, inst_cpu = _cpu_s(up.process.pid) - up_before, _cpu_s(instance.pid) - inst_before
    used = up_cpu + inst_cpu + (_children_cpu_s() - children) + (time.process_time() - own)
    other = max(0.0, (machine_busy_s() - busy) - used) / wall
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed ({process.returncode}):\n{stderr[-3000:]}")
    result = LoadResult.from_json(stdout.strip().splitlines()[-1])
    return Measurement(path, concurrency, round_, result, up_cpu, inst_cpu, other, warmup_s)


def time_boto3(url: str, body: bytes, *, round_: int, duration_s: float, warmup_s: float,
               endpoint: str = ENDPOINT_NAME) -> Boto3Loop:
    """``invoke_endpoint`` one call after another for ``warmup_s`` then ``duration_s`` seconds."""
    client = boto3_client("sagemaker-runtime", url)
    latencies: list[float] = []
    failed = 0
    samples: list[str] = []
    started = time.perf_counter()
    window_start, window_end = started + warmup_s, started + warmup_s + duration_s
    cpu_start: float | None = None
    try:
        while (t0 := time.perf_counter()) < window_end:
            if cpu_start is None and t0 >= window_start:
                cpu_start = time.process_time()
            try:
                response = client.invoke_endpoint(EndpointName=endpoint, ContentType=CONTENT_TYPE,
                                                  Accept=ACCEPT, Body=body)
                response["Body"].read()
            except Exception as exc:  # any failure counts; keep a few to show
                failed += 1
                if len(samples) < 5:
                    samples.append(f"{type(exc).__name__}: {exc}"[:300])
                time.sleep(0.01)
                continue
            t1 = time.perf_counter()
            if t0 >= window_start and t1 <= window_end:
                latencies.append(t1 - t0)
        cpu = time.process_time() - cpu_start if cpu_start is not None else 0.0
    finally:
        client.close()
    latencies.sort()
    return Boto3Loop(round_, duration_s, len(latencies), failed, percentile(latencies, 50) * 1e3,
                     percentile(latencies, 99) * 1e3, cpu / len(latencies) * 1e6 if latencies else 0.0,
                     samples)


# -- the run -----------------------------------------------------------------------------------


def run_control_benchmark(*, duration_s: float = 5.0, warmup_s: float | None = None, rounds: int = 3,
                          quick: bool = False, concurrencies: Sequence[int] = (1, 16),
                          boto3_loop: bool = True, instance_client: str = "loopback",
                          command: str = "python -m bench control",
                          log: Callable[[str], None] = print) -> ControlBenchmark:
    """Build the model, start ``mainsail up``, create the endpoint, then measure, interleaved.

    ``instance_client``: how ``mainsail up`` reaches its instance (``loopback``, ``aiohttp``); ``both``
    starts a second ``mainsail up`` (aiohttp) with its own endpoint and instance and adds its paths
    (:data:`HOP_AIOHTTP`, :data:`DIRECT_AIOHTTP`) to every round.

    Bounded: about ``rounds * (paths * len(concurrencies) + boto3_loop) * (warmup_s + duration_s)`` plus
    training (about 1 s), ``mainsail up``'s start and the endpoint's (a few seconds each).
    """
    if quick:
        duration_s, rounds = min(duration_s, 1.0), 1
    if warmup_s is None:
        warmup_s = 0.3 if quick else 1.0
    if rounds < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("rounds must be >= 1, duration_s > 0 and warmup_s >= 0")
    if instance_client not in INSTANCE_CLIENTS:
        raise ValueError(f"instance_client must be one of {', '.join(INSTANCE_CLIENTS)}")
    bench = ControlBenchmark(started=datetime.now(UTC), command=command, duration_s=duration_s,
                             warmup_s=warmup_s, rounds=rounds, concurrencies=list(concurrencies),
                             quick=quick, boto3_loop=boto3_loop, instance_client=instance_client)
    t_start = time.monotonic()
    bench.code = code_state()
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-control-"))
    home, home_b = tmp / "home", tmp / "home-aiohttp"
    up: Server | None = None
    up_b: Server | None = None
    try:
        log(f"building the model in {tmp / 'model'}")
        model = build_model_dir(tmp / "model")
        body_file = tmp / "record.csv"
        body_file.write_bytes(model.csv_row)
        first_client = "loopback" if instance_client == "both" else instance_client
        log(f"starting mainsail up (instance client: {first_client})")
        up = start_up(home, tmp / "up.log", instance_client=first_client)
        bench.up_argv, bench.up_ready_s = up.argv, up.ready_s
        log(f"  ready after {up.ready_s:.1f} s on port {up.port}; creating endpoint {ENDPOINT_NAME} with boto3")
        try:
            bench.create_to_in_service_s = create_endpoint(up.url, model.path)
        finally:  # record the instance as soon as it exists, so it is stopped whatever happens
            bench.instance = instance_from_state(home, ENDPOINT_NAME)
        instance = bench.instance = find_instance(home, ENDPOINT_NAME)
        log(f"  InService after {bench.create_to_in_service_s:.1f} s; instance on port {instance.port} "
            f"(pid {instance.pid}, found via {instance.found_via})")
        targets = {DIRECT: (f"http://{HOST}:{instance.port}/invocations", up, instance),
                   HOP: (f"{up.url}/endpoints/{ENDPOINT_NAME}/invocations", up, instance)}
        if instance_client == "both":
            log("starting a second mainsail up (instance client: aiohttp) with its own endpoint")
            up_b = start_up(home_b, tmp / "up-aiohttp.log", instance_client="aiohttp")
            try:
                create_endpoint(up_b.url, model.path)
            finally:
                bench.instance_b = instance_from_state(home_b, ENDPOINT_NAME)
            instance_b = bench.instance_b = find_instance(home_b, ENDPOINT_NAME)
            log(f"  instance on port {instance_b.port} (pid {instance_b.pid})")
            targets[HOP_AIOHTTP] = (f"{up_b.url}/endpoints/{ENDPOINT_NAME}/invocations", up_b, instance_b)
            targets[DIRECT_AIOHTTP] = (f"http://{HOST}:{instance_b.port}/invocations", up_b, instance_b)
        paths = [p for p in PATHS if p in targets]
        for round_ in range(1, rounds + 1):
            order = paths if round_ % 2 else list(reversed(paths))
            for concurrency in concurrencies:
                for path in order:
                    log(f"round {round_}/{rounds}: {path}, concurrency {concurrency}: {warmup_s:g} s warm-up + "
                        f"{duration_s:g} s")
                    url, server, target = targets[path]
                    m = measure(url, body_file, path=path, concurrency=concurrency, round_=round_,
                                duration_s=duration_s, warmup_s=warmup_s, up=server, instance=target)
                    if m.result.errors:
                        log(f"  {m.result.errors} errors, e.g. {m.result.error_samples[:2]}; mainsail up log:\n"
                            f"{server.log_tail(1500)}")
                    if not bench.sample_response:
                        bench.sample_response = m.result.sample_response
                    bench.measurements.append(m)
            if boto3_loop:
                log(f"round {round_}/{rounds}: boto3 invoke_endpoint loop, concurrency 1: {warmup_s:g} s warm-up "
                    f"+ {duration_s:g} s")
                loop = time_boto3(up.url, model.csv_row, round_=round_, duration_s=duration_s,
                                  warmup_s=warmup_s)
                if loop.errors:
                    log(f"  {loop.errors} errors, e.g. {loop.error_samples[:2]}")
                bench.boto3_loops.append(loop)
    finally:
        try:
            if up_b is not None:
                log("stopping the second mainsail up")
                stop(up_b, grace_s=30.0)
                bench.up_b_exit_code = up_b.exit_code
            if up is not None:
                log("stopping mainsail up (SIGTERM; it stops its instance)")
                stop(up, grace_s=30.0)
                bench.up_stop_s, bench.up_exit_code = up.stop_s, up.exit_code
        finally:
            make_sure_stopped(bench.instance)
            make_sure_stopped(bench.instance_b)
            shutil.rmtree(tmp, ignore_errors=True)
            bench.wall_s = time.monotonic() - t_start
    return bench


# -- the report --------------------------------------------------------------------------------


def control_checks(bench: ControlBenchmark) -> list[Check]:
    low = min(bench.concurrencies)
    name = f"concurrency {low}: hop p50 − direct p50"
    overhead = bench.overhead_ms(low)
    direct, hop = bench.cell(DIRECT, low), bench.cell(HOP, low)
    if overhead is None or direct is None or hop is None:
        return [Check(name, f"≤ {OVERHEAD_TARGET_MS:g} ms", "—", None)]
    return [Check(name, f"≤ {OVERHEAD_TARGET_MS:g} ms",
                  f"{hop.p50_ms:.3f} − {direct.p50_ms:.3f} = {overhead:.3f} ms",
                  overhead <= OVERHEAD_TARGET_MS and direct.errors == 0 and hop.errors == 0)]


def results_table(bench: ControlBenchmark) -> str:
    rows = ["| path | concurrency | p50 ms | p99 ms | req/s | errors | `mainsail up` CPU µs/req | "
            "instance CPU µs/req |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in bench.cells():
        up_cpu = f"{cell.up_us_per_req:,.0f}" if cell.path in (HOP, HOP_AIOHTTP) else "–"
        rows.append(f"| {PATH_LABELS[cell.path]} | {cell.concurrency} | {cell.p50_ms:.3f} | {cell.p99_ms:.3f} | "
                    f"{cell.rps:,.0f} | {cell.errors} | {up_cpu} | {cell.instance_us_per_req:,.0f} |")
    if bench.boto3_loops:
        errors = sum(b.errors for b in bench.boto3_loops)
        rows.append(f"| boto3 `invoke_endpoint` loop (one thread) → hop | 1 | {bench.boto3_p50_ms:.3f} | "
                    f"{bench.boto3_p99_ms:.3f} | {bench.boto3_rps:,.0f} | {errors} | – | – |")
    return "\n".join(rows)


def overhead_table(bench: ControlBenchmark) -> str:
    rows = ["| concurrency | direct p50 ms | hop p50 ms | **overhead p50 ms** | overhead per round (p50) | "
            "overhead p99 ms | req/s hop ÷ direct |",
            "|---:|---:|---:|---:|---|---:|---:|"]
    for c in bench.concurrencies:
        direct, hop = bench.cell(DIRECT, c), bench.cell(HOP, c)
        if direct is None or hop is None:
            continue
        per_round = ", ".join(f"{v:.3f}" for v in bench.round_overheads_ms(c)) or "–"
        ratio = f"{hop.rps / direct.rps:.2f}" if direct.rps else "–"
        rows.append(f"| {c} | {direct.p50_ms:.3f} | {hop.p50_ms:.3f} | **{hop.p50_ms - direct.p50_ms:.3f}** | "
                    f"{per_round} | {hop.p99_ms - direct.p99_ms:.3f} | {ratio} |")
    return "\n".join(rows)


def cpu_text(bench: ControlBenchmark) -> str:
    """How much of the hop's latency is the control plane's own CPU."""
    parts = []
    window = bench.warmup_s + bench.duration_s
    busiest = 0.0
    for c in bench.concurrencies:
        hop = bench.cell(HOP, c)
        if hop is None or not hop.rounds:
            continue
        cores = statistics.median(m.up_cpu_s / window for m in hop.rounds)
        busiest = max(busiest, cores)
        parts.append(f"{hop.up_us_per_req:,.0f} µs per request at concurrency {c} ({cores:.2f} cores busy)")
    if not parts:
        return ""
    text = ("`mainsail up` spent " + " and ".join(parts) + " of its own CPU forwarding: one process on one "
            "event loop")
    if busiest >= 0.8:
        return text + ", so at about 1 core it is the hop's throughput ceiling."
    text += ", well below the one core that would cap the hop's throughput."
    high = max(bench.concurrencies)
    direct, hop = bench.cell(DIRECT, high), bench.cell(HOP, high)
    if high == min(bench.concurrencies) or direct is None or hop is None:
        return text
    direct_cores = statistics.median(m.instance_cpu_s / window for m in direct.rounds)
    hop_cores = statistics.median(m.instance_cpu_s / window for m in hop.rounds)
    if hop_cores < 0.9 * direct_cores:
        text += (f" At concurrency {high} the instance itself got {hop_cores:.2f} cores on the hop path against "
                 f"{direct_cores:.2f} direct: with one more busy process on the machine's {os.cpu_count()} cores "
                 "(see also the other-load column below), the instance gets less CPU on the hop path; that, more "
                 "than the forwarding's own CPU, is what the hop loses there.")
    return text


def boto3_text(bench: ControlBenchmark) -> str:
    hop = bench.cell(HOP, 1)
    if not bench.boto3_loops or hop is None or bench.boto3_p50_ms is None:
        return ""
    extra = bench.boto3_p50_ms - hop.p50_ms
    return (f"boto3 (`sagemaker-runtime` `invoke_endpoint` plus reading the body, one call at a time from "
            f"the benchmark process) took {bench.boto3_p50_ms:.3f} ms at p50 through the hop, "
            f"{extra:+.3f} ms against the raw HTTP client on the same route: that is boto3's own cost "
            f"(request serialisation, SigV4 signing, urllib3, response parsing), about "
            f"{bench.boto3_client_us:,.0f} µs of client CPU per call against "
            f"{hop.client_us_per_req:,.0f} µs for the raw client. It is paid on the client, not by mainsail.")


def rounds_table(bench: ControlBenchmark) -> str:
    rows = ["| round | path | conc. | req/s | p50 ms | p90 ms | p99 ms | max ms | requests | connections opened | "
            "`up` CPU cores | instance CPU cores | client CPU µs/req | other load, cores |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    window = bench.warmup_s + bench.duration_s
    for m in sorted(bench.measurements, key=lambda m: (m.round, m.concurrency, PATHS.index(m.path))):
        r = m.result
        rows.append(f"| {m.round} | {m.path} | {m.concurrency} | {r.rps:,.0f} | {r.p50_ms:.3f} | {r.p90_ms:.3f} | "
                    f"{r.p99_ms:.3f} | {r.max_ms:.3f} | {r.requests:,} | {r.connections_opened:,} | "
                    f"{m.up_cpu_s / window:.2f} | {m.instance_cpu_s / window:.2f} | "
                    f"{r.client_cpu_us_per_req:.0f} | {m.other_cpu_cores:.2f} |")
    for b in bench.boto3_loops:
        rows.append(f"| {b.round} | boto3 loop | 1 | {b.rps:,.0f} | {b.p50_ms:.3f} | – | {b.p99_ms:.3f} | – | "
                    f"{b.calls:,} | – | – | – | {b.client_cpu_us_per_call:.0f} | – |")
    return "\n".join(rows)


def render_control_section(bench: ControlBenchmark) -> str:
    checks = control_checks(bench)
    quick = ("\n> **Quick smoke run**: measurements this short only show that the harness works; "
             "do not read the numbers.\n" if bench.quick else "")
    instance = bench.instance
    found = (f"port {instance.port}, found via {instance.found_via}" if instance is not None else "not found")
    stopped = (f"stopped on SIGTERM in {bench.up_stop_s:.1f} s (exit code {bench.up_exit_code})"
               if bench.up_stop_s is not None else
               f"did not stop within the grace period and was killed (exit code {bench.up_exit_code})")
    left = (" The instance outlived it and was killed by the benchmark."
            if instance is not None and instance.left_running else " Its instance was gone with it.")
    worst_other = max((m.other_cpu_cores for m in bench.measurements), default=0.0)
    high = max(bench.concurrencies)
    high_overhead = bench.overhead_ms(high)
    high_text = (f"At concurrency {high} the p50 overhead was {high_overhead:.3f} ms." if high_overhead is not None
                 and high != min(bench.concurrencies) else "")
    cores = os.cpu_count()
    return f"""
## The control-plane hop: `mainsail up` runtime route vs the instance directly

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all).
{quick}
* **Machine**: {machine_summary()}.
* **Code**: {bench.code}.
* **Instance client** (`MAINSAIL_INSTANCE_CLIENT`): {bench.instance_client}.
* **Versions**: {versions(("mainsail", "starlette", "uvicorn", "uvloop", "httptools", "httpx", "httpcore",
                          "boto3", "botocore", "xgboost", "numpy"))}.
* **Shared cores**: `mainsail up`, the instance and the load generator all run on this machine's
  {cores} cores. On the hop path three busy processes share them (client, control plane, instance),
  against two on the direct path, so at concurrency {high} the hop's throughput and tail are
  bounded by CPU, not only by the hop's own latency.

### Results

Median over {bench.rounds} interleaved round{"s" if bench.rounds > 1 else ""} of {bench.duration_s:g} s per cell
(each round's figures are under [Per round (control hop)](#per-round-control-hop)). Latencies in milliseconds. The CPU
columns are each process's CPU time over the cell divided by the requests it served.

{results_table(bench)}

**Hop overhead** (hop − direct, from the medians above):

{overhead_table(bench)}

{checks_table(checks)}

{high_text} {cpu_text(bench)}

{boto3_text(bench)}

### Method

* **Model**: the `serve` benchmark's model (`bench/model.py` `build_model_dir`): an XGBoost classifier
  (20 features, 50 trees) behind `bench/models/xgb_inference.py`, a script in the style of SageMaker's
  scikit-learn container. Request: `Content-Type: text/csv`, `Accept: application/json`, one record of
  20 numbers; answer: a one-element JSON list (`{bench.sample_response[:60]}`).
* **Control plane**: `mainsail up --host 127.0.0.1 --port PORT --home TMP` (every other setting at its default),
  ready {bench.up_ready_s:.1f} s after start (any HTTP answer); it {stopped} at the end.{left}
* **Endpoint**: created with boto3 against it (`sagemaker` client, dummy credentials, `us-east-1`):
  CreateModel with `ModelDataUrl=file://<model dir>`, CreateEndpointConfig (one `AllTraffic` variant,
  one instance), CreateEndpoint, then the `endpoint_in_service` waiter (`Delay` 1 s): InService
  {bench.create_to_in_service_s:.1f} s after CreateEndpoint. Its one instance is the
  `mainsail serve` subprocess the local backend starts for an `ml.m5.large` (2 workers: the instance
  type's 2 vCPUs, capped at this machine's cores), at its default log level.
* **Finding the instance** ({found}): DescribeEndpoint does not expose instances, so the benchmark
  reads the endpoint's record from `<home>/state.db`, opened read-only (`mode=ro`). That is the record
  the runtime route reads on each request, so its port is the one the hop forwards to, and its pid
  lets the benchmark kill the instance if `mainsail up` could not. The instance log file name
  (`<home>/logs/<endpoint>/<variant>-<index>-<port>.log`) is only a fallback: files of earlier
  instances stay behind and a variant name may contain `-`.
* **Load**: `bench/loadgen.py` in its own process (raw HTTP/1.1 over asyncio + uvloop, closed loop,
  keep-alive), the same body for both paths; {bench.warmup_s:g} s of discarded warm-up then
  {bench.duration_s:g} s measured per cell. **direct** posts to `http://127.0.0.1:<instance
  port>/invocations`; **hop** posts to `http://127.0.0.1:<up port>/endpoints/{ENDPOINT_NAME}/invocations`,
  which `mainsail up` forwards to the same instance over its pooled keep-alive connections
  (`mainsail.backends.loopback`: HTTP/1.1 written by hand on asyncio transports, responses parsed by
  httptools; it replaced an `httpx.AsyncClient`, whose own layers took most of the route's CPU). Each
  round measures both paths at each concurrency, alternating which goes first.
* **boto3 loop**: `boto3.client("sagemaker-runtime").invoke_endpoint(...)` and `Body.read()` one call
  at a time in the benchmark process for {bench.warmup_s:g} s + {bench.duration_s:g} s per round, retries off.
* **Noise**: other processes on the machine used up to {worst_other:.2f} cores during a measurement
  (last column below){": treat this run's numbers with care" if worst_other >= 0.25 else ""}.

### Per round (control hop)

{rounds_table(bench)}
"""


# -- hand-written vs aiohttp (--instance-client both) ---------------------------------------------


def _paired(bench: ControlBenchmark, concurrency: int, value: Callable[[Measurement], float]) -> list[float]:
    """hop-aiohttp − hop (hand-written) of ``value`` in each round, paired within the round."""
    out = []
    for round_ in range(1, bench.rounds + 1):
        pair = {m.path: value(m) for m in bench.measurements if m.round == round_ and m.concurrency == concurrency}
        if HOP in pair and HOP_AIOHTTP in pair:
            out.append(pair[HOP_AIOHTTP] - pair[HOP])
    return out


def clients_summary(bench: ControlBenchmark) -> str:
    """Per concurrency, aiohttp against the hand-written client, paired round by round: in how many
    rounds its p50 was higher, its req/s lower, its ``mainsail up`` CPU per request higher."""
    lines = []
    for c in bench.concurrencies:
        hop = bench.cell(HOP, c)
        p50 = _paired(bench, c, lambda m: m.result.p50_ms)
        rps = _paired(bench, c, lambda m: m.result.rps)
        cpu = _paired(bench, c, lambda m: m.per_request_us(m.up_cpu_s))
        if hop is None or not p50:
            continue
        n = len(p50)
        lines.append(
            f"* concurrency {c}: aiohttp's p50 higher in {sum(d > 0 for d in p50)} of {n} rounds (median "
            f"{statistics.median(p50):+.3f} ms, {statistics.median(p50) / hop.p50_ms:+.1%}); req/s lower in "
            f"{sum(d < 0 for d in rps)} of {n} (median {statistics.median(rps) / hop.rps:+.1%}); `mainsail up` "
            f"CPU per request higher in {sum(d > 0 for d in cpu)} of {n} (median {statistics.median(cpu):+,.0f} µs, "
            f"{statistics.median(cpu) / hop.up_us_per_req:+.0%})")
    return "\n".join(lines)


def clients_table(bench: ControlBenchmark) -> str:
    rows = ["| concurrency | direct p50 / p99 ms, req/s | hop, hand-written: p50 / p99 ms, req/s | "
            "hop, aiohttp: p50 / p99 ms, req/s | aiohttp − hand-written p50 ms (per round) | "
            "p99 ms | req/s aiohttp ÷ hand-written | `up` CPU µs/req hand-written / aiohttp | "
            "direct to the aiohttp side's instance p50 ms |",
            "|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for c in bench.concurrencies:
        direct, hop, hop_b, direct_b = (bench.cell(p, c) for p in (DIRECT, HOP, HOP_AIOHTTP, DIRECT_AIOHTTP))
        if direct is None or hop is None or hop_b is None or direct_b is None:
            continue
        diffs = _paired(bench, c, lambda m: m.result.p50_ms)
        per_round = ", ".join(f"{d:+.3f}" for d in diffs)
        ratio = f"{hop_b.rps / hop.rps:.3f}" if hop.rps else "–"
        rows.append(f"| {c} | {direct.p50_ms:.3f} / {direct.p99_ms:.3f}, {direct.rps:,.0f} | "
                    f"{hop.p50_ms:.3f} / {hop.p99_ms:.3f}, {hop.rps:,.0f} | "
                    f"{hop_b.p50_ms:.3f} / {hop_b.p99_ms:.3f}, {hop_b.rps:,.0f} | "
                    f"**{statistics.median(diffs):+.3f}** ({per_round}) | {hop_b.p99_ms - hop.p99_ms:+.3f} | "
                    f"{ratio} | {hop.up_us_per_req:,.0f} / {hop_b.up_us_per_req:,.0f} | {direct_b.p50_ms:.3f} |")
    return "\n".join(rows)


def render_clients_section(bench: ControlBenchmark, load: str = "") -> str:
    """The markdown of ``--instance-client both``: the comparison, the verdict, every path and round."""
    worst_other = max((m.other_cpu_cores for m in bench.measurements), default=0.0)
    quick = "\n> **Quick smoke run**: do not read the numbers.\n" if bench.quick else ""
    return f"""
#### The measurement (`python -m bench control --instance-client both`)

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all); {bench.code}.
{quick}
* **Machine**: {machine_summary()}{load}; other processes used up to {worst_other:.2f} cores during a
  measurement (last column of the per-round table).
* **Versions**: {versions(("mainsail", "aiohttp", "yarl", "multidict", "uvicorn", "uvloop", "httptools"))}.
* **Set-up**: two `mainsail up` on loopback, each with the same endpoint (its own `mainsail serve
  --workers 1` instance of the same model): one with `MAINSAIL_INSTANCE_CLIENT=loopback` (the
  hand-written `mainsail.backends.loopback.Forwarder`), one with `MAINSAIL_INSTANCE_CLIENT=aiohttp`
  (`mainsail.backends.aiohttp_transport.AiohttpTransport`: one `aiohttp.ClientSession` over a
  `TCPConnector(limit=0, use_dns_cache=False, keepalive_timeout=60)`, no auto headers, no
  decompression, no cookies). Every round measures, at each concurrency, direct → hop (hand-written)
  → hop (aiohttp) → direct to the aiohttp side's instance, the order reversed every other round;
  {bench.rounds} rounds of {bench.warmup_s:g} s warm-up + {bench.duration_s:g} s per cell; figures are
  medians over rounds; the differences are paired within each round.
* **Rule** (issue 13, item 7): keep the hand-written client only if the library is measurably slower.

{clients_table(bench)}

Paired round by round (aiohttp − hand-written, same round, adjacent cells):

{clients_summary(bench)}

Every path:

{results_table(bench)}

Per round:

{rounds_table(bench)}
"""

