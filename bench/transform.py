"""Batch transform throughput: rows/s of a ``mainsail up`` transform job of the tabular demo model
over a generated CSV file, against the floor of a plain in-process loop that calls the same handler
on the same file cut into the same MultiRecord batches (``MaxPayloadInMB``, whole lines).

The job is timed from CreateTransformJob to Completed (instances start inside that time) and from
its first finished request to Completed (the streaming part alone). ``mainsail up`` runs in a
subprocess with its own home; the input goes up through its S3 API with boto3 (multipart).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import free_port
from bench.report import machine_summary, versions

CSV = "text/csv"
JSON = "application/json"
MB = 1024 * 1024


@dataclass
class Run:
    label: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TransformBenchmark:
    rows: int
    input_mb: float
    payload_mb: int
    command: str
    started: str
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0


def _batches(path: Path, limit: int) -> Iterator[bytes]:
    """The file as MultiRecord requests: whole lines, at most ``limit`` bytes each."""
    buf = b""
    with path.open("rb") as fh:
        while True:
            data = fh.read(MB)
            buf += data
            while len(buf) > limit or (not data and buf):
                cut = buf.rfind(b"\n", 0, limit) + 1 if len(buf) > limit else len(buf)
                yield buf[:cut]
                buf = buf[cut:]
            if not data:
                return


def in_process_floor(model_dir: Path, data: Path, limit: int) -> tuple[float, int]:
    """Seconds for the handler, called directly, to answer every batch of ``data``; rows answered."""
    from mainsail.handlers.base import Invocation
    from mainsail.handlers.tabular import TabularHandler

    handler = TabularHandler(model_dir)
    handler.load()
    rows = 0
    started = time.perf_counter()
    for batch in _batches(data, limit):
        reply = handler.invoke(Invocation(batch, CSV, CSV)).body
        rows += reply.count(b"\n") or 1
    return time.perf_counter() - started, rows


def _post(url: str, target: str, body: dict[str, Any]) -> dict[str, Any]:
    import httpx

    response = httpx.post(url + "/", content=json.dumps(body), timeout=30,
                          headers={"X-Amz-Target": f"SageMaker.{target}",
                                   "Content-Type": "application/x-amz-json-1.1"})
    response.raise_for_status()
    found: dict[str, Any] = response.json()
    return found


def run_transform_job(url: str, name: str, model: str, instances: int, payload_mb: int,
                      log: Callable[[str], None]) -> tuple[float, float, dict[str, Any]]:
    """(seconds create -> Completed, seconds first batch done -> Completed, the last Describe)."""
    created = time.perf_counter()
    _post(url, "CreateTransformJob", {
        "TransformJobName": name, "ModelName": model, "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": payload_mb, "MaxConcurrentTransforms": instances,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bench/in/"}},
                           "ContentType": CSV, "SplitType": "Line"},
        "TransformOutput": {"S3OutputPath": f"s3://bench/out-{name}", "AssembleWith": "Line", "Accept": CSV},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": instances}})
    first: float | None = None
    while True:
        desc = _post(url, "DescribeTransformJob", {"TransformJobName": name})
        progress = desc.get("MainsailProgress") or {}
        now = time.perf_counter()
        if first is None and progress.get("Requests", 0) > 0:
            first = now
        if desc["TransformJobStatus"] not in ("InProgress", "Stopping"):
            break
        time.sleep(0.05)
    if desc["TransformJobStatus"] != "Completed":
        raise RuntimeError(f"transform job {name} {desc['TransformJobStatus']}: {desc.get('FailureReason')}")
    log(f"{name}: {now - created:.1f} s, {progress.get('Records')} records, {progress.get('Requests')} requests")
    return now - created, now - (first or created), desc


def run_transform_benchmark(*, rows: int = 400_000, payload_mb: int = 6, instances: tuple[int, ...] = (1, 2),
                            command: str = "", log: Callable[[str], None] = print) -> TransformBenchmark:
    import boto3
    from boto3.s3.transfer import TransferConfig

    from bench.tabular import build_tabular_model

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-bench-transform-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        log("building the tabular demo model")
        model = build_tabular_model(tmp / "model")
        line = model.csv_body.strip(b"\r\n") + b"\n"
        data = tmp / "input.csv"
        with data.open("wb") as fh:
            block = line * 10_000
            for _ in range(rows // 10_000):
                fh.write(block)
            fh.write(line * (rows % 10_000))
        bench = TransformBenchmark(rows=rows, input_mb=data.stat().st_size / 1e6, payload_mb=payload_mb,
                                   command=command, started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
        bench.notes.append(f"1-minute load average when the run began: {os.getloadavg()[0]:.1f} on "
                           f"{os.cpu_count()} cores (the loop, `mainsail up` and the instances share them)")
        log(f"{rows} rows, {bench.input_mb:.1f} MB: the in-process floor")
        seconds, answered = in_process_floor(model.path, data, payload_mb * MB)
        if answered != rows:
            raise RuntimeError(f"the handler answered {answered} rows for {rows}")
        bench.runs.append(Run("in-process loop (handler.invoke per batch)", rows, seconds))

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")}
        proc = subprocess.Popen([sys.executable, "-m", "mainsail.cli", "up", "--port", str(port), "--home",
                                 str(tmp / "home"), "--log-level", "warning"], env=env,
                                stdout=(tmp / "up.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                _post(url, "ListModels", {})
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"mainsail up did not start: {(tmp / 'up.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
        s3.create_bucket(Bucket="bench")
        s3.upload_file(str(data), "bench", "in/input.csv",
                       Config=TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=16 * MB))
        _post(url, "CreateModel", {"ModelName": "tabular", "PrimaryContainer": {
            "Image": "mainsail", "ModelDataUrl": f"file://{model.path}"}})
        for count in instances:
            total, streaming, desc = run_transform_job(url, f"bench-{count}", "tabular", count, payload_mb, log)
            requests = int((desc.get("MainsailProgress") or {}).get("Requests") or 1)
            bench.runs.append(Run(f"transform job, {count} instance(s): create -> Completed", rows, total))
            if requests > 1:  # the rows of the batches after the first one, over the time they took
                bench.runs.append(Run(f"transform job, {count} instance(s): after the first batch",
                                      rows * (requests - 1) // requests, streaming))
        if len(bench.runs) > 2:
            bench.notes.append(f"create -> first batch done (1 instance: start, /ping, one request): "
                               f"{bench.runs[1].seconds - bench.runs[2].seconds:.1f} s")
        bench.wall_s = time.perf_counter() - started
        return bench
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def results_table(bench: TransformBenchmark) -> str:
    floor = bench.runs[0].rate if bench.runs else 0.0
    lines = ["| run | seconds | rows/s | vs in-process |", "|---|---:|---:|---:|"]
    for run in bench.runs:
        ratio = f"{run.rate / floor:.2f}x" if floor else "-"
        lines.append(f"| {run.label} | {run.seconds:.2f} | {run.rate:,.0f} | {ratio} |")
    return "\n".join(lines)


def render_transform_section(bench: TransformBenchmark) -> str:
    notes = "".join(f"\n- {note}" for note in bench.notes)
    return f"""## Batch transform

`{bench.command}` on {bench.started}: a {bench.rows:,}-row CSV ({bench.input_mb:.1f} MB, the tabular demo
model's CSV record repeated) through a `mainsail up` transform job (SplitType Line, BatchStrategy
MultiRecord, MaxPayloadInMB {bench.payload_mb}, MaxConcurrentTransforms = instances, Accept text/csv), vs the
same handler called in process on the same file cut into the same batches. Each instance is one
`mainsail serve` worker. Total wall time {bench.wall_s:.0f} s.

{results_table(bench)}
{notes}

Machine: {machine_summary()}. Versions: {versions(("mainsail", "xgboost", "numpy", "pandas", "boto3"))}.
"""
