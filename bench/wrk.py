"""wrk as the load generator: a Lua script that posts the body file, ``wrk --latency``, parsed into a LoadResult.

wrk (https://github.com/wg/wrk) is a C client on epoll: it costs the machine far less CPU per request
than the Python load generator (``bench.loadgen``), which matters on a 2-core machine where the client
shares the cores with the server. It is used when it is on the PATH (``--loadgen auto``). wrk keeps
connections alive and reconnects when a server closes them; like ``bench.loadgen`` it does not
correct for coordinated omission. Its durations are whole seconds. It does not say how many
connections it opened, so ``LoadResult.connections_opened`` is -1 (unknown).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

from bench.loadgen import LoadResult

LOADGENS = ("auto", "wrk", "python")
_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_LATENCY = re.compile(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE)
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_SOCKET = re.compile(r"Socket errors:\s*connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk_path() -> str | None:
    return shutil.which("wrk")


def choose_loadgen(choice: str) -> str:
    """``wrk`` or ``python``: ``auto`` is wrk when it is installed; asking for a missing wrk is an error."""
    if choice not in LOADGENS:
        raise ValueError(f"unknown load generator {choice!r}: one of {LOADGENS}")
    if choice == "wrk" and wrk_path() is None:
        raise RuntimeError("--loadgen wrk: wrk is not on the PATH (apt-get install wrk)")
    if choice == "auto":
        return "wrk" if wrk_path() is not None else "python"
    return choice


def lua_script(body_file: Path, content_type: str, accept: str = "application/json") -> str:
    """The wrk script: every request a POST of the body file's bytes with its Content-Type."""
    return (
        'wrk.method = "POST"\n'
        f"local f = assert(io.open({_lua_string(str(body_file))}, \"rb\"))\n"
        "wrk.body = f:read(\"*a\")\n"
        "f:close()\n"
        f"wrk.headers[\"Content-Type\"] = {_lua_string(content_type)}\n"
        f"wrk.headers[\"Accept\"] = {_lua_string(accept)}\n"
    )


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_seconds(seconds: float) -> int:
    """wrk takes whole seconds: the nearest, at least 1."""
    return max(1, round(seconds))


def wrk_argv(url: str, script: Path, *, concurrency: int, duration_s: float, threads: int = 1,
             timeout_s: float = 10.0) -> list[str]:
    return [wrk_path() or "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{wrk_seconds(duration_s)}s",
            "--timeout", f"{wrk_seconds(timeout_s)}s", "--latency", "-s", str(script), url]


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if match is None:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk_output(text: str, concurrency: int, client_cpu_s: float | None = None) -> LoadResult:
    """A ``wrk --latency`` report as a LoadResult (rps over wrk's own measured run time)."""
    requests_match = _REQUESTS.search(text)
    latency = _LATENCY.search(text)
    if requests_match is None or latency is None:
        raise ValueError(f"not a wrk --latency report:\n{text[-2000:]}")
    requests = int(requests_match.group(1))
    duration_s = _ms(requests_match.group(2) + requests_match.group(3)) / 1e3
    percentiles = {int(q): _ms(v) for q, v in _PERCENTILE.findall(text)}
    errors, samples = 0, []
    non_2xx = _NON_2XX.search(text)
    if non_2xx:
        errors += int(non_2xx.group(1))
        samples.append(non_2xx.group(0))
    socket = _SOCKET.search(text)
    if socket and any(int(n) for n in socket.groups()):
        errors += sum(int(n) for n in socket.groups())
        samples.append(socket.group(0))
    return LoadResult(
        concurrency=concurrency, duration_s=duration_s, requests=requests, errors=errors,
        rps=requests / duration_s if duration_s > 0 else 0.0,
        p50_ms=percentiles.get(50, 0.0), p90_ms=percentiles.get(90, 0.0), p99_ms=percentiles.get(99, 0.0),
        max_ms=_ms(latency.group(3)),
        client_cpu_us_per_req=(client_cpu_s / requests * 1e6 if client_cpu_s is not None and requests else 0.0),
        connections_opened=-1, error_samples=samples,
    )


def run_wrk_once(argv: list[str], *, timeout_s: float, env: Mapping[str, str] | None = None) -> tuple[str, float]:
    """Run wrk; return (its stdout, the CPU seconds it used, from its rusage)."""
    with open(os.devnull, "rb") as stdin, subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                                            stderr=subprocess.STDOUT, env=env) as process:
        killer = threading.Timer(timeout_s, process.kill)
        killer.start()
        try:
            assert process.stdout is not None
            output = process.stdout.read().decode(errors="replace")
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {' '.join(argv)}\n{output[-2000:]}")
    return output, usage.ru_utime + usage.ru_stime


def run_wrk(url: str, body_file: Path, *, concurrency: int, duration_s: float, warmup_s: float,
            content_type: str = "text/csv", script_dir: Path | None = None) -> LoadResult:
    """Warm up with a short unmeasured wrk run (when ``warmup_s`` > 0), then measure ``duration_s``."""
    script = (script_dir or body_file.parent) / f"{body_file.stem}-{content_type.replace('/', '-')}.lua"
    script.write_text(lua_script(body_file, content_type))
    if warmup_s > 0:
        run_wrk_once(wrk_argv(url, script, concurrency=concurrency, duration_s=warmup_s),
                     timeout_s=wrk_seconds(warmup_s) + 30)
    output, cpu_s = run_wrk_once(wrk_argv(url, script, concurrency=concurrency, duration_s=duration_s),
                                 timeout_s=wrk_seconds(duration_s) + 30)
    return parse_wrk_output(output, concurrency, cpu_s)
