"""What ``python -m bench profile`` keeps of a run, and its table and docs/benchmarks.md section.

The section carries its runs as JSON in an HTML comment, so a later run with ``--append`` can put its
columns beside them: a run of the same label and system replaces the old one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.report import markers
from bench.stacks import BUCKETS
from bench.systems import SYSTEM_LABELS

SECTION = "profile"
TITLE = "## Where a request's time goes (python -m bench profile)"
_DATA = re.compile(r"<!-- bench:profile:data (.*?) -->", re.DOTALL)


@dataclass
class ProfileRun:
    """One system profiled once; what the section's JSON keeps, so later runs can be shown beside it."""

    label: str
    system: str
    started: str
    command: str
    source: str
    concurrency: int
    duration_s: float
    loadgen: str
    sampling: str
    rate: int
    requests: int
    rps: float
    p50_ms: float
    errors: int
    workers: int
    worker_cpu_s: float
    bucket_cpu_s: dict[str, float]
    samples: int
    spy_errors: int
    supervisor_cpu_s: float
    supervisor_buckets: dict[str, int]
    gc_s: float | None
    gc_collections: int | None
    hot_leaves: dict[str, list[str]] = field(default_factory=dict)
    unsampled_workers: int = 0
    """Workers that served but py-spy recorded nothing of (it failed): the others' split stands for them."""

    @property
    def key(self) -> tuple[str, str]:
        return self.label, self.system

    @property
    def title(self) -> str:
        return f"{self.label}: {SYSTEM_LABELS.get(self.system, self.system)}"

    def us(self, seconds: float) -> float:
        return seconds / self.requests * 1e6 if self.requests else 0.0

    @property
    def cpu_us(self) -> float:
        return self.us(self.worker_cpu_s)


def console_table(run: ProfileRun) -> str:
    total = sum(run.bucket_cpu_s.values()) or 1.0
    rows = [f"{run.title} ({run.source}): {run.rps:,.0f} req/s at concurrency {run.concurrency} under the "
            f"profiler, {run.errors} errors; worker CPU {run.cpu_us:,.0f} µs per request "
            f"({run.worker_cpu_s / run.duration_s:.2f} cores), {run.samples:,} samples"
            + (f", {run.unsampled_workers} worker(s) py-spy failed on" if run.unsampled_workers else ""),
            "", "| bucket | share % | µs/request |", "|---|---:|---:|"]
    for bucket in BUCKETS:
        if run.bucket_cpu_s.get(bucket):
            seconds = run.bucket_cpu_s[bucket]
            rows.append(f"| {bucket} | {100 * seconds / total:.1f} | {run.us(seconds):,.1f} |")
    rows.append(f"| **all worker CPU** | 100.0 | {run.cpu_us:,.1f} |")
    if run.gc_s is not None:
        rows.append(f"| of which garbage collection (timed apart, wall, inside the rows above) | "
                    f"{100 * run.gc_s / total:.1f} | {run.us(run.gc_s):,.1f} |")
    rows.append(f"| supervisor process (apart, not in the total) | – | {run.us(run.supervisor_cpu_s):,.1f} |")
    return "\n".join(rows)


def read_runs(path: Path) -> list[ProfileRun]:
    """The runs kept in the profile section's data comment (none when there is no section)."""
    text = path.read_text() if path.exists() else ""
    start, end = markers(SECTION)
    section = text.partition(start)[2].partition(end)[0]
    match = _DATA.search(section)
    return [ProfileRun(**item) for item in json.loads(match.group(1))] if match else []


def merge(old: list[ProfileRun], new: list[ProfileRun]) -> list[ProfileRun]:
    """``old`` with every run of ``new`` added; a run with the same label and system replaces the old one."""
    keys = {run.key for run in new}
    return [run for run in old if run.key not in keys] + new


def render_section(runs: list[ProfileRun]) -> str:
    titles = " | ".join(run.title for run in runs)
    rows = [f"| CPU µs per request (share of the worker CPU) | {titles} |", "|---" + "|---:" * len(runs) + "|"]

    def row(name: str, cell: Callable[[ProfileRun], str]) -> None:
        rows.append(f"| {name} | " + " | ".join(cell(run) for run in runs) + " |")

    def share(bucket: str) -> Callable[[ProfileRun], str]:
        def cell(r: ProfileRun) -> str:
            seconds = r.bucket_cpu_s.get(bucket, 0.0)
            return f"{r.us(seconds):,.1f} ({100 * seconds / (sum(r.bucket_cpu_s.values()) or 1):.1f} %)"
        return cell

    for bucket in BUCKETS:
        if any(run.bucket_cpu_s.get(bucket) for run in runs):
            row(bucket, share(bucket))
    row("**all worker CPU**", lambda r: f"**{r.cpu_us:,.1f}**")
    row("of which garbage collection (timed apart, wall)", lambda r: "–" if r.gc_s is None else
        f"{r.us(r.gc_s):,.1f} ({(r.gc_collections or 0) / (r.requests or 1):.2f} collections/request)")
    row("supervisor process (not in the total)", lambda r: f"{r.us(r.supervisor_cpu_s):,.1f}")
    row("req/s under the profiler", lambda r: f"{r.rps:,.0f} (p50 {r.p50_ms:.2f} ms, {r.errors} errors)")
    row("worker CPU, cores", lambda r: f"{r.worker_cpu_s / r.duration_s:.2f} of {os.cpu_count()}")
    row("samples (py-spy read errors)", lambda r: f"{r.samples:,} ({r.spy_errors:,})")
    details = "\n".join(
        f"* **{run.title}**: {run.started}, `{run.command}`, {run.source}, {run.workers} workers, concurrency "
        f"{run.concurrency} for {run.duration_s:g} s ({run.loadgen}), py-spy at {run.rate} Hz sampling "
        f"{run.sampling}"
        + (f" ({run.unsampled_workers} worker(s) not sampled: py-spy failed on them; the other workers' split "
           "is applied to all the CPU)" if run.unsampled_workers else "")
        + ". Supervisor's samples: "
        + (", ".join(f"{b} {n}" for b, n in run.supervisor_buckets.items()) or "none")
        + ". Commonest leaf frames of the heaviest buckets outside the model: "
        + "; ".join(f"{b}: {', '.join(leaves)}" for b, leaves in run.hot_leaves.items() if leaves) + "."
        for run in runs)
    data = json.dumps([asdict(run) for run in runs], ensure_ascii=False).replace("-->", "--\\u003e")
    return f"""
{TITLE}

Where the CPU of one request goes: `mainsail serve MODEL --workers 2` in its default configuration
(and, with `--peer bare`, the bare ASGI app of the serve benchmark, the reference of what HTTP, the
event loop and the model cost anyway), serving the serve benchmark's XGBoost script under load, each
process sampled by py-spy. Each worker thread's CPU time over the window (from `/proc`) is split over
the buckets by that thread's samples, then divided by the requests served in the window. A stack goes
to the model when a frame of the script (`inference.py`) is in it (named after the function the server
called), else to the first frame, from the leaf up, that a rule of `bench/stacks.py` matches.

py-spy samples the thread that holds the GIL (`--gil`; `--all-threads` samples every running or
runnable thread, which on 2 busy cores mostly shows threads waiting for one). C code that runs
without the GIL (XGBoost's prediction, libuv's socket reads) is not sampled: the weighting spreads
its CPU over the same thread's other buckets. A thread holding the GIL is sampled also while the
kernel has preempted it or it sits in a slow system call, so a frame that makes one can collect more
than its own CPU (the leaf frames below say which). The profiler takes CPU from the same cores: read
the shares, and compare µs only between columns. Garbage collection is timed apart
(`gc.callbacks`, wall time in collections) and is already inside the other rows.

{chr(10).join(rows)}

{details}

<!-- bench:profile:data {data} -->
"""
