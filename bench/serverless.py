"""Serverless cold starts: the first request after a serverless endpoint of ``mainsail up`` scaled to zero.

``python -m bench serverless`` starts one ``mainsail up`` (``--log-level warning``) with
``MAINSAIL_SERVERLESS_IDLE_SECONDS`` set small (2 s by default) and creates, with boto3, one serverless
endpoint (``ServerlessConfig: {MemorySizeInMB: 2048, MaxConcurrency: 4}``) per model:

* **tabular**: the demo's XGBoost classifier packaged by ``mainsail.package`` (risk tables, imputation,
  isotonic calibration; ``examples/demo.py``), served by the built-in tabular handler;
* **bimodal-onnx** and **bimodal-pytorch**: the tiny bimodal BERT of ``examples/bimodal_demo.py``
  with its exported ``model.onnx``, served by the built-in PyTorch handler with
  ``MAINSAIL_USE_ONNX=true`` (ONNX Runtime) or ``false`` (``model.pth`` through torch).

Then, ``repeats`` times, for each endpoint in turn: wait until every endpoint reports
``CurrentInstanceCount == 0`` in ``DescribeEndpoint`` (and the processes of the instance that served
last are gone), and time one ``invoke_endpoint`` (a **cold start**). The control plane's
``ModelSetupTime`` histogram (``GET /metrics``) is read before and after each cold start, so each one
also has its server-side setup time; the instance's own log (its lines carry timestamps) splits the
rest: the instance process started, its supervisor listening, the worker's model loaded. After the
last cold start of each endpoint, ``warm_requests`` more ``invoke_endpoint`` calls, one at a time,
measure the **warm** latency of the same instance.

Nothing is left running: ``mainsail up`` is stopped with SIGTERM (it stops its instances), then the
process group of every instance seen is killed if anything of it is left.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.control import BOTO3_KW, InstanceInfo, instance_record, make_sure_stopped, start_up
from bench.loadgen import percentile
from bench.procs import Server, group_pids, machine_busy_s, process_cpu_s, stop
from bench.report import machine_summary, versions
from bench.serve import HOST, ROOT, server_env

JSON = "application/json"
VARIANT = "AllTraffic"
TABULAR = "tabular"
ONNX = "bimodal-onnx"
PYTORCH = "bimodal-pytorch"
MODELS = (TABULAR, ONNX, PYTORCH)
QUICK_MODELS = (TABULAR, ONNX)
MODEL_LABELS = {
    TABULAR: "tabular: XGBoost + risk tables + calibration (`mainsail.package`)",
    ONNX: "bimodal BERT (tiny), ONNX Runtime",
    PYTORCH: "bimodal BERT (tiny), PyTorch",
}
ENVIRONMENTS = {
    TABULAR: {},
    ONNX: {"MAINSAIL_USE_ONNX": "true", "ONNX_INTRA_OP_THREADS": "1", "ONNX_INTER_OP_THREADS": "1",
           "HF_HUB_OFFLINE": "1"},
    PYTORCH: {"MAINSAIL_USE_ONNX": "false", "HF_HUB_OFFLINE": "1"},
}
SERVERLESS_CONFIG = {"MemorySizeInMB": 2048, "MaxConcurrency": 4}
DEFAULT_IDLE_S = 2.0
VERSIONS = ("mainsail", "boto3", "botocore", "xgboost", "torch", "onnxruntime", "transformers", "numpy",
            "starlette", "uvicorn")
IMPORTS = (
    ("interpreter alone", "pass", ()),
    ("`mainsail serve`'s stack (CLI, workers, Starlette app, uvicorn)",
     "import mainsail.cli, mainsail.serve.workers, mainsail.serve.app, uvicorn", ()),
    ("tabular handler + xgboost", "import mainsail.handlers.tabular, xgboost", (TABULAR,)),
    ("PyTorch handler module (torch, transformers) + onnxruntime",
     "import mainsail.handlers.pytorch.handler, onnxruntime", (ONNX,)),
    ("PyTorch handler module (torch, transformers)", "import mainsail.handlers.pytorch.handler", (PYTORCH,)),
)
"""What a fresh interpreter imports, timed alone: (label, statement, models it matters to; () for all)."""
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \[(\d+)\] ")
_LOADED = re.compile(r"model loaded by the (\S+) handler in ([0-9.]+) s")
_NO_PRELOAD = "not preloading the model"
_ACCEPTING = "Application startup complete"
_METRIC = re.compile(r"^ModelSetupTime_(sum|count)\{([^}]*)\}\s+(\S+)$")


def code_state() -> str:
    """The commit measured and the files under ``src/mainsail`` that differ from it (read-only git)."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "src/mainsail")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    files = sorted(line[3:] for line in changed.stdout.splitlines() if line[3:].endswith(".py"))
    if not files:
        return f"commit {head.stdout.strip()}"
    shown = ", ".join(f"`{f.removeprefix('src/mainsail/')}`" for f in files[:8])
    more = f" and {len(files) - 8} more" if len(files) > 8 else ""
    return f"commit {head.stdout.strip()} with uncommitted changes under `src/mainsail` ({shown}{more})"


def source_mtimes() -> dict[str, float]:
    """Modification time of each ``src/mainsail`` Python file, to notice code changing during a run."""
    out = {}
    for path in (ROOT / "src" / "mainsail").rglob("*.py"):
        with contextlib.suppress(OSError):
            out[str(path.relative_to(ROOT))] = path.stat().st_mtime
    return out


def endpoint_name(model: str) -> str:
    return f"bench-sl-{model}"


# -- results -------------------------------------------------------------------------------------
@dataclass
class ColdStart:
    """One first request after the endpoint scaled to zero."""

    model: str
    round: int
    total_ms: float
    """``invoke_endpoint`` plus reading the body, in the benchmark process."""
    setup_ms: float | None
    """This cold start's share of ``ModelSetupTime`` (router: request found no instance → instance ready)."""
    to_spawn_ms: float | None = None
    """Request sent → the instance process started (the control plane's reaction)."""
    to_listening_ms: float | None = None
    """Instance process started → its supervisor listening (interpreter start, imports, model dir)."""
    to_loaded_ms: float | None = None
    """Supervisor listening → model loaded: the handler's imports and ``load()``, in the supervisor (preload)
    or, where preload is unsafe (ONNX), the supervisor's own imports, then a spawned worker's."""
    load_ms: float | None = None
    """The handler's ``load()`` alone, as the process that ran it logs it."""
    no_preload_ms: float | None = None
    """Supervisor listening → its "not preloading" line: what the supervisor imported only to decide that
    the model cannot be loaded before fork (then a spawned worker imports it all again)."""
    preloaded: bool | None = None
    """Whether the supervisor loaded the model itself (and forked the worker)."""
    to_accepting_ms: float | None = None
    """Model loaded → the worker accepting connections (fork, or the spawned worker's uvicorn start)."""
    to_ready_ms: float | None = None
    """Worker accepting → the router saw the instance ready (end of ``ModelSetupTime``): the reconciler's
    ``/ping`` check and the router's next look at the table."""
    instance_cpu_s: float | None = None
    """CPU the instance's processes (supervisor and worker) had used when the reply arrived."""
    other_cores: float | None = None
    """CPU used on the machine by anything but the benchmark, ``mainsail up`` and the instance, in cores."""
    error: str = ""
    pid: int | None = None

    @property
    def request_ms(self) -> float | None:
        """After the setup: forwarding the first request and the model's first prediction, and the reply."""
        return self.total_ms - self.setup_ms if self.setup_ms is not None else None


@dataclass
class Warm:
    model: str
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    error_samples: list[str] = field(default_factory=list)


@dataclass
class ServerlessBenchmark:
    """Everything one run measured; ``render_serverless_section`` turns it into markdown."""

    started: datetime
    command: str
    quick: bool
    repeats: int
    warm_requests: int
    idle_s: float
    models: list[str]
    code: str = ""
    build_s: dict[str, float] = field(default_factory=dict)
    up_ready_s: float = 0.0
    up_stop_s: float | None = None
    up_exit_code: int | None = None
    create_s: float = 0.0
    to_zero_s: list[float] = field(default_factory=list)
    cold: list[ColdStart] = field(default_factory=list)
    warm: dict[str, Warm] = field(default_factory=dict)
    setup_metric: dict[str, tuple[float, int]] = field(default_factory=dict)
    imports: dict[str, float] = field(default_factory=dict)
    changed_during_run: list[str] = field(default_factory=list)
    """Files under ``src/mainsail`` that changed while the benchmark ran (the instances started then ran them)."""
    """Median wall time of each ``IMPORTS`` statement in a fresh interpreter, seconds."""
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    import_repeats: int = 0
    """Per model: ``ModelSetupTime`` sum (µs) and count from ``/metrics`` at the end."""
    replies: dict[str, str] = field(default_factory=dict)
    instances: list[InstanceInfo] = field(default_factory=list)
    left_running: int = 0
    wall_s: float = 0.0

    def colds(self, model: str) -> list[ColdStart]:
        return [c for c in self.cold if c.model == model and not c.error]

    @property
    def errors(self) -> int:
        return sum(1 for c in self.cold if c.error) + sum(w.errors for w in self.warm.values())


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# -- the models ----------------------------------------------------------------------------------
def build_tabular_model(path: Path) -> dict[str, Any]:
    """The demo's tabular model (``examples/demo.py``), written to ``path``; returns one request record."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples import demo

    return dict(demo.package_tabular_model(path))


def build_bimodal_model(path: Path) -> dict[str, Any]:
    """The tiny bimodal demo model with its ``model.onnx``; returns one request record."""
    import torch

    from bench.pytorch import _demo
    from mainsail.handlers.pytorch.export import export_onnx

    demo = _demo()
    demo.build_bimodal_model(path, size="tiny", seed=0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_onnx(path)
    finally:
        torch.set_num_threads(before)
    return dict(demo.sample_records(1, seed=123)[0])


# -- the control plane ---------------------------------------------------------------------------
def _client(service: str, url: str) -> Any:
    import boto3
    from botocore.config import Config

    # One attempt per call (a retried failure must show as an error, not a slow call); a cold start
    # may take a while, so the read timeout is long.
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                    read_timeout=150)
    return boto3.client(service, endpoint_url=url, config=config, **BOTO3_KW)


def create_endpoints(sm: Any, model_dirs: dict[str, Path], models: Sequence[str]) -> float:
    """Model, config and serverless endpoint for each model; all created, then all waited for."""
    started = time.monotonic()
    for model in models:
        name = endpoint_name(model)
        sm.create_model(ModelName=f"{name}-model", ExecutionRoleArn="arn:aws:iam::123456789012:role/Bench",
                        PrimaryContainer={"Image": "mainsail", "ModelDataUrl": f"file://{model_dirs[model]}",
                                          "Environment": ENVIRONMENTS[model]})
        sm.create_endpoint_config(EndpointConfigName=f"{name}-config", ProductionVariants=[{
            "VariantName": VARIANT, "ModelName": f"{name}-model", "ServerlessConfig": dict(SERVERLESS_CONFIG)}])
        sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")
    for model in models:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint_name(model),
                                                  WaiterConfig={"Delay": 1, "MaxAttempts": 180})
    return time.monotonic() - started


def instance_count(sm: Any, model: str) -> int:
    described = sm.describe_endpoint(EndpointName=endpoint_name(model))
    return sum(int(pv.get("CurrentInstanceCount") or 0) for pv in described.get("ProductionVariants", []))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def wait_all_zero(sm: Any, models: Sequence[str], pids: Sequence[int], timeout_s: float) -> float:
    """Until every endpoint shows ``CurrentInstanceCount == 0`` and ``pids``' process groups are gone."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if all(instance_count(sm, m) == 0 for m in models) and not any(_group_alive(p) for p in pids):
            return time.monotonic() - started
        time.sleep(0.1)
    raise TimeoutError(f"the endpoints did not scale to zero within {timeout_s:.0f} s")


def setup_metric(url: str) -> dict[str, tuple[float, int]]:
    """``ModelSetupTime`` sum (µs) and count per endpoint name, from ``GET /metrics`` of ``mainsail up``."""
    conn = http.client.HTTPConnection(HOST, int(url.rsplit(":", 1)[1]), timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        values = found.setdefault(labels.get("EndpointName", ""), [0.0, 0.0])
        values[0 if match.group(1) == "sum" else 1] += float(match.group(3))
    return {name: (s, int(c)) for name, (s, c) in found.items()}


def _log_time(line: str) -> tuple[float, int] | None:
    match = _LOG_TIME.match(line)
    if not match:
        return None
    stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")  # local time, as logging writes it
    return stamp.timestamp(), int(match.group(2))


def split_from_log(cold: ColdStart, record: dict[str, Any], sent_at: float) -> None:
    """Fill ``cold``'s timeline from the instance record and the timestamped lines of its log."""
    started = record.get("started")
    if isinstance(started, (int, float)):
        cold.to_spawn_ms = (float(started) - sent_at) * 1e3
    listening = loaded = no_preload = accepting = None
    try:
        lines = Path(str(record.get("log_path"))).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        stamp = _log_time(line)
        if stamp is None:
            continue
        at, pid = stamp
        if "mainsail serving" in line and pid == record.get("pid"):
            listening, loaded, no_preload, accepting = at, None, None, None  # appended to: keep the last start
        elif listening is None:
            continue
        elif _NO_PRELOAD in line and pid == record.get("pid") and no_preload is None:
            no_preload = at
        elif (match := _LOADED.search(line)) and loaded is None:
            loaded = at
            cold.load_ms = float(match.group(2)) * 1e3
            cold.preloaded = pid == record.get("pid")
        elif _ACCEPTING in line and loaded is not None and accepting is None:
            accepting = at
    if listening is None:
        return
    if isinstance(started, (int, float)):
        cold.to_listening_ms = (listening - float(started)) * 1e3
    if no_preload is not None:
        cold.no_preload_ms = (no_preload - listening) * 1e3
    if loaded is None:
        return
    cold.to_loaded_ms = (loaded - listening) * 1e3
    if accepting is None:
        return
    cold.to_accepting_ms = (accepting - loaded) * 1e3
    if cold.setup_ms is not None:
        cold.to_ready_ms = (sent_at + cold.setup_ms / 1e3 - accepting) * 1e3


def invoke(rt: Any, model: str, body: bytes) -> str:
    response = rt.invoke_endpoint(EndpointName=endpoint_name(model), ContentType=JSON, Accept=JSON, Body=body)
    return str(response["Body"].read().decode(errors="replace"))


def time_warm(rt: Any, model: str, body: bytes, requests: int, warmup: int = 5) -> Warm:
    latencies: list[float] = []
    errors = 0
    samples: list[str] = []
    for i in range(warmup + requests):
        t0 = time.perf_counter()
        try:
            invoke(rt, model, body)
        except Exception as exc:  # any failure counts; keep a few to show
            errors += 1
            if len(samples) < 5:
                samples.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        if i >= warmup:
            latencies.append((time.perf_counter() - t0) * 1e3)
    latencies.sort()
    return Warm(model, len(latencies), errors, percentile(latencies, 50), percentile(latencies, 99),
                latencies[-1] if latencies else 0.0, samples)


def time_imports(models: Sequence[str], repeats: int) -> dict[str, float]:
    """Median wall time of each relevant ``IMPORTS`` statement in a fresh interpreter (interleaved)."""
    chosen = [(label, stmt) for label, stmt, which in IMPORTS if not which or set(which) & set(models)]
    times: dict[str, list[float]] = {label: [] for label, _ in chosen}
    for _ in range(repeats):
        for label, stmt in chosen:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", stmt], cwd=ROOT, env=server_env(), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in times.items()}


def _group_cpu_s(pgid: int | None) -> float:
    return sum(process_cpu_s(pid) for pid in group_pids(pgid)) if pgid else 0.0


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def _idle_env(idle_s: float) -> Iterator[None]:
    """``MAINSAIL_SERVERLESS_IDLE_SECONDS`` for the ``mainsail up`` started inside (it copies os.environ)."""
    name = "MAINSAIL_SERVERLESS_IDLE_SECONDS"
    before = os.environ.get(name)
    os.environ[name] = f"{idle_s:g}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


# -- the run ---------------------------------------------------------------------------------------
def run_serverless_benchmark(*, repeats: int | None = None, warm_requests: int | None = None, quick: bool = False,
                             models: Sequence[str] | None = None, idle_s: float = DEFAULT_IDLE_S,
                             import_repeats: int | None = None,
                             command: str = "python -m bench serverless",
                             log: Callable[[str], None] = print) -> ServerlessBenchmark:
    """Build the models, start ``mainsail up``, create the serverless endpoints, then time cold starts.

    Bounded: about ``repeats * len(models) * (cold start + idle_s + 1 s)`` plus the models' builds
    (a few seconds for the tiny BERT and its ONNX export), ``mainsail up``'s start and the endpoints'.
    """
    repeats = repeats if repeats is not None else (2 if quick else 5)
    warm_requests = warm_requests if warm_requests is not None else (20 if quick else 200)
    models = list(models if models is not None else (QUICK_MODELS if quick else MODELS))
    import_repeats = import_repeats if import_repeats is not None else (1 if quick else 2)
    if repeats < 1 or warm_requests < 1 or idle_s <= 0 or not models or set(models) - set(MODELS):
        raise ValueError(f"repeats and warm_requests must be >= 1, idle_s > 0, models among {MODELS}")
    bench = ServerlessBenchmark(started=datetime.now(UTC), command=command, quick=quick, repeats=repeats,
                                warm_requests=warm_requests, idle_s=idle_s, models=models)
    t_start = time.monotonic()
    bench.code = code_state()
    mtimes = source_mtimes()
    bench.load_average = os.getloadavg()
    bench.import_repeats = import_repeats
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-serverless-"))
    home = tmp / "home"
    up: Server | None = None
    try:
        model_dirs: dict[str, Path] = {}
        bodies: dict[str, bytes] = {}
        if TABULAR in models:
            log("building the tabular demo model (mainsail.package)")
            started = time.monotonic()
            bodies[TABULAR] = json.dumps(build_tabular_model(tmp / "tabular")).encode()
            model_dirs[TABULAR] = tmp / "tabular"
            bench.build_s[TABULAR] = time.monotonic() - started
        if ONNX in models or PYTORCH in models:
            log("training the tiny bimodal demo model and exporting model.onnx")
            started = time.monotonic()
            record = json.dumps(build_bimodal_model(tmp / "bimodal")).encode()
            bench.build_s["bimodal"] = time.monotonic() - started
            for model in (ONNX, PYTORCH):
                bodies[model], model_dirs[model] = record, tmp / "bimodal"
        if import_repeats > 0:
            log(f"timing imports in fresh interpreters ({import_repeats}x each)")
            bench.imports = time_imports(models, import_repeats)
        log(f"starting mainsail up (MAINSAIL_SERVERLESS_IDLE_SECONDS={idle_s:g})")
        with _idle_env(idle_s):
            up = start_up(home, tmp / "up.log")
        bench.up_ready_s = up.ready_s
        sm, rt = _client("sagemaker", up.url), _client("sagemaker-runtime", up.url)
        log(f"  ready after {up.ready_s:.1f} s; creating {len(models)} serverless endpoints with boto3")
        bench.create_s = create_endpoints(sm, model_dirs, models)
        log(f"  all InService after {bench.create_s:.1f} s")
        last_pids: list[int] = []
        for round_ in range(1, repeats + 1):
            order = models if round_ % 2 else models[::-1]
            for model in order:
                bench.to_zero_s.append(wait_all_zero(sm, models, last_pids, timeout_s=idle_s + 60))
                before = setup_metric(up.url).get(endpoint_name(model), (0.0, 0))
                cold = ColdStart(model, round_, 0.0, None)
                up_cpu, own_cpu, busy = _group_cpu_s(up.process.pid), time.process_time(), machine_busy_s()
                children_cpu = _children_cpu_s()
                sent_at, t0 = time.time(), time.perf_counter()
                try:
                    reply = invoke(rt, model, bodies[model])
                    bench.replies.setdefault(model, reply)
                except Exception as exc:
                    cold.error = f"{type(exc).__name__}: {exc}"[:300]
                    with contextlib.suppress(Exception):
                        reason = sm.describe_endpoint(EndpointName=endpoint_name(model)).get("FailureReason")
                        cold.error += f" (FailureReason: {reason})" if reason else ""
                    log(f"  mainsail up log:\n{up.log_tail(1500)}")
                cold.total_ms = (time.perf_counter() - t0) * 1e3
                instance = instance_record(home, endpoint_name(model))
                if instance is not None:
                    cold.instance_cpu_s = _group_cpu_s(int(instance["pid"]))
                    ours = (cold.instance_cpu_s + _group_cpu_s(up.process.pid) - up_cpu
                            + time.process_time() - own_cpu + _children_cpu_s() - children_cpu)
                    wall = time.perf_counter() - t0
                    cold.other_cores = max(0.0, machine_busy_s() - busy - ours) / wall
                after = setup_metric(up.url).get(endpoint_name(model), (0.0, 0))
                if after[1] == before[1] + 1:
                    cold.setup_ms = (after[0] - before[0]) / 1e3
                elif not cold.error:
                    cold.error = f"not a cold start: ModelSetupTime count went {before[1]} → {after[1]}"
                if instance is not None:
                    cold.pid = int(instance["pid"])
                    bench.instances.append(InstanceInfo(VARIANT, int(instance["port"]), cold.pid, "state.db"))
                    split_from_log(cold, instance, sent_at)
                bench.cold.append(cold)
                parts = (f"setup {cold.setup_ms:.0f} ms" if cold.setup_ms is not None else "setup –") + (
                    f", model load {cold.load_ms:.0f} ms" if cold.load_ms is not None else "")
                log(f"round {round_}/{repeats}: {model}: cold start {cold.total_ms:.0f} ms ({parts})"
                    + (f" FAILED: {cold.error}" if cold.error else ""))
                if round_ == repeats and not cold.error:
                    bench.warm[model] = warm = time_warm(rt, model, bodies[model], warm_requests)
                    log(f"  warm: {warm.requests} requests, p50 {warm.p50_ms:.2f} ms, p99 {warm.p99_ms:.2f} ms"
                        + (f", {warm.errors} errors, e.g. {warm.error_samples[:2]}" if warm.errors else ""))
                last_pids = [cold.pid] if cold.pid else []
        metric = setup_metric(up.url)
        bench.setup_metric = {m: metric.get(endpoint_name(m), (0.0, 0)) for m in models}
    finally:
        try:
            if up is not None:
                log("stopping mainsail up (SIGTERM; it stops its instances)")
                stop(up, grace_s=30.0)
                bench.up_stop_s, bench.up_exit_code = up.stop_s, up.exit_code
        finally:
            seen: set[int] = set()
            for info in bench.instances:
                if info.pid is not None and info.pid not in seen:
                    seen.add(info.pid)
                    make_sure_stopped(info)
            bench.left_running = sum(1 for i in bench.instances if i.left_running)
            shutil.rmtree(tmp, ignore_errors=True)
            bench.changed_during_run = sorted(f for f, m in source_mtimes().items() if mtimes.get(f) != m)
            bench.wall_s = time.monotonic() - t_start
    return bench


# -- the report ------------------------------------------------------------------------------------
def _ms(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def results_table(bench: ServerlessBenchmark) -> str:
    rows = ["| model | cold starts | cold p50 ms | cold max ms | `ModelSetupTime` mean ms (sum / count) | "
            "warm requests | warm p50 ms | warm p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model in bench.models:
        colds = sorted(c.total_ms for c in bench.colds(model))
        total, count = bench.setup_metric.get(model, (0.0, 0))
        mean = f"{total / count / 1e3:,.0f} ({total / 1e3:,.0f} / {count})" if count else "–"
        warm = bench.warm.get(model)
        errors = sum(1 for c in bench.cold if c.model == model and c.error) + (warm.errors if warm else 0)
        rows.append(f"| {MODEL_LABELS[model]} | {len(colds)} | {_ms(percentile(colds, 50) if colds else None)} | "
                    f"{_ms(colds[-1] if colds else None)} | {mean} | {warm.requests if warm else 0} | "
                    f"{_ms(warm.p50_ms if warm else None, 2)} | {_ms(warm.p99_ms if warm else None, 2)} | {errors} |")
    return "\n".join(rows)


SPLIT_COLUMNS = (
    ("request → instance process started", "to_spawn_ms"),
    ("process started → supervisor listening", "to_listening_ms"),
    ("supervisor listening → model loaded", "to_loaded_ms"),
    ("of which the supervisor's imports before it declines preload", "no_preload_ms"),
    ("of which `load()`", "load_ms"),
    ("model loaded → worker accepting", "to_accepting_ms"),
    ("worker accepting → router sees it ready", "to_ready_ms"),
    ("first request after setup", "request_ms"),
)


def split_table(bench: ServerlessBenchmark) -> str:
    """Where a cold start's time goes: medians over the cold starts of each model (columns no run filled dropped)."""
    columns = [(label, attr) for label, attr in SPLIT_COLUMNS
               if any(getattr(c, attr) is not None for c in bench.cold if not c.error)]
    rows = ["| model | cold start ms | `ModelSetupTime` ms | " + " | ".join(f"{label} ms" for label, _ in columns)
            + " | instance CPU s | other load, cores |", "|---|" + "---:|" * (4 + len(columns))]
    for model in bench.models:
        colds = bench.colds(model)
        if not colds:
            continue
        cells = [_ms(_median([getattr(c, attr) for c in colds])) for _, attr in columns]
        cpu, other = _median([c.instance_cpu_s for c in colds]), _median([c.other_cores for c in colds])
        rows.append(f"| {MODEL_LABELS[model]} | {_ms(_median([c.total_ms for c in colds]))} | "
                    f"{_ms(_median([c.setup_ms for c in colds]))} | " + " | ".join(cells)
                    + f" | {_ms(cpu, 2)} | {_ms(other, 2)} |")
    return "\n".join(rows)


def cold_starts_table(bench: ServerlessBenchmark) -> str:
    rows = ["| round | model | cold start ms | `ModelSetupTime` ms | to spawn | to listening | to loaded | "
            "no-preload imports | `load()` | preloaded | to accepting | to ready | first request | instance CPU s | "
            "other load, cores | error |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for c in sorted(bench.cold, key=lambda c: (c.round, bench.models.index(c.model))):
        cpu = "–" if c.instance_cpu_s is None else f"{c.instance_cpu_s:.2f}"
        other = "–" if c.other_cores is None else f"{c.other_cores:.2f}"
        rows.append(f"| {c.round} | {c.model} | {c.total_ms:,.0f} | {_ms(c.setup_ms)} | {_ms(c.to_spawn_ms)} | "
                    f"{_ms(c.to_listening_ms)} | {_ms(c.to_loaded_ms)} | {_ms(c.no_preload_ms)} | {_ms(c.load_ms)} | "
                    f"{'–' if c.preloaded is None else 'yes' if c.preloaded else 'no'} | {_ms(c.to_accepting_ms)} | "
                    f"{_ms(c.to_ready_ms)} | {_ms(c.request_ms)} | {cpu} | {other} | {c.error or ''} |")
    return "\n".join(rows)


def imports_table(bench: ServerlessBenchmark) -> str:
    if not bench.imports:
        return ""
    rows = ["| fresh interpreter, `python -c ...` | wall ms |", "|---|---:|"]
    statements = {label: stmt for label, stmt, _ in IMPORTS}
    for label, seconds in bench.imports.items():
        rows.append(f"| {label}: `{statements[label]}` | {seconds * 1e3:,.0f} |")
    return "\n".join(rows)


def where_text(bench: ServerlessBenchmark) -> str:
    """One line per model: the biggest parts of its median cold start."""
    lines = []
    for model in bench.models:
        colds = bench.colds(model)
        total = _median([c.total_ms for c in colds])
        listening = _median([c.to_listening_ms for c in colds])
        loaded = _median([c.to_loaded_ms for c in colds])
        load = _median([c.load_ms for c in colds])
        if total is None or listening is None or loaded is None or load is None:
            continue
        no_preload = _median([c.no_preload_ms for c in colds])
        preloaded = all(c.preloaded for c in colds)
        rest = total - listening - loaded
        if preloaded:
            how = (f"{loaded - load:,.0f} ms importing the handler's libraries in the supervisor and "
                   f"{load:,.0f} ms in its `load()` (preload: the worker is then forked with the model)")
        elif no_preload is not None:
            how = (f"{no_preload:,.0f} ms in which the supervisor imports the handler only to decline preload, "
                   f"then {loaded - no_preload - load:,.0f} ms for a spawned worker to import it all again and "
                   f"{load:,.0f} ms in its `load()`")
        else:
            how = (f"{loaded - load:,.0f} ms for the worker, spawned as a second interpreter, to import the serve "
                   f"stack again and the handler's libraries, and {load:,.0f} ms in its `load()`")
        if model == TABULAR:
            how += " (which itself imports xgboost)"
        lines.append(f"* **{model}** ({total:,.0f} ms at p50): {listening:,.0f} ms until the instance's supervisor "
                     f"listens (a fresh interpreter importing `mainsail serve`'s stack); {how}; {rest:,.0f} ms "
                     f"for the rest (control plane start and ready checks, worker accepting, the first request).")
    return "\n".join(lines)


def imports_text(bench: ServerlessBenchmark) -> str:
    if not bench.imports:
        return ""
    runs = f"{bench.import_repeats} run{'s' if bench.import_repeats != 1 else ''}"
    return (f"The same imports timed alone, each in a fresh interpreter before `mainsail up` started (median of "
            f"{runs}). The tabular handler imports xgboost inside `load()`, so for it that import lands in the "
            f"`load()` column above; the PyTorch handler's package imports torch and transformers at module level, "
            f"so even the ONNX endpoint's worker pays for them before `load()`.\n\n{imports_table(bench)}\n")


def render_serverless_section(bench: ServerlessBenchmark) -> str:
    quick = ("\n> **Quick smoke run**: too few cold starts to read the numbers; it only shows the harness "
             "works.\n" if bench.quick else "")
    if bench.changed_during_run:
        quick += ("\n> **The code changed during this run** (" + ", ".join(f"`{f}`" for f in bench.changed_during_run)
                  + "): instances started after the change ran the new code, so rounds may not compare.\n")
    stopped = (f"stopped on SIGTERM in {bench.up_stop_s:.1f} s (exit code {bench.up_exit_code})"
               if bench.up_stop_s is not None else
               f"did not stop within the grace period and was killed (exit code {bench.up_exit_code})")
    left = (f" {bench.left_running} instance(s) outlived it and were killed by the benchmark."
            if bench.left_running else " No instance outlived it.")
    builds = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in bench.build_s.items())
    others = [c.other_cores for c in bench.cold if c.other_cores is not None]
    worst_other = max(others, default=0.0)
    noise = (f"{statistics.median(others):.2f} cores at the median, {worst_other:.2f} at most" if others
             else "an unknown share of the cores")
    to_zero = (f"{statistics.median(bench.to_zero_s):.1f} s at the median, {max(bench.to_zero_s):.1f} s at most"
               if bench.to_zero_s else "–")
    return f"""
## Serverless endpoints: cold starts after scale-to-zero

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all).
{quick}
* **Machine**: {machine_summary()}.
* **Code**: {bench.code}.
* **Versions**: {versions(VERSIONS)}.
* **Shared cores**: `mainsail up`, the instance it starts and the boto3 client all run on this
  machine's {os.cpu_count()} cores, shared with whatever else runs there: the 1-minute load average was
  {bench.load_average[0]:.1f} when the run began, and other processes used {noise} during the cold starts
  (last columns below){": cold starts are CPU-bound (imports, model load), so treat these numbers with care"
  if worst_other >= 0.25 else ""}. The instance's CPU time during a cold start is in the per-cold-start
  table: close to the cold start's wall time means it was CPU-bound.

### Results

Cold start: the end-to-end latency of the first `invoke_endpoint` (boto3, plus reading the body) after
the endpoint scaled to zero, {bench.repeats} per model (p50 is the nearest-rank median, max the worst).
`ModelSetupTime` is `mainsail up`'s histogram (`GET /metrics`, microseconds; shown as sum ÷ count in ms):
the router's wait from the request finding no instance to an instance ready. Warm: {bench.warm_requests}
`invoke_endpoint` calls one after another (concurrency 1) on the instance the last cold start started,
after 5 discarded.

{results_table(bench)}

For context: SageMaker's own serverless inference documents cold starts too; AWS docs say cold starts
can take several seconds (they depend on the model's size and its container's start-up).

### Where the time goes

Medians over each model's cold starts. The request is sent at a wall-clock time; the instance's record in
`<home>/state.db` says when the control plane started its process; the instance's log lines are
timestamped (milliseconds). Its supervisor logs `mainsail serving ...` once it listens (answering 503
until a worker is ready); then it either loads the model itself and forks the worker from it
(preload: the tabular handler, and the PyTorch handler serving `model.pth`), or, where that is unsafe
(an ONNX Runtime session does not survive fork), logs `not preloading the model ...` and spawns a
worker that imports and loads on its own. `model loaded by the ... handler in X s` ends the load (X, the
handler's `load()` alone, has its own column), and the worker's uvicorn `Application startup complete`
marks it accepting. "Router sees it ready" runs from there to the end of this cold start's
`ModelSetupTime`: the reconciler's `/ping` check (every 0.2 s, and on the router's wake-up) and the
router's next look at the table (every 20 ms). "First request after setup" is the end-to-end time minus
`ModelSetupTime`: boto3, the hop, the first prediction in a fresh process and the reply. "Instance CPU"
is the CPU time all the instance's processes had used when the reply arrived: steadier than the wall
times on a shared machine, it is the cold start's own cost; "other load" is the CPU the rest of the
machine used meanwhile, in cores.

{split_table(bench)}

{where_text(bench)}

{imports_text(bench)}

### Method

* **Models**: *tabular* is `examples/demo.py`'s model: an XGBoost classifier (50 trees, depth 4) on four
  columns (two with risk tables, one imputed), isotonic calibration, written by
  `mainsail.package.fit_and_package`; request: one JSON record. *bimodal* is `examples/bimodal_demo.py`'s
  tiny `bimodal_bert` (random-init BERT, hidden 64, 2 layers; `max_sen_len` 32) trained for a few steps,
  with `model.onnx` exported by `mainsail.handlers.pytorch.export.export_onnx`; the same directory
  backs two endpoints, with `MAINSAIL_USE_ONNX=true` (ONNX Runtime, 1 intra-op thread) or `false`
  (PyTorch) in the container's `Environment`; request: one JSON record (dialogue + tabular fields).
  Builds: {builds or "–"}.
* **Control plane**: `mainsail up --log-level warning` with `MAINSAIL_SERVERLESS_IDLE_SECONDS={bench.idle_s:g}`
  in its environment (and `OMP_NUM_THREADS=1` for its instances), ready {bench.up_ready_s:.1f} s after start;
  it {stopped} at the end.{left}
* **Endpoints**: created with boto3 (`sagemaker` client, dummy credentials): CreateModel with
  `ModelDataUrl=file://<model dir>`, CreateEndpointConfig with one `{VARIANT}` variant and
  `ServerlessConfig: {json.dumps(SERVERLESS_CONFIG)}`, CreateEndpoint, then the `endpoint_in_service`
  waiter for all ({bench.create_s:.1f} s; creation starts one instance to check the model loads).
  Each instance is the `mainsail serve --workers 1` subprocess the local backend starts, at its default
  log level.
* **Cold starts**: before each one, `DescribeEndpoint` is polled (every 0.1 s) until every endpoint shows
  `CurrentInstanceCount == 0` and the processes of the instance that served last are gone ({to_zero});
  then one `sagemaker-runtime` `invoke_endpoint` (retries off), timed around the call and `Body.read()`.
  Rounds alternate the order of the models. A cold start counts only if `ModelSetupTime`'s count for
  its endpoint went up by exactly one.

### Per cold start (serverless)

{cold_starts_table(bench)}
"""
