"""The figures of docs/reliability.md's "Idle and slow connections": ``python -m bench.held_report``.

It starts ``mainsail serve`` (the benchmark's XGBoost model, 2 workers) and ``mainsail up`` (one endpoint
of the same model), each on a free loopback port with its default settings, and against each runs
:func:`bench.held_connections.hold` three times: twice for ``--hold`` seconds (under the 30 s head
timeout: every connection stays open; the second round shows whether memory keeps growing), then for
``--reap-hold`` seconds, long enough for the server to close every held connection itself.
``--out FILE`` replaces the figures between the ``held-connections`` markers of FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.control import ENDPOINT_NAME, create_endpoint, start_up
from bench.held_connections import HoldResult, Probe, Target, hold, http_request
from bench.model import build_model_dir
from bench.procs import free_port, running, stop
from bench.report import machine_summary, versions, write_section
from bench.serve import HOST, ROOT, server_env
from bench.systems import mainsail_argv

PACKAGES = ("mainsail", "uvicorn", "httptools", "uvloop", "starlette")
UP_SLOWLORIS = b"POST / HTTP/1.1\r\nHost: held\r\n"
UP_SLOW_BODY = (b"POST / HTTP/1.1\r\nHost: held\r\nX-Amz-Target: SageMaker.ListEndpoints\r\n"
                b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 65536\r\n\r\n")
AMZ_JSON = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.ListEndpoints"}


def split(total: int) -> dict[str, int]:
    """Half idle, a quarter slowloris, a quarter slow body."""
    return {"idle": total // 2, "slowloris": total // 4, "slow-body": total - total // 2 - total // 4}


def rounds(name: str, target: Target, pid: int, probes: list[Probe], total: int, hold_s: float,
           reap_hold_s: float) -> list[tuple[str, HoldResult]]:
    results = []
    for label, seconds in (("held", hold_s), ("held again", hold_s), ("until closed", reap_hold_s)):
        fresh = [Probe(p.name, p.request) for p in probes]
        result = asyncio.run(hold(name, target, pid, split(total), fresh, hold_s=seconds))
        print(f"{name} {label}: {describe(result)}", file=sys.stderr, flush=True)
        results.append((label, result))
    return results


def describe(r: HoldResult) -> str:
    probes = ", ".join(f"{p.name} {p.statuses} p50 {p.p(50):.1f} ms p99 {p.p(99):.1f} ms" for p in r.probes)
    return (f"opened {r.opened} in {r.open_s:.1f} s; still open {r.still_open}; answered {r.answered}; "
            f"rss {r.before.rss_mib:.0f}/{r.during.rss_mib:.0f}/{r.after.rss_mib:.0f} MiB; "
            f"fds {r.before.fds}/{r.during.fds}/{r.after.fds}; {probes}")


def run_serve(tmp: Path, total: int, hold_s: float, reap_hold_s: float) -> list[tuple[str, HoldResult]]:
    model = build_model_dir(tmp / "model")
    port = free_port()
    argv = mainsail_argv(model.path, port, 2)
    with running("mainsail-serve", argv, host=HOST, port=port, env=server_env(), cwd=ROOT) as server:
        probes = [Probe("GET /ping", http_request("GET", "/ping")),
                  Probe("POST /invocations", http_request("POST", "/invocations", model.csv_row,
                                                          {"Content-Type": "text/csv"}))]
        return rounds("mainsail serve", Target(HOST, port), server.process.pid, probes, total, hold_s, reap_hold_s)


def run_up(tmp: Path, total: int, hold_s: float, reap_hold_s: float) -> list[tuple[str, HoldResult]]:
    model = build_model_dir(tmp / "model-up")
    up = start_up(tmp / "home", tmp / "up.log")
    try:
        create_endpoint(up.url, model.path)
        probes = [Probe("ListEndpoints", http_request("POST", "/", b"{}", AMZ_JSON)),
                  Probe("InvokeEndpoint", http_request("POST", f"/endpoints/{ENDPOINT_NAME}/invocations",
                                                       model.csv_row, {"Content-Type": "text/csv"}))]
        target = Target(HOST, up.port, slowloris_head=UP_SLOWLORIS, slow_body_head=UP_SLOW_BODY)
        return rounds("mainsail up", target, up.process.pid, probes, total, hold_s, reap_hold_s)
    finally:
        stop(up)


def _ms(probe: Probe) -> str:
    return f"{probe.p(50):.1f} / {probe.p(99):.1f}"


def memory_table(results: list[tuple[str, list[tuple[str, HoldResult]], bool]]) -> str:
    rows = ["| server | round | connections held | RSS MiB before → peak → after | KiB per connection | "
            "descriptors before → peak → after | closed by the server before the client let go |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for server, rounds_, root_only in results:
        for label, r in rounds_:
            before, during, after = (r.root_before, r.root_during, r.root_after) if root_only else \
                (r.before, r.during, r.after)
            per_conn = (during.rss_kib - before.rss_kib) / max(1, r.held)
            timed_out = sum(n for by in r.answered.values() for status, n in by.items() if " 408 " in status)
            closed = (f"all, {r.reaped_after_s:.0f} s after the last was opened ({timed_out:,} answered 408)"
                      if r.reaped_after_s is not None else
                      f"{sum(r.opened.values()) - sum(r.still_open.values()):,}")
            held = f"{r.held:,}: " + ", ".join(f"{n:,} {mode}" for mode, n in r.opened.items())
            rows.append(f"| {server} | {label} | {held} | {before.rss_mib:.0f} → {during.rss_mib:.0f} → "
                        f"{after.rss_mib:.0f} | {per_conn:.1f} | {before.fds} → {during.fds:,} → {after.fds} "
                        f"| {closed} |")
    return "\n".join(rows)


def latency_table(results: list[tuple[str, list[tuple[str, HoldResult]], bool]]) -> str:
    rows = ["| server | round | good request | sent while held (not 200) | p50 / p99 ms alone | "
            "p50 / p99 ms while held |", "| --- | --- | --- | --- | --- | --- |"]
    for server, rounds_, _ in results:
        for label, r in rounds_:
            for probe in r.probes:
                bad = sum(n for status, n in probe.statuses.items() if status != 200)
                rows.append(f"| {server} | {label} | {probe.name} | {sum(probe.statuses.values()):,} ({bad}) | "
                            f"{_ms(r.probe(probe.name, baseline=True))} | {_ms(probe)} |")
    return "\n".join(rows)


def render(serve: list[tuple[str, HoldResult]], up: list[tuple[str, HoldResult]], command: str,
           hold_s: float, reap_hold_s: float) -> str:
    results = [("`mainsail serve`", serve, False), ("`mainsail up`", up, True)]
    return "\n\n".join([
        f"`{command}` on {machine_summary()}; {versions(PACKAGES)}. Each round opens the connections (half "
        f"idle, a quarter slowloris, a quarter slow body), holds them {hold_s:g} s (twice), then "
        f"{reap_hold_s:g} s, past the 30 s head timeout. RSS and descriptors: `mainsail serve`'s supervisor "
        "and 2 workers summed; `mainsail up`'s own process (its endpoint's instance, which no held connection "
        "reaches, is left out).",
        memory_table(results),
        "Good requests, one at a time, each on a new connection (connect to last byte), from a process of their "
        "own; \"alone\" is the 2 s just before the round's connections open:",
        latency_table(results),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.held_report", description=__doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=20.0)
    parser.add_argument("--reap-hold", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    command = "python -m bench.held_report " + shlex.join(sys.argv[1:])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="held-") as tmp:
        serve = run_serve(Path(tmp), args.connections, args.hold, args.reap_hold)
        up = run_up(Path(tmp), args.connections, args.hold, args.reap_hold)
    text = render(serve, up, command.strip(), args.hold, args.reap_hold)
    print(text)
    if args.out is not None:
        write_section(args.out, "held-connections", text, header="# Reliability\n")
    print(f"\n{time.monotonic() - started:.0f} s in all", file=sys.stderr)
    bad = sum(n for _, r in serve + up for p in r.probes for status, n in p.statuses.items() if status != 200)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
