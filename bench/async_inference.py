"""Asynchronous inference: throughput and latency of ``InvokeEndpointAsync`` on ``mainsail up``.

``python -m bench async`` starts one ``mainsail up`` (``--log-level warning``, its own S3 on the same
port), builds the tabular demo model (``examples/demo.py`` ``package_tabular_model``: XGBoost with risk
tables, imputation and calibration, served by the built-in tabular handler) and uploads ``requests``
one-record CSV inputs to mainsail's S3 with boto3. Then, for each cell (instances x
``MaxConcurrentInvocationsPerInstance``), it creates an async endpoint and:

* **async**: submits one ``invoke_endpoint_async`` per input from ``threads`` client threads, as fast
  as they go. Each call's own latency is the **submit** latency (the 202 with the ``OutputLocation``).
  A watcher thread lists the store's sidecar directory of the cell's output bucket every 5 ms (the
  sidecar's rename is the commit point of an object of mainsail's S3: it exists from then on), so the
  **end-to-end** latency of a request runs from the start of its submit call to the first listing
  that shows its output (or its failure) object; the **completion throughput** is the requests over
  the time from the first submit to the last output. Requests with no output within the deadline
  count as failures, as do those that wrote to the failure location;
* **real-time**: the same number of ``invoke_endpoint`` calls on the same endpoint with the same
  bodies, from as many threads as the queue runs at once (instances x per-instance concurrency):
  the same work without the queue, S3 reads and writes.

Last, one **large** request on the first endpoint: a ~``large_mb`` MiB CSV (distinct rows repeated),
uploaded with boto3 (multipart), sent through the queue (streamed from the store to the instance, the
answer streamed back to the output bucket) and timed from submit to its output object.

Nothing is left running: each cell's endpoint is deleted before the next one is created, and
``mainsail up`` is stopped with SIGTERM at the end (it stops its instances); the first instance of
every endpoint is killed if anything of it is left.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.control import (
    InstanceInfo,
    boto3_client,
    code_state,
    instance_from_state,
    make_sure_stopped,
    start_up,
)
from bench.loadgen import percentile
from bench.procs import stop
from bench.report import machine_summary, versions
from bench.serve import HOST
from bench.serverless import build_tabular_model
from mainsail.jobs.async_inference import DEFAULT_CONCURRENCY as DEFAULT_PER_INSTANCE
from mainsail.jobs.async_inference import AsyncInference

CSV = "text/csv"
MB = 1024 * 1024
INPUTS = "bench-async-in"
ROLE = "arn:aws:iam::123456789012:role/Bench"
MODEL = "bench-async-model"
WATCH_INTERVAL_S = 0.005
#: how often the async worker of ``mainsail up`` passes over its queue when nothing is submitted
POLL_S = float(inspect.signature(AsyncInference).parameters["poll"].default)
VERSIONS = ("mainsail", "boto3", "botocore", "xgboost", "numpy", "pandas", "starlette", "uvicorn")


@dataclass
class Latencies:
    """One kind of call's latencies (ms) and how many failed, over ``span_s`` seconds."""

    ms: list[float] = field(default_factory=list)
    failed: int = 0
    span_s: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.ms) + self.failed

    @property
    def p50_ms(self) -> float:
        return percentile(sorted(self.ms), 50)

    @property
    def p99_ms(self) -> float:
        return percentile(sorted(self.ms), 99)

    @property
    def rps(self) -> float:
        return len(self.ms) / self.span_s if self.span_s > 0 else 0.0


@dataclass
class Cell:
    instances: int
    per_instance: int | None
    """``MaxConcurrentInvocationsPerInstance`` (``None``: left unset, mainsail's default)."""
    endpoint_s: float = 0.0
    submit: Latencies = field(default_factory=Latencies)
    end_to_end: Latencies = field(default_factory=Latencies)
    realtime: Latencies = field(default_factory=Latencies)
    load_average: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def concurrency(self) -> int:
        return self.instances * (self.per_instance or DEFAULT_PER_INSTANCE)

    @property
    def label(self) -> str:
        per = f"{self.per_instance}" if self.per_instance else f"default ({DEFAULT_PER_INSTANCE})"
        return f"{self.instances} instance{'s' if self.instances > 1 else ''}, {per} per instance"


@dataclass
class LargeRun:
    mb: float
    rows: int
    upload_s: float = 0.0
    end_to_end_s: float = 0.0
    output_mb: float = 0.0
    failure: str | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.end_to_end_s if self.end_to_end_s > 0 else 0.0


@dataclass
class AsyncBenchmark:
    command: str
    requests: int
    threads: int
    quick: bool
    cells: list[Cell] = field(default_factory=list)
    large: LargeRun | None = None
    pids: list[int] = field(default_factory=list)
    """``mainsail up``'s pid and each endpoint's first instance pid (each leads its process group)."""
    left_running: int = 0
    """Instances still alive after ``mainsail up`` stopped (then killed by the benchmark)."""
    up_exit_code: int | None = None
    wall_s: float = 0.0
    started: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))

    @property
    def errors(self) -> int:
        large = 1 if self.large is not None and self.large.failure else 0
        return large + sum(c.end_to_end.failed + c.submit.failed + c.realtime.failed for c in self.cells)


# -- inputs ---------------------------------------------------------------------------------------


def record_line(record: dict[str, Any], index: int = 0) -> bytes:
    """The demo record as one CSV line in ``feature_columns.txt``'s order, its amount moved by ``index``."""
    amount = float(record["amount"]) + index % 1000
    return f"{amount:.1f},{record['age_days']},{record['payment']},{record['region']}\n".encode()


def write_large_csv(path: Path, mb: float) -> int:
    """About ``mb`` MiB of distinct demo-like rows (a 1,000-row block repeated); returns the rows."""
    payments, regions = ("card", "wire", "cash", "voucher"), ("NA", "EU", "FE")
    block = b"".join(f"{(i * 37) % 900 + 0.5:.1f},{(i * 53) % 3650},{payments[i % 4]},{regions[i % 3]}\n".encode()
                     for i in range(1000))
    repeats = max(1, int(mb * MB / len(block)))
    with path.open("wb") as fh:
        for _ in range(repeats):
            fh.write(block)
    return repeats * 1000


def upload_inputs(s3: Any, record: dict[str, Any], count: int, threads: int) -> list[str]:
    """``count`` one-record CSV objects in the inputs bucket; their keys."""
    keys = [f"small/{i:06d}.csv" for i in range(count)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=INPUTS, Key=keys[i], Body=record_line(record, i)),
                      range(count)))
    return keys


# -- the endpoint ---------------------------------------------------------------------------------


def cell_bucket(cell: Cell) -> str:
    return f"bench-async-{cell.instances}x{cell.per_instance or 'default'}"


def create_async_endpoint(sm: Any, cell: Cell) -> str:
    """An async endpoint for ``cell`` writing results to ``s3://<bucket>/out/`` and failures to
    ``s3://<bucket>/fail/``; waits until InService and returns its name."""
    name = cell_bucket(cell)
    client = {"MaxConcurrentInvocationsPerInstance": cell.per_instance} if cell.per_instance else {}
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": MODEL,
                             "InitialInstanceCount": cell.instances, "InstanceType": "ml.m5.large"}],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": f"s3://{name}/out/",
                                               "S3FailurePath": f"s3://{name}/fail/"},
                              "ClientConfig": client})
    started = time.monotonic()
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    cell.endpoint_s = time.monotonic() - started
    return name


def delete_endpoint(sm: Any, name: str, timeout_s: float = 60.0) -> None:
    """DeleteEndpoint, then wait until DescribeEndpoint no longer finds it (its instances stopped)."""
    from botocore.exceptions import ClientError

    sm.delete_endpoint(EndpointName=name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            sm.describe_endpoint(EndpointName=name)
        except ClientError:
            return
        time.sleep(0.2)


# -- measuring ------------------------------------------------------------------------------------


class OutputWatcher:
    """Sees objects appear in one bucket of mainsail's own S3 store by listing its sidecar directory
    (``<home>/s3/buckets/<bucket>/meta/``, one ``<sha256(key)>.json`` per committed object)."""

    def __init__(self, home: Path, bucket: str) -> None:
        from mainsail.aws.s3.files import key_digest

        self._digest = key_digest
        self.meta = home / "s3" / "buckets" / bucket / "meta"
        self._wanted: dict[str, tuple[int, bool]] = {}  # sidecar name -> (request, is_failure)
        self._lock = threading.Lock()
        self.seen: dict[int, tuple[float, bool]] = {}  # request -> (perf_counter, failed)

    def expect(self, index: int, output_key: str, failure_key: str) -> None:
        with self._lock:
            self._wanted[self._digest(output_key) + ".json"] = (index, False)
            self._wanted[self._digest(failure_key) + ".json"] = (index, True)

    def poll(self) -> None:
        try:
            names = os.listdir(self.meta)
        except FileNotFoundError:
            return
        now = time.perf_counter()
        with self._lock:
            for name in names:
                found = self._wanted.pop(name, None)
                if found is not None and found[0] not in self.seen:
                    self.seen[found[0]] = (now, found[1])

    def wait(self, count: int, deadline: float, stop_event: threading.Event | None = None) -> None:
        """Poll every 5 ms until ``count`` requests are seen, ``deadline`` (monotonic) passes, or
        ``stop_event`` is set."""
        while len(self.seen) < count and time.monotonic() < deadline:
            if stop_event is not None and stop_event.is_set():
                return
            self.poll()
            time.sleep(WATCH_INTERVAL_S)


def _key(location: str) -> tuple[str, str]:
    bucket, _, key = location.removeprefix("s3://").partition("/")
    return bucket, key


def run_async_cell(url: str, home: Path, cell: Cell, endpoint: str, keys: Sequence[str], threads: int,
                   deadline_s: float) -> dict[int, str]:
    """Submit one InvokeEndpointAsync per input key and wait for every output; fills ``cell``'s
    submit and end-to-end latencies. Returns each request's OutputLocation."""
    watcher = OutputWatcher(home, cell_bucket(cell))
    started: dict[int, float] = {}
    outputs: dict[int, str] = {}
    lock = threading.Lock()
    counter = iter(range(len(keys)))
    done = threading.Event()

    def submitter() -> None:
        rt = boto3_client("sagemaker-runtime", url)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            began = time.perf_counter()
            try:
                answer = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=f"s3://{INPUTS}/{keys[index]}",
                                                  ContentType=CSV, Accept=CSV, InferenceId=f"r{index:06d}")
            except Exception as exc:  # counted, and the run goes on
                with lock:
                    cell.submit.failed += 1
                    cell.failures.append(f"submit {index}: {type(exc).__name__}: {exc}")
                continue
            ended = time.perf_counter()
            with lock:
                started[index] = began
                outputs[index] = answer["OutputLocation"]
                cell.submit.ms.append((ended - began) * 1e3)
            watcher.expect(index, _key(answer["OutputLocation"])[1], _key(answer["FailureLocation"])[1])

    watching = threading.Thread(target=watcher.wait, args=(len(keys), time.monotonic() + 3600, done), daemon=True)
    watching.start()
    first = time.perf_counter()
    pool = [threading.Thread(target=submitter) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    cell.submit.span_s = time.perf_counter() - first
    watcher.wait(len(started), time.monotonic() + deadline_s)
    done.set()
    watching.join()
    last = first
    for index, began in started.items():
        if index not in watcher.seen:
            cell.end_to_end.failed += 1
            cell.failures.append(f"request {index}: no output within {deadline_s:.0f} s")
            continue
        at, failed = watcher.seen[index]
        last = max(last, at)
        if failed:
            cell.end_to_end.failed += 1
            cell.failures.append(f"request {index}: wrote to its failure location")
        else:
            cell.end_to_end.ms.append((at - began) * 1e3)
    cell.end_to_end.span_s = last - first
    return outputs


def run_realtime_cell(url: str, endpoint: str, bodies: Sequence[bytes], concurrency: int) -> Latencies:
    """``invoke_endpoint`` once per body from ``concurrency`` threads (a boto3 client each)."""
    local = threading.local()
    result = Latencies()
    lock = threading.Lock()

    def call(body: bytes) -> None:
        if not hasattr(local, "rt"):
            local.rt = boto3_client("sagemaker-runtime", url)
        began = time.perf_counter()
        try:
            local.rt.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType=CSV, Accept=CSV)["Body"].read()
        except Exception:
            with lock:
                result.failed += 1
            return
        elapsed = (time.perf_counter() - began) * 1e3
        with lock:
            result.ms.append(elapsed)

    first = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, bodies))
    result.span_s = time.perf_counter() - first
    return result


def run_large(url: str, home: Path, s3: Any, cell: Cell, endpoint: str, tmp: Path, mb: float,
              deadline_s: float) -> LargeRun:
    """One ~``mb`` MB CSV through the queue: upload, submit, wait for the output object."""
    from boto3.s3.transfer import TransferConfig

    data = tmp / "large.csv"
    rows = write_large_csv(data, mb)
    run = LargeRun(mb=data.stat().st_size / 1e6, rows=rows)
    began = time.perf_counter()
    s3.upload_file(str(data), INPUTS, "large/input.csv",
                   Config=TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=16 * MB))
    run.upload_s = time.perf_counter() - began
    data.unlink()
    rt = boto3_client("sagemaker-runtime", url)
    watcher = OutputWatcher(home, cell_bucket(cell))
    began = time.perf_counter()
    answer = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=f"s3://{INPUTS}/large/input.csv",
                                      ContentType=CSV, Accept=CSV, InferenceId="large",
                                      InvocationTimeoutSeconds=int(deadline_s))
    watcher.expect(0, _key(answer["OutputLocation"])[1], _key(answer["FailureLocation"])[1])
    watcher.wait(1, time.monotonic() + deadline_s)
    if 0 not in watcher.seen:
        run.failure = f"no output within {deadline_s:.0f} s"
        return run
    at, failed = watcher.seen[0]
    run.end_to_end_s = at - began
    bucket, key = _key(answer["FailureLocation"] if failed else answer["OutputLocation"])
    if failed:
        run.failure = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()[:500]
        return run
    run.output_mb = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"]) / 1e6
    lines = sum(chunk.count(b"\n") for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MB))
    if lines != rows:
        run.failure = f"{lines} answer lines for {rows} rows"
    return run


def _check_answers(s3: Any, cell: Cell, outputs: dict[int, str]) -> None:
    """The first and last outputs hold one CSV answer line each (a score, as the handler writes it)."""
    for index in sorted(outputs)[:1] + sorted(outputs)[-1:]:
        bucket, key = _key(outputs[index])
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            body = f"{type(exc).__name__}: {exc}".encode()
        if body.count(b"\n") != 1 or not body[:1].isdigit():
            cell.failures.append(f"request {index}: unexpected answer {body[:200]!r}")
            cell.end_to_end.failed += 1


def run_async_benchmark(*, requests: int = 500, instances: Sequence[int] = (1, 2),
                        per_instance: Sequence[int | None] = (None, 16), threads: int = 4, large_mb: float = 100.0,
                        quick: bool = False, deadline_s: float = 180.0, command: str = "",
                        log: Callable[[str], None] = print) -> AsyncBenchmark:
    bench = AsyncBenchmark(command=command, requests=requests, threads=threads, quick=quick)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mainsail-bench-async-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        home.mkdir()
        log("building the tabular demo model")
        record = build_tabular_model(tmp / "model")
        up = start_up(home, tmp / "up.log")
        seen: list[InstanceInfo | None] = []
        try:
            url = f"http://{HOST}:{up.port}"
            s3, sm = boto3_client("s3", url), boto3_client("sagemaker", url)
            s3.create_bucket(Bucket=INPUTS)
            keys = upload_inputs(s3, record, requests, threads)
            bodies = [record_line(record, i) for i in range(requests)]
            sm.create_model(ModelName=MODEL, ExecutionRoleArn=ROLE,
                            PrimaryContainer={"Image": "mainsail", "ModelDataUrl": f"file://{tmp / 'model'}"})
            for count in instances:
                for per in per_instance:
                    cell = Cell(count, per)
                    bench.cells.append(cell)
                    s3.create_bucket(Bucket=cell_bucket(cell))
                    endpoint = create_async_endpoint(sm, cell)
                    seen.append(instance_from_state(home, endpoint))
                    run_realtime_cell(url, endpoint, bodies[:8], 2)  # warm-up: first predictions
                    cell.load_average = os.getloadavg()[0]
                    outputs = run_async_cell(url, home, cell, endpoint, keys, threads, deadline_s)
                    _check_answers(s3, cell, outputs)
                    cell.realtime = run_realtime_cell(url, endpoint, bodies, cell.concurrency)
                    log(f"{cell.label}: async {cell.end_to_end.rps:.1f} req/s (e2e p50 "
                        f"{cell.end_to_end.p50_ms:.0f} ms), real-time {cell.realtime.rps:.1f} req/s, "
                        f"{cell.end_to_end.failed + cell.submit.failed} failed")
                    if large_mb > 0 and bench.large is None:
                        log(f"large payload: ~{large_mb:g} MB CSV")
                        bench.large = run_large(url, home, s3, cell, endpoint, tmp, large_mb, max(deadline_s, 600))
                        log(f"large payload: {bench.large.end_to_end_s:.1f} s end to end, "
                            f"{bench.large.rows_per_s:,.0f} rows/s" + (f" FAILED: {bench.large.failure}"
                                                                      if bench.large.failure else ""))
                    delete_endpoint(sm, endpoint)
        finally:
            stop(up, grace_s=30.0)
            bench.up_exit_code = up.exit_code
            for info in seen:
                make_sure_stopped(info)
            bench.pids = [up.process.pid, *(i.pid for i in seen if i is not None and i.pid)]
            bench.left_running = sum(1 for i in seen if i is not None and i.left_running)
    bench.wall_s = time.monotonic() - began
    return bench


# -- the report -----------------------------------------------------------------------------------


def results_table(bench: AsyncBenchmark) -> str:
    lines = ["| cell | queue runs at once | submit p50 / p99 ms | async end-to-end p50 / p99 ms | "
             "async req/s | real-time p50 / p99 ms | real-time req/s | failed |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in bench.cells:
        failed = c.submit.failed + c.end_to_end.failed + c.realtime.failed
        lines.append(
            f"| {c.label} | {c.concurrency} | {c.submit.p50_ms:.1f} / {c.submit.p99_ms:.1f} | "
            f"{c.end_to_end.p50_ms:,.0f} / {c.end_to_end.p99_ms:,.0f} | {c.end_to_end.rps:.1f} | "
            f"{c.realtime.p50_ms:.1f} / {c.realtime.p99_ms:.1f} | {c.realtime.rps:.1f} | {failed} |")
    return "\n".join(lines)


def large_table(bench: AsyncBenchmark) -> str:
    run = bench.large
    if run is None:
        return ""
    outcome = f"failed: {run.failure}" if run.failure else "ok"
    return "\n".join([
        "| input | rows | upload s | end-to-end s | rows/s | output MB | outcome |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| one CSV, {run.mb:.0f} MB | {run.rows:,} | {run.upload_s:.1f} | {run.end_to_end_s:.1f} | "
        f"{run.rows_per_s:,.0f} | {run.output_mb:.0f} | {outcome} |"])


def failures_text(bench: AsyncBenchmark) -> str:
    failures = [f"{c.label}: {f}" for c in bench.cells for f in c.failures]
    if not failures:
        return ""
    shown = "\n".join(f"- {f}" for f in failures[:10])
    more = f"\n- ... and {len(failures) - 10} more" if len(failures) > 10 else ""
    return f"Failures:\n\n{shown}{more}\n\n"


def render_async_section(bench: AsyncBenchmark) -> str:
    quick = ("\n> **Quick smoke run**: these few requests only show that the harness works; do not read "
             "the numbers.\n" if bench.quick else "")
    loads = ", ".join(f"{c.load_average:.1f}" for c in bench.cells)
    endpoint_s = ", ".join(f"{c.endpoint_s:.1f}" for c in bench.cells)
    large = bench.large
    large_text = "" if large is None else f"""
### One large request

{large_table(bench)}

One {large.mb:.0f} MB CSV input ({large.rows:,} rows) through the queue of the first cell's endpoint.
It is uploaded first with boto3's multipart transfer (not in the end-to-end time); the control plane
streams it from its store to the instance, the instance parses and scores every row in one call (the
tabular handler: one worker holds the whole body and its answer), and the answer streams back to the
output bucket. rows/s is the rows over the end-to-end time (the batch transform section has the same
handler's throughput on 6 MB batches).
"""
    return f"""## Asynchronous inference (InvokeEndpointAsync)

`{bench.command}` on {bench.started}, {bench.wall_s:.0f} s in all; code {code_state()}.
{quick}
{bench.requests} requests per cell: `invoke_endpoint_async` submitted by {bench.threads} client threads as
fast as they go, each input a one-record CSV object in mainsail's own S3 (the tabular demo model,
`Accept: text/csv`); then as many real-time `invoke_endpoint` calls, with the same bodies, on the same
endpoint, from as many threads as the queue runs requests at once. Latencies in milliseconds, as seen
by the boto3 clients in the benchmark process.

{results_table(bench)}

{failures_text(bench)}* **submit**: the `invoke_endpoint_async` call itself: the request is validated,
  queued durably in the state store (SQLite) and answered 202 with its `OutputLocation`.
* **async end-to-end**: from the start of the submit call until its output object exists (the first
  5 ms listing of the output bucket's sidecar directory in the store that shows it: an object of
  mainsail's S3 exists from its sidecar's rename on). It includes the wait in the queue behind the
  requests submitted before it, so it grows with the size of the burst: read it as how long a burst of
  {bench.requests} takes to drain, not as one request's service time.
* **async req/s**: completion throughput, the requests over the time from the first submit to the last
  output. **real-time req/s**: the calls over the time from the first call to the last answer.
* **queue runs at once**: instances x `MaxConcurrentInvocationsPerInstance`, the control plane's
  capacity for the endpoint (mainsail's default is {DEFAULT_PER_INSTANCE} per instance); it is also the
  real-time client's thread count.
* The gap between the two req/s columns is the queue. Per request it adds a durable insert and delete
  in the state store, reading the input object and writing the output object (temp file, fsync,
  rename, sidecar), on top of the same forward to the instance that `invoke_endpoint` makes, and the
  worker's passes over the queue (`AsyncInference._run`): a pass starts queued requests up to the
  endpoint's capacity, and runs when a request is submitted or finishes (wake-ups within 2 ms share
  one pass), else every {POLL_S:g} s. Each pass lists the queued records in the state store, so a
  deep queue costs the control plane CPU per completion: with the client and the instances on the same
  2 cores, that is where the async column stops.
{large_text}
### Method

* One `mainsail up` subprocess on a loopback port with its own home (state store and S3 store in a
  temporary directory); each instance is one `mainsail serve` process with its default workers (one
  per core).
* Each cell creates its own async endpoint (a new endpoint config with `AsyncInferenceConfig`, output
  and failure locations in a bucket of its own), waits until it is InService (it took {endpoint_s} s),
  sends 8 real-time warm-up requests, runs the async burst, then the real-time calls, and deletes the
  endpoint before the next cell.
* boto3 clients make one attempt per call (no retries), with a 30 s read timeout. A request whose
  output does not appear within the deadline, or which wrote to its failure location, counts as
  failed, as does a submit or real-time call that raised. The first and last outputs of each cell are
  read back and checked to hold one CSV answer line.
* The client (boto3 threads), `mainsail up` and the instances share the machine's {os.cpu_count()}
  cores, so these are throughputs of the whole loop on one machine, not of the control plane alone.
  1-minute load average at the start of each cell: {loads}.

{machine_summary()}

{versions(VERSIONS)}
"""
