"""Response streaming: time to the first part and streamed throughput, on ``mainsail up``.

``python -m bench streaming`` starts one ``mainsail up`` (``--log-level warning``) and deploys a script
whose ``transform_fn`` returns a generator (``STREAMING_SCRIPT``: ``n`` chunks of ``size`` bytes). On
one endpoint instance, in the same run:

* **time to first part**, concurrency 1, one small chunk: from sending the request to the first byte of
  the answer, (a) to the instance directly (``POST /invocations``: the container's own first chunk) and
  (b) through the control plane (``POST /endpoints/NAME/invocations-response-stream``: the first byte of
  the first ``PayloadPart`` event). The difference is what the relay adds.
* **throughput** of a large answer (``large_mb`` MiB in 1 MiB chunks): the event stream through the
  control plane, read as it arrives, against ``InvokeEndpoint`` of the same answer (the control plane
  buffers it whole, then sends it); labelled rows add the client's decoding (botocore's decoder, and
  boto3's own iteration), which a client pays whatever the server.

The client is a plain ``http.client`` connection (one per measurement: no client pool in the numbers);
boto3's own reading is measured too, as a labelled row. Nothing is left running.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.control import boto3_client, code_state, create_endpoint, instance_from_state, make_sure_stopped, start_up
from bench.loadgen import percentile
from bench.procs import stop
from bench.report import machine_summary, versions
from bench.serve import HOST

ENDPOINT = "bench-stream"
MB = 1024 * 1024
VERSIONS = ("mainsail", "boto3", "botocore", "starlette", "uvicorn")
STREAMING_SCRIPT = '''
import json


def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    request = json.loads(body)
    piece = b"x" * request["size"]
    return (piece for _ in range(request["n"])), "application/octet-stream"
'''


@dataclass
class StreamingBenchmark:
    ttfb_direct_ms: list[float] = field(default_factory=list)
    ttfb_relay_ms: list[float] = field(default_factory=list)
    streamed_mb_s: list[float] = field(default_factory=list)
    decoded_mb_s: list[float] = field(default_factory=list)
    buffered_mb_s: list[float] = field(default_factory=list)
    boto3_streamed_mb_s: list[float] = field(default_factory=list)
    large_mb: float = 0.0
    command: str = ""
    started: str = ""
    wall_s: float = 0.0


def _first_byte_ms(port: int, path: str, body: bytes) -> float:
    """Milliseconds from sending ``body`` to the first byte of the answer's body (then read to the end)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        first = response.read1(1)
        elapsed = (time.perf_counter() - started) * 1e3
        assert first, f"{path}: an empty answer ({response.status})"
        response.read()
        return elapsed
    finally:
        conn.close()


def _read_mb_s(port: int, path: str, body: bytes, expected: int, decode: bool, framed: bool = False) -> float:
    """Throughput (MiB/s) of the ``expected`` bytes of one answer, read to its end. ``decode``: the
    event-stream messages decoded (botocore's decoder, CRCs checked); ``framed``: read as bytes, the
    events' framing (under 0.1% of a MiB part) allowed on top of ``expected``."""
    from botocore.eventstream import EventStreamBuffer

    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, f"{path}: {response.status} {response.read()[:300]!r}"
        size = 0
        buffer = EventStreamBuffer() if decode else None
        while piece := response.read1(1 << 20):
            if buffer is None:
                size += len(piece)
                continue
            buffer.add_data(piece)
            size += sum(len(message.payload) for message in buffer)
        elapsed = time.perf_counter() - started
        if framed:
            assert expected <= size <= expected * 1.001, f"{path}: {size} bytes, expected {expected} and framing"
        else:
            assert size == expected, f"{path}: {size} bytes, expected {expected}"
        return expected / MB / elapsed
    finally:
        conn.close()


def run_streaming_benchmark(*, requests: int = 200, large_mb: float = 50.0, repeats: int = 5, command: str = "",
                            log: Callable[[str], None] = print) -> StreamingBenchmark:
    bench = StreamingBenchmark(large_mb=large_mb, command=command,
                               started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mainsail-bench-stream-") as scratch:
        root = Path(scratch)
        model_dir = root / "model"
        (model_dir / "code").mkdir(parents=True)
        (model_dir / "code" / "inference.py").write_text(STREAMING_SCRIPT)
        up = start_up(root / "home", root / "up.log")
        instance = None
        try:
            url = f"http://{HOST}:{up.port}"
            log(f"mainsail up on {url}; creating the streaming endpoint")
            create_endpoint(url, model_dir, ENDPOINT)
            instance = instance_from_state(root / "home", ENDPOINT)
            assert instance is not None, "no instance recorded for the endpoint"
            small = json.dumps({"n": 1, "size": 16}).encode()
            relay = f"/endpoints/{ENDPOINT}/invocations-response-stream"
            for _ in range(20):  # warm both paths (connections, the script's first calls)
                _first_byte_ms(instance.port, "/invocations", small)
                _first_byte_ms(up.port, relay, small)
            log(f"time to first part: {requests} requests each way, alternating")
            for _ in range(requests):
                bench.ttfb_direct_ms.append(_first_byte_ms(instance.port, "/invocations", small))
                bench.ttfb_relay_ms.append(_first_byte_ms(up.port, relay, small))
            chunks = max(1, round(large_mb))
            large = json.dumps({"n": chunks, "size": MB}).encode()
            total = chunks * MB
            log(f"throughput: {chunks} MiB answers, {repeats} of each, alternating")
            runtime = boto3_client("sagemaker-runtime", url)
            for _ in range(repeats):
                bench.streamed_mb_s.append(_read_mb_s(up.port, relay, large, total, decode=False, framed=True))
                bench.decoded_mb_s.append(_read_mb_s(up.port, relay, large, total, decode=True))
                bench.buffered_mb_s.append(_read_mb_s(up.port, f"/endpoints/{ENDPOINT}/invocations", large, total,
                                                      decode=False))
                started = time.perf_counter()
                answer = runtime.invoke_endpoint_with_response_stream(EndpointName=ENDPOINT, Body=large,
                                                                      ContentType="application/json")
                size = sum(len(e["PayloadPart"]["Bytes"]) for e in answer["Body"])
                assert size == total
                bench.boto3_streamed_mb_s.append(size / MB / (time.perf_counter() - started))
        finally:
            stop(up)
            make_sure_stopped(instance)
    bench.wall_s = time.monotonic() - began
    return bench


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(sorted(values), q):.2f}"


def _median(values: list[float]) -> float:
    return percentile(sorted(values), 50)


def results_table(bench: StreamingBenchmark) -> str:
    added = [r - d for r, d in zip(bench.ttfb_relay_ms, bench.ttfb_direct_ms, strict=True)]
    rows = [
        "| time to the first part (concurrency 1) | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
        f"| the instance's own first chunk (`POST /invocations`) | {_ms(bench.ttfb_direct_ms, 50)} | "
        f"{_ms(bench.ttfb_direct_ms, 99)} |",
        f"| through `mainsail up` (`invocations-response-stream`, first PayloadPart) | {_ms(bench.ttfb_relay_ms, 50)} |"
        f" {_ms(bench.ttfb_relay_ms, 99)} |",
        f"| added by the relay (paired requests) | {_ms(added, 50)} | {_ms(added, 99)} |",
        "",
        f"| a {bench.large_mb:.0f} MiB answer through `mainsail up` | median MiB/s | runs |",
        "| --- | ---: | ---: |",
        f"| InvokeEndpointWithResponseStream (the event stream as it arrives) | "
        f"{_median(bench.streamed_mb_s):.0f} | {len(bench.streamed_mb_s)} |",
        f"| InvokeEndpoint (the answer buffered by the control plane) | {_median(bench.buffered_mb_s):.0f} | "
        f"{len(bench.buffered_mb_s)} |",
        f"| *the same, each event decoded with botocore's decoder (CRCs checked) as it arrives* | "
        f"{_median(bench.decoded_mb_s):.0f} | {len(bench.decoded_mb_s)} |",
        f"| *boto3's `invoke_endpoint_with_response_stream`, iterating the events* | "
        f"{_median(bench.boto3_streamed_mb_s):.0f} | {len(bench.boto3_streamed_mb_s)} |",
    ]
    return "\n".join(rows)


def checks(bench: StreamingBenchmark) -> list[str]:
    added = percentile(sorted(r - d for r, d in zip(bench.ttfb_relay_ms, bench.ttfb_direct_ms, strict=True)), 50)
    ratio = _median(bench.streamed_mb_s) / _median(bench.buffered_mb_s)
    return [f"time to first part added by the control plane: {added:.2f} ms at p50 (target: within 1 ms): "
            f"{'met' if added <= 1.0 else 'not met'}",
            f"streamed throughput: {ratio:.2f}x InvokeEndpoint's (target: at least 0.90x): "
            f"{'met' if ratio >= 0.9 else 'not met'}"]


def render_section(bench: StreamingBenchmark) -> str:
    return "\n".join([
        "## Response streaming (`python -m bench streaming`)",
        "",
        f"Measured {bench.started} on {machine_summary()}; {versions(VERSIONS)}; {code_state()}; "
        f"`{bench.command}` ({bench.wall_s:.0f} s). One `mainsail up` as a user starts it, one instance, a script "
        "whose `transform_fn` returns a generator; plain `http.client` connections (one per request).",
        "",
        results_table(bench),
        "",
        *[f"- {line}" for line in checks(bench)],
    ])
