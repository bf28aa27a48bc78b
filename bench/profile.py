"""``python -m bench profile``: where the CPU of one request goes in ``mainsail serve``, by sampling.

It builds the serve benchmark's model, starts ``mainsail serve MODEL --workers 2`` in its default
configuration, warms it up, then loads it at concurrency 16 while one ``py-spy record --nonblocking
--threads -f raw`` per process samples each worker and the supervisor. Each sampled stack goes to a
bucket (``bench.stacks``); each worker thread's CPU time over the window (``/proc/PID/task/TID/stat``)
is split over its buckets by its samples, and divided by the requests served in the window: CPU µs
per request, per bucket. ``--peer bare`` profiles the bare ASGI app the same way, as the reference of
what is unavoidable (HTTP, event loop, the model). Garbage collection is timed apart, with
``gc.callbacks`` (a ``sitecustomize`` put first on the servers' ``PYTHONPATH``), since it runs inside
whatever frame allocated. The result replaces the "profile" section of docs/benchmarks.md;
``--append`` keeps the runs of other labels there, side by side.

py-spy samples the thread that holds the GIL (``--gil``): on a machine with more runnable threads than
cores, sampling every runnable thread fills the profile with threads that wait for a core (just woken
from epoll or from the executor's queue). The C code that runs without the GIL (XGBoost's prediction,
libuv's reads) is not sampled; the per-thread CPU weighting spreads it over that thread's buckets.
``--all-threads`` samples every running or runnable thread instead.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.loadgen import LoadResult
from bench.model import build_model_dir
from bench.procs import free_port, running
from bench.profile_report import SECTION, ProfileRun, console_table, merge, read_runs, render_section
from bench.report import machine_summary, versions
from bench.serve import run_loadgen
from bench.stacks import MODEL_BUCKETS, attribute, bucket_samples, top_stacks
from bench.systems import BARE, FASTAPI, HOST, MAINSAIL, MAINSAIL_TUNED, ROOT, SYSTEM_LABELS, system_argv
from bench.wrk import choose_loadgen, lua_script, parse_wrk_output, run_wrk_once, wrk_argv, wrk_seconds

PEERS = {"bare": BARE, "fastapi": FASTAPI}
_TICKS = os.sysconf("SC_CLK_TCK")
# Put first on the servers' PYTHONPATH: adds up the time of every collection of every process in
# BENCH_GC_DIR/PID.gc (seconds, collections: two numbers in a small mapped file, no write per collection).
# perf_counter, not thread_time: a thread's CPU clock is a system call, slow under load.
SITECUSTOMIZE = '''import gc, mmap, os, struct, time
_dir = os.environ.get("BENCH_GC_DIR")
_state = {"pid": 0, "map": None, "t0": 0.0}
def _gc_timer(phase, info):
    if phase == "start":
        _state["t0"] = time.perf_counter()
        return
    if _state["pid"] != os.getpid():
        path = os.path.join(_dir, "%d.gc" % os.getpid())
        with open(path, "wb") as f:
            f.write(bytes(16))
        fd = os.open(path, os.O_RDWR)
        _state["map"], _state["pid"] = mmap.mmap(fd, 16), os.getpid()
        os.close(fd)
    seconds, count = struct.unpack_from("dq", _state["map"])
    struct.pack_into("dq", _state["map"], 0, seconds + time.perf_counter() - _state["t0"], count + 1)
if _dir:
    gc.callbacks.append(_gc_timer)
'''


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("py-spy is not installed: pip install 'py-spy>=0.3' (it is in the dev extra)")
    return found


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's child processes, but multiprocessing's resource tracker."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == supervisor:
                if b"resource_tracker" not in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(pids)


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of ``pid``, by OS thread id."""
    out = {}
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        pass
    return out


def _cpu_delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    return {tid: seconds - before.get(tid, 0.0) for tid, seconds in after.items()}


def _gc_totals(gc_dir: Path, pids: list[int]) -> tuple[float, int]:
    import struct

    seconds, count = 0.0, 0
    for pid in pids:
        try:
            s, n = struct.unpack_from("dq", (gc_dir / f"{pid}.gc").read_bytes())
        except (OSError, struct.error):
            continue
        seconds, count = seconds + s, count + n
    return seconds, count


def _start_spy(spy: str, pid: int, out: Path, rate: int, gil: bool, seconds: int = 3600) -> subprocess.Popen[bytes]:
    # It stops by itself after ``seconds`` and writes its file (py-spy 0.4 can panic when interrupted instead).
    argv = [spy, "record", "--nonblocking", "--threads", "--full-filenames", "-r", str(rate), "-f", "raw",
            "-d", str(seconds), "-p", str(pid), "-o", str(out)] + (["--gil"] if gil else [])
    with open(out.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_sampling(spies: list[tuple[int, subprocess.Popen[bytes], Path]], timeout_s: float = 15.0) -> None:
    """Until every py-spy says it samples; fail clearly when one cannot attach (ptrace not permitted)."""
    deadline = time.monotonic() + timeout_s
    for pid, process, out in spies:
        log = out.with_suffix(".log")
        while "Sampling process" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace").strip()
                raise RuntimeError(
                    f"py-spy could not attach to process {pid}: {text[-800:] or 'no output'}\nSampling another "
                    "process needs ptrace: run as root or as the servers' user with kernel.yama.ptrace_scope=0, "
                    "or give py-spy CAP_SYS_PTRACE (in a container: --cap-add SYS_PTRACE).")
            time.sleep(0.05)


def _load(loadgen: str, url: str, body_file: Path, concurrency: int, duration_s: float) -> LoadResult:
    if loadgen == "wrk":
        script = body_file.with_suffix(".lua")
        output, cpu = run_wrk_once(wrk_argv(url, script, concurrency=concurrency, duration_s=duration_s),
                                   timeout_s=duration_s + 60)
        return parse_wrk_output(output, concurrency, cpu)
    return run_loadgen(url, body_file, concurrency=concurrency, duration_s=duration_s, warmup_s=0.0)


def profile_system(system: str, *, label: str, duration_s: float = 8.0, concurrency: int = 16, workers: int = 2,
                   loadgen: str = "auto", rate: int = 400, gil: bool = True, warmup_s: float = 2.0,
                   mainsail_src: Path | None = None, command: str = "python -m bench profile",
                   log: Callable[[str], None] = print) -> ProfileRun:
    """Serve the benchmark model with ``system``, load it, sample it with py-spy; see the module's docstring."""
    spy, loadgen = py_spy(), choose_loadgen(loadgen)
    if loadgen == "wrk":
        duration_s = float(wrk_seconds(duration_s))
    tmp = Path(tempfile.mkdtemp(prefix="mainsail-profile-"))
    try:
        model = build_model_dir(tmp / "model")
        body_file = tmp / "record.csv"
        body_file.write_bytes(model.csv_row)
        body_file.with_suffix(".lua").write_text(lua_script(body_file, "text/csv"))
        (tmp / "site").mkdir()
        (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        (tmp / "gc").mkdir()
        port = free_port()
        argv, env = system_argv(system, model.path, port, workers, tmp / "home", mainsail_src)
        env["PYTHONPATH"] = os.pathsep.join((str(tmp / "site"), env["PYTHONPATH"]))
        env["BENCH_GC_DIR"] = str(tmp / "gc")
        log(f"starting {SYSTEM_LABELS[system]}: {' '.join(argv)}")
        with running(f"profile-{system}", argv, host=HOST, port=port, env=env, cwd=ROOT) as server:
            url = f"{server.url}/invocations"
            supervisor, pids = server.process.pid, worker_pids(server.process.pid)
            log(f"  ready after {server.ready_s:.1f} s; supervisor {supervisor}, workers {pids}; "
                f"warming up {warmup_s:g} s")
            _load(loadgen, url, body_file, concurrency, warmup_s)
            spy_s = math.ceil(duration_s) + 1
            spies = [(pid, _start_spy(spy, pid, tmp / f"spy-{pid}.txt", rate, gil, spy_s), tmp / f"spy-{pid}.txt")
                     for pid in [*pids, supervisor]]
            try:
                _wait_sampling(spies)
                log(f"  sampling {len(spies)} processes at {rate} Hz under {duration_s:g} s of load at "
                    f"concurrency {concurrency} ({loadgen})")
                before = {pid: thread_cpu_s(pid) for pid in [*pids, supervisor]}
                gc_before = _gc_totals(tmp / "gc", pids)
                result = _load(loadgen, url, body_file, concurrency, duration_s)
                after = {pid: thread_cpu_s(pid) for pid in [*pids, supervisor]}
                gc_after = _gc_totals(tmp / "gc", pids)
                for _, process, _ in spies:
                    process.wait(spy_s + 30)
            finally:
                for _, process, _ in spies:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
        texts = {pid: out.read_text() if out.exists() else "" for pid, _, out in spies}
        spy_logs = " ".join(out.with_suffix(".log").read_text(errors="replace") for _, _, out in spies)
        worker_samples = [bucket_samples(texts[pid], model.script.name) for pid in pids]
        bucket_cpu: dict[str, float] = {}
        worker_cpu = {pid: _cpu_delta(before[pid], after[pid]) for pid in pids}
        for pid, samples in zip(pids, worker_samples, strict=True):
            cpu = worker_cpu[pid]
            for bucket, seconds in (attribute(samples, cpu) if samples else {}).items():
                bucket_cpu[bucket] = bucket_cpu.get(bucket, 0.0) + seconds
            log(f"  worker {pid}: " + ", ".join(f"thread {t}: {cpu[t]:.2f} s CPU, {sum(samples[t].values())} samples"
                                                for t in cpu if t in samples))
            if not samples and sum(cpu.values()) > 0.1:
                said = (tmp / f"spy-{pid}.log").read_text(errors="replace")
                log(f"  no samples of worker {pid}; py-spy: {re.findall(r'.*panicked.*', said)[:1] or said[-300:]}")
        if not any(worker_samples):
            raise RuntimeError(f"py-spy recorded no sample of the workers {pids}: {spy_logs[-1000:]}")
        # A worker py-spy failed on: the others' split stands for its CPU too (it ran the same code).
        total_cpu = sum(sum(cpu.values()) for cpu in worker_cpu.values())
        sampled_cpu = sum(sum(worker_cpu[p].values()) for p, s in zip(pids, worker_samples, strict=True) if s)
        bucket_cpu = {b: seconds * total_cpu / sampled_cpu for b, seconds in bucket_cpu.items()} if sampled_cpu else {}
        supervisor_buckets: Counter[str] = Counter()
        for counts in bucket_samples(texts[supervisor], model.script.name).values():
            supervisor_buckets += counts
        hot = {b: [f"{leaf} ×{n}" for leaf, n in top_stacks([texts[p] for p in pids], b, 3, model.script.name)]
               for b in sorted(bucket_cpu, key=bucket_cpu.__getitem__, reverse=True)
               if b not in MODEL_BUCKETS.values()}
        gc_seconds, gc_count = gc_after[0] - gc_before[0], gc_after[1] - gc_before[1]
        return ProfileRun(
            label=label, system=system, started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), command=command,
            source=("bench/peers" if system not in (MAINSAIL, MAINSAIL_TUNED) else
                    f"--mainsail-src {mainsail_src}" if mainsail_src else "the installed mainsail"),
            concurrency=concurrency, duration_s=duration_s, loadgen=loadgen,
            sampling="GIL holder only (--gil)" if gil else "running or runnable threads", rate=rate,
            requests=result.requests, rps=result.rps, p50_ms=result.p50_ms, errors=result.errors, workers=len(pids),
            worker_cpu_s=total_cpu,
            bucket_cpu_s=bucket_cpu,
            samples=sum(sum(c.values()) for s in worker_samples for c in s.values()),
            spy_errors=sum(int(n) for n in re.findall(r"Errors: (\d+)", spy_logs)),
            supervisor_cpu_s=sum(_cpu_delta(before[supervisor], after[supervisor]).values()),
            supervisor_buckets=dict(supervisor_buckets.most_common(4)),
            gc_s=gc_seconds if gc_count else None, gc_collections=gc_count if gc_count else None,
            hot_leaves=dict(list(hot.items())[:4]),
            unsampled_workers=sum(1 for p, s in zip(pids, worker_samples, strict=True)
                                  if not s and sum(worker_cpu[p].values()) > 0.1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_profile_arguments(parser: argparse.ArgumentParser, out: Path) -> None:
    parser.add_argument("--duration", type=float, default=8.0, help="seconds sampled under load (default 8)")
    parser.add_argument("--concurrency", type=int, default=16, help="connections of the load (default 16)")
    parser.add_argument("--label", default="current", help="the column's name, e.g. before or after")
    parser.add_argument("--peer", choices=sorted(PEERS), action="append",
                        help="also profile this peer the same way (bare: the bare ASGI app); repeatable")
    parser.add_argument("--mainsail-src", type=Path, default=None,
                        help="profile the mainsail package of this source tree (a checkout or its src/)")
    parser.add_argument("--append", action="store_true",
                        help="keep the section's runs of other labels (the same label and system is replaced)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (default auto: wrk when installed)")
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples per second (default 400)")
    parser.add_argument("--all-threads", action="store_true",
                        help="sample every running or runnable thread, not only the GIL holder")
    parser.add_argument("--out", type=Path, default=out, help="markdown file to update (default docs/benchmarks.md)")


def run_and_report(args: argparse.Namespace, *, command: str, log: Callable[[str], None]) -> int:
    from bench.report import write_section

    mainsail_src: Path | None = args.mainsail_src
    if mainsail_src is not None and (mainsail_src / "src" / "mainsail").is_dir():
        mainsail_src = mainsail_src / "src"
    if mainsail_src is not None and not (mainsail_src / "mainsail").is_dir():
        raise SystemExit(f"--mainsail-src {mainsail_src}: no mainsail package there (nor under src/)")
    runs = []
    for system in [MAINSAIL, *(PEERS[p] for p in args.peer or [])]:
        run = profile_system(system, label=args.label, duration_s=args.duration, concurrency=args.concurrency,
                             loadgen=args.loadgen, rate=args.rate, gil=not args.all_threads,
                             mainsail_src=mainsail_src.resolve() if mainsail_src and system == MAINSAIL else None,
                             command=command, log=log)
        print(f"\n{console_table(run)}\n", flush=True)
        runs.append(run)
    kept = merge(read_runs(args.out), runs) if args.append else runs
    write_section(args.out, SECTION, render_section(kept))
    print(f"wrote the profile section of {args.out} ({len(kept)} run(s): "
          f"{', '.join(run.title for run in kept)}); machine: {machine_summary()}; {versions(('mainsail',))}")
    return 1 if any(run.errors for run in runs) else 0
