"""CloudWatch's ``GetMetricData`` over a day of endpoint metrics: how long a dashboard's query takes.

``python -m bench cloudwatch`` fills a :class:`~mainsail.aws.cloudwatch.store.MetricStore` (``metrics.db`` of
a fresh home) through its ``put`` with ``hours`` of one-minute datapoints for ``endpoints`` endpoints (one
variant each) and the metrics SageMaker publishes for them: ``Invocations``, the error counts,
``InvocationsPerInstance``, ``ModelLatency`` and ``OverheadLatency`` with their distributions (so
percentiles), and the instance's ``CPUUtilization`` / ``MemoryUtilization`` / ``DiskUtilization``. Then it
starts a real ``mainsail up`` over that home and times, with boto3's ``cloudwatch`` client:

* **all endpoints, Period 60**: one ``GetMetricData`` of ``endpoints`` MetricStat queries, the whole
  window of one metric for every endpoint at one-minute resolution (``ModelLatency`` p99, the heaviest
  statistic: each minute's histogram is read; and ``Invocations`` Sum);
* **one endpoint, Period 300**: one MetricStat query over the whole window, five-minute periods.

Each is called ``repeats`` times after ``warmup`` calls; the figures are p50 / p99 over the calls. The
"server" column is the same request run in this process by the operation itself
(:func:`mainsail.aws.cloudwatch.metric_data.get_metric_data`) over the same file: the work ``mainsail up``
does for it, without HTTP and the CBOR encoding; client − server is the wire and botocore.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.control import boto3_client, code_state, start_up
from bench.procs import stop
from bench.report import machine_summary, versions

TARGET_MS = 100.0
SAGEMAKER = "AWS/SageMaker"
INSTANCES = "/aws/sagemaker/Endpoints"
VARIANT = "AllTraffic"
#: (namespace, metric, unit) of what the fill writes for every endpoint and minute
METRICS = ((SAGEMAKER, "Invocations", "None"), (SAGEMAKER, "Invocation4XXErrors", "None"),
           (SAGEMAKER, "Invocation5XXErrors", "None"), (SAGEMAKER, "InvocationModelErrors", "None"),
           (SAGEMAKER, "InvocationsPerInstance", "None"), (SAGEMAKER, "ModelLatency", "Microseconds"),
           (SAGEMAKER, "OverheadLatency", "Microseconds"), (INSTANCES, "CPUUtilization", "Percent"),
           (INSTANCES, "MemoryUtilization", "Percent"), (INSTANCES, "DiskUtilization", "Percent"))


@dataclass
class Timing:
    """One request shape, called ``repeats`` times: client-side and in-process milliseconds."""

    label: str
    queries: int
    period: int
    datapoints: int
    client_ms: list[float] = field(default_factory=list)
    http_ms: list[float] = field(default_factory=list)
    parse_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)

    @staticmethod
    def _pct(values: Sequence[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] if ordered else math.nan

    def client(self, q: float) -> float:
        return self._pct(self.client_ms, q)

    def http(self, q: float) -> float:
        return self._pct(self.http_ms, q)

    def parse(self, q: float) -> float:
        return self._pct(self.parse_ms, q)

    def server(self, q: float) -> float:
        return self._pct(self.server_ms, q)


@dataclass
class CloudWatchBenchmark:
    command: str
    endpoints: int
    hours: float
    repeats: int
    rows: int = 0
    fill_s: float = 0.0
    db_mb: float = 0.0
    up_ready_s: float = 0.0
    timings: list[Timing] = field(default_factory=list)
    wall_s: float = 0.0
    started: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def endpoint_name(index: int) -> str:
    return f"bench-cw-{index:02d}"


def _dims(endpoint: str) -> tuple[tuple[str, str], ...]:
    from mainsail.aws.cloudwatch.datapoints import dimensions_of

    dims: tuple[tuple[str, str], ...] = dimensions_of({"EndpointName": endpoint, "VariantName": VARIANT})
    return dims


def minute_points(endpoint: str, timestamp: float, rng: random.Random) -> list[Any]:
    """One minute of ``endpoint``'s metrics, shaped as the router and the instance sampler record them."""
    from mainsail.aws.cloudwatch.datapoints import Datapoint

    dims = _dims(endpoint)
    requests = rng.randint(200, 1200)
    errors_4xx, errors_5xx = rng.randint(0, 3), rng.randint(0, 1)
    out = []

    def counted(name: str, count: int, ones: int) -> None:
        point = Datapoint(SAGEMAKER, name, dims, timestamp, "None")
        if ones:
            point.add(1.0, ones)
        if count - ones:
            point.add(0.0, count - ones)
        out.append(point)

    counted("Invocations", requests, requests)
    counted("Invocation4XXErrors", requests, errors_4xx)
    counted("Invocation5XXErrors", requests, errors_5xx)
    counted("InvocationModelErrors", requests, errors_4xx + errors_5xx)
    per_instance = Datapoint(SAGEMAKER, "InvocationsPerInstance", dims, timestamp, "None")
    per_instance.add(0.5, requests)
    out.append(per_instance)
    for name, median in (("ModelLatency", 4000.0), ("OverheadLatency", 300.0)):
        out.append(latency_point(name, dims, timestamp, requests, median * rng.uniform(0.8, 1.25), 0.6))
    for name, level in (("CPUUtilization", 60.0), ("MemoryUtilization", 35.0), ("DiskUtilization", 20.0)):
        point = Datapoint(INSTANCES, name, dims, timestamp, "Percent")
        point.add(max(0.0, rng.gauss(level, level / 5)))
        out.append(point)
    return out


def latency_point(name: str, dims: tuple[tuple[str, str], ...], timestamp: float, requests: int, median: float,
                  sigma: float) -> Any:
    """A minute of ``requests`` latencies drawn from a log-normal law, as the recorder's histogram holds them:
    each 1 % bucket with the (rounded) number of requests the law puts in it (a hundred-odd buckets, as
    real traffic fills; drawing each request would make the fill minutes long)."""
    from mainsail.aws.cloudwatch.datapoints import GAMMA, Datapoint, Distribution

    def below(key: int) -> float:  # the law's share of values up to bucket ``key``'s upper bound
        return 0.5 * (1 + math.erf((key * math.log(GAMMA) - math.log(median)) / (sigma * math.sqrt(2))))

    centre = round(math.log(median) / math.log(GAMMA))
    width = round(4.5 * sigma / math.log(GAMMA))
    buckets = {}
    for key in range(centre - width, centre + width + 1):
        count = round(requests * (below(key) - below(key - 1)))
        if count:
            buckets[key] = float(count)
    values = {key: 2 * GAMMA ** key / (GAMMA + 1) for key in buckets}
    return Datapoint(SAGEMAKER, name, dims, timestamp, "Microseconds", sum(buckets.values()),
                     sum(values[k] * n for k, n in buckets.items()), values[min(buckets)], values[max(buckets)],
                     Distribution(buckets))


def fill(path: Path, endpoints: int, hours: float, now: float, log: Callable[[str], None] = print) -> int:
    """Write ``hours`` of one-minute datapoints for ``endpoints`` endpoints into the store at ``path``, one
    ``put`` per minute (every endpoint's metrics); the rows written."""
    from mainsail.aws.cloudwatch.store import MetricStore

    rng = random.Random(20)
    store = MetricStore(path)
    minutes = int(hours * 60)
    last = math.floor(now / 60) * 60 - 60
    rows = 0
    try:
        for i in range(minutes, 0, -1):
            timestamp = last - (i - 1) * 60
            points = [p for e in range(endpoints) for p in minute_points(endpoint_name(e), timestamp, rng)]
            store.put(points)
            rows += len(points)
            if (minutes - i + 1) % 240 == 0:
                log(f"  filled {minutes - i + 1}/{minutes} minutes")
    finally:
        store.close()
    return rows


def metric_query(qid: str, endpoint: str, namespace: str, metric: str, stat: str, period: int) -> dict[str, Any]:
    return {"Id": qid, "MetricStat": {"Period": period, "Stat": stat, "Metric": {
        "Namespace": namespace, "MetricName": metric,
        "Dimensions": [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": VARIANT}]}}}


def shapes(endpoints: int, hours: float) -> list[tuple[str, list[dict[str, Any]], int]]:
    """(label, MetricDataQueries, Period) of each timed request."""
    return [
        (f"{endpoints} endpoints × ModelLatency p99, Period 60",
         [metric_query(f"m{e}", endpoint_name(e), SAGEMAKER, "ModelLatency", "p99", 60) for e in range(endpoints)],
         60),
        (f"{endpoints} endpoints × Invocations Sum, Period 60",
         [metric_query(f"m{e}", endpoint_name(e), SAGEMAKER, "Invocations", "Sum", 60) for e in range(endpoints)],
         60),
        ("1 endpoint × ModelLatency p99, Period 300",
         [metric_query("m0", endpoint_name(0), SAGEMAKER, "ModelLatency", "p99", 300)], 300),
    ]


def run_cloudwatch_benchmark(*, endpoints: int = 10, hours: float = 24.0, repeats: int = 30, warmup: int = 3,
                             command: str = "", log: Callable[[str], None] = print) -> CloudWatchBenchmark:
    """Fill, start ``mainsail up``, time every shape; ``mainsail up`` is stopped whatever happens."""
    from mainsail.aws.cloudwatch.datapoints import TimeScale
    from mainsail.aws.cloudwatch.metric_data import get_metric_data
    from mainsail.aws.cloudwatch.store import MetricStore

    bench = CloudWatchBenchmark(command, endpoints, hours, repeats)
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mainsail-bench-cw-"))
    try:
        home = root / "home"
        now = time.time()
        log(f"filling {hours:g} h × {endpoints} endpoints × {len(METRICS)} metrics")
        started = time.monotonic()
        bench.rows = fill(home / "metrics.db", endpoints, hours, now, log)
        bench.fill_s = time.monotonic() - started
        bench.db_mb = sum(p.stat().st_size for p in home.glob("metrics.db*")) / 2**20
        server = start_up(home, root / "up.log")
        bench.up_ready_s = server.ready_s or 0.0
        try:
            cloudwatch = boto3_client("cloudwatch", server.url)
            http = httpx.Client(timeout=60)
            store = MetricStore(home / "metrics.db")  # the same file, read in this process
            end = math.floor(now / 60) * 60
            start = end - hours * 3600
            try:
                for label, queries, period in shapes(endpoints, hours):
                    body = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end}
                    reply = get_metric_data(store, TimeScale(), body)
                    points = sum(len(r["Values"]) for r in reply["MetricDataResults"])
                    timing = Timing(label, len(queries), period, points)
                    kwargs = {"MetricDataQueries": queries, "StartTime": datetime.fromtimestamp(start, UTC),
                              "EndTime": datetime.fromtimestamp(end, UTC)}
                    request, parse = cbor_request(kwargs)
                    for i in range(warmup + repeats):
                        t0 = time.perf_counter()
                        answer = cloudwatch.get_metric_data(**kwargs)
                        elapsed = (time.perf_counter() - t0) * 1e3
                        got = sum(len(r["Values"]) for r in answer["MetricDataResults"])
                        if got != points or answer.get("NextToken"):
                            raise RuntimeError(f"{label}: {got} datapoints through boto3, {points} in process")
                        t0 = time.perf_counter()
                        raw = http.post(server.url + request["url_path"], content=request["body"],
                                        headers=request["headers"])
                        round_trip = (time.perf_counter() - t0) * 1e3
                        if raw.status_code != 200:
                            raise RuntimeError(f"{label}: HTTP {raw.status_code} to the raw CBOR request")
                        t0 = time.perf_counter()
                        parse(raw.content)
                        parsing = (time.perf_counter() - t0) * 1e3
                        t0 = time.perf_counter()
                        get_metric_data(store, TimeScale(), body)
                        in_process = (time.perf_counter() - t0) * 1e3
                        if i >= warmup:
                            timing.client_ms.append(elapsed)
                            timing.http_ms.append(round_trip)
                            timing.parse_ms.append(parsing)
                            timing.server_ms.append(in_process)
                    log(f"  {label}: {points} datapoints, boto3 p50 {timing.client(0.5):.1f} ms, "
                        f"HTTP p50 {timing.http(0.5):.1f} ms, botocore parse p50 {timing.parse(0.5):.1f} ms, "
                        f"in process p50 {timing.server(0.5):.1f} ms")
                    bench.timings.append(timing)
            finally:
                store.close()
                http.close()
        finally:
            stop(server)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    bench.wall_s = time.monotonic() - began
    return bench


def cbor_request(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Callable[[bytes], Any]]:
    """The GetMetricData request boto3 sends for ``kwargs`` (path, headers, CBOR body), serialized once by
    botocore, to be posted with a plain HTTP client (``mainsail up`` without ``--credentials`` reads unsigned
    requests): the round trip without botocore; and botocore's parsing of an answer, to time on its own."""
    import botocore.parsers
    import botocore.serialize
    import botocore.session

    operation = botocore.session.get_session().get_service_model("cloudwatch").operation_model("GetMetricData")
    request: dict[str, Any] = botocore.serialize.create_serializer("smithy-rpc-v2-cbor").serialize_to_request(
        kwargs, operation)
    parser = botocore.parsers.create_parser("smithy-rpc-v2-cbor")

    def parse(body: bytes) -> Any:
        return parser.parse({"body": body, "headers": {"smithy-protocol": "rpc-v2-cbor"}, "status_code": 200},
                            operation.output_shape)

    return request, parse


def results_table(bench: CloudWatchBenchmark) -> str:
    lines = ["| GetMetricData | queries | datapoints returned | boto3 p50 / p99 ms | HTTP round trip p50 / p99 ms "
             "| botocore's parsing of the answer p50 ms | in process p50 / p99 ms | boto3 p99 under 100 ms "
             "| server (HTTP p99) under 100 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for t in bench.timings:
        client = "yes" if t.client(0.99) < TARGET_MS else "**no**"
        server = "yes" if t.http(0.99) < TARGET_MS else "**no**"
        lines.append(f"| {t.label} | {t.queries} | {t.datapoints:,} | {t.client(0.5):.1f} / {t.client(0.99):.1f} | "
                     f"{t.http(0.5):.1f} / {t.http(0.99):.1f} | {t.parse(0.5):.1f} | "
                     f"{t.server(0.5):.1f} / {t.server(0.99):.1f} | {client} | {server} |")
    return "\n".join(lines)


def where_the_time_goes(bench: CloudWatchBenchmark) -> str:
    """The split of the heaviest request's time (p50s), from the figures measured."""
    if not bench.timings:
        return ""
    t = max(bench.timings, key=lambda timing: timing.client(0.5))
    return (f"**Where the time goes** ({t.label}, p50s, each timed on its own): boto3 {t.client(0.5):.0f} ms, of "
            f"which botocore's parsing of the answer is about {t.parse(0.5):.0f} ms; the HTTP round trip without "
            f"botocore {t.http(0.5):.0f} ms, of which the operation itself {t.server(0.5):.0f} ms (the rest: the "
            f"CBOR encoding of {t.datapoints:,} timestamps and values, and HTTP).")


NOTES = """
botocore's smithy-rpc-v2-cbor parser is pure Python, and it turns every timestamp into a timezone-aware
local `datetime` through dateutil (`_parse_timestamp_with_tzinfo`, `tzlocal`): under cProfile, about
60 % of its time for an answer of 14,400 points. That part of the client-side figure is botocore's
whatever the server does; a dashboard asking for a day of one-minute points of ten endpoints at once
cannot come back through boto3 in 100 ms. The server's part is what mainsail can change: before the
changes below (measured once, 2026-12-07, on this machine, in process over the same fill, medians of 5),
the operation alone took 1,280 ms for ten endpoints × ModelLatency p99, 100 ms for the sums and 83 ms for
the Period 300 query, reading each minute's histogram from JSON into a `Distribution`, copying it into a
new datapoint, then sorting its buckets for the percentile; the file was 174 MB.

What changed in the store (`aws/cloudwatch/store.py`, `statistics.py`, `metric_data.py`): histograms
are stored packed (bucket keys as int32 in value order, then the running count as float64; JSON rows
written before are still read), so the percentile of a one-minute period is a bisection of the running
count read in place and one key, with no `Distribution` built (`MetricStore.histograms`, `quantile_of`); the
statistics other than percentiles read only the count, sum, minimum and maximum columns, with no
datapoint built (`MetricStore.summaries`); the primary key is (namespace, metric, dimensions, ts, unit), so
a time range is one seek with no sort (with retention at 15 days, the old key scanned the metric's whole
history); new files use 16 KiB pages, so a minute's histogram (a hundred-odd buckets, about 2 KB packed)
stays in its b-tree page instead of taking an overflow page of its own (the same day of data: 100 MB,
and faster to read).
"""


def render_cloudwatch_section(bench: CloudWatchBenchmark, notes: str = NOTES) -> str:
    return "\n".join([
        "## CloudWatch: GetMetricData over a day of endpoint metrics",
        "",
        f"`{bench.command}` on {bench.started}, {bench.wall_s:.0f} s in all; code {code_state()}.",
        "",
        f"A `MetricStore` filled through its `put` with {bench.hours:g} h of one-minute datapoints for "
        f"{bench.endpoints} endpoints × {len(METRICS)} metrics (the `AWS/SageMaker` invocation counts, "
        "`ModelLatency` and `OverheadLatency` with their histograms of a few hundred requests a minute, the "
        f"instance utilizations): {bench.rows:,} rows, {bench.db_mb:.1f} MiB of SQLite, written in "
        f"{bench.fill_s:.1f} s (one `put` per minute). Then a real `mainsail up` over that home (ready in "
        f"{bench.up_ready_s:.1f} s), each request called {bench.repeats} times after a warm-up, three ways: "
        "boto3's `cloudwatch` client (smithy-rpc-v2-cbor); the same CBOR request posted with httpx (the HTTP "
        "round trip, without botocore; its answer then parsed by botocore's parser alone); and the operation "
        "itself (`mainsail.aws.cloudwatch.metric_data.get_metric_data`) run in the benchmark's process over "
        "the same file (\"in process\": the server's work without HTTP and CBOR). Target: under 100 ms.",
        "",
        results_table(bench),
        "",
        where_the_time_goes(bench),
        *(["", notes.strip()] if notes.strip() else []),
        "",
        machine_summary(),
        "",
        versions(("mainsail", "boto3", "botocore", "cbor2", "uvicorn")),
    ])


def run_and_report(out: Path, command: str, log: Callable[[str], None], *, endpoints: int = 10,
                   hours: float = 24.0, repeats: int = 30) -> int:
    from bench.report import write_section

    bench = run_cloudwatch_benchmark(endpoints=endpoints, hours=hours, repeats=repeats, command=command, log=log)
    print()
    print(results_table(bench))
    write_section(out, "cloudwatch", render_cloudwatch_section(bench))
    print(f"\nwrote the cloudwatch section of {out} ({bench.wall_s:.0f} s in all)")
    return 0 if all(t.client(0.99) < TARGET_MS for t in bench.timings) else 1
