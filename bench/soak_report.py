"""The soak test's tables and its section of ``docs/reliability.md`` (``python -m bench soak``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from bench.report import checks_table, machine_summary, versions, write_section
from bench.soak import (
    CAPACITY_MODES,
    HELD_LATE_MS,
    HELD_RATE_SHARE,
    P99_DRIFT_TARGET_PCT,
    RSS_GROWTH_TARGET_PCT,
    SEARCH_S,
    SEARCH_WARMUP_SHARE,
    TARGETS,
    SoakBenchmark,
    run_soak_benchmark,
)

SECTION = "soak"
FILE_HEADER = """# mainsail reliability

Each section below is written by one check in `bench/` (`python -m bench <name>`) and is replaced,
and only it, when that check runs again. The machines these run on are shared and noisy: the load
figures beside each table say how busy the machine was.
"""
VERSIONS = ("mainsail", "xgboost", "numpy", "pandas", "orjson", "starlette", "uvicorn", "uvloop", "httptools",
            "aiohttp")
TARGET_LABELS = {
    "up": "`mainsail up`: InvokeEndpoint's `POST /endpoints/NAME/invocations`, forwarded to the endpoint's one "
          "`ml.m5.large` instance (a `mainsail serve` started by the local backend)",
    "serve": "`mainsail serve` directly: `POST /invocations`",
}
TABLE_HEAD = ("| interval | ends at s | req/s | requests | errors | p50 ms | p99 ms | max ms | RSS MiB | root RSS MiB "
              "| fds | threads | processes | server CPU, cores | client: late p99 ms / CPU cores / connections | "
              "other load, cores | steal, cores |")


def interval_table(bench: SoakBenchmark) -> str:
    rows = [TABLE_HEAD, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    b = bench.before
    if b is not None:
        rows.append(f"| before (idle, after the capacity run) | – | – | – | – | – | – | – | {b.rss_mib:,.1f} | "
                    f"{b.root_rss_mib:,.1f} | {b.fds} | {b.threads} | {b.processes} | – | – | – | – |")
    for i in bench.intervals:
        load, p = i.load, i.procs
        name = "warm-up" if load.phase == "warmup" else str(load.index)
        rows.append(f"| {name} | {load.end_s:g} | {load.rps:,.1f} | {load.requests:,} | {load.errors:,} | "
                    f"{load.p50_ms:.2f} | {load.p99_ms:.2f} | {load.max_ms:.2f} | {p.rss_mib:,.1f} | "
                    f"{p.root_rss_mib:,.1f} | {p.fds} | {p.threads} | {p.processes} | {i.server_cores:.2f} | "
                    f"{load.late_p99_ms:.2f} / {i.client_cores:.2f} / {load.connections} | {i.other_cores:.2f} | "
                    f"{i.steal_cores:.2f} |")
    return "\n".join(rows)


def verdict(bench: SoakBenchmark) -> str:
    return "PASS" if bench.passed else "FAIL"


def capacity_text(bench: SoakBenchmark) -> str:
    if bench.fixed_rate or bench.capacity is None:
        return f"No capacity run: the rate was fixed at {bench.rate:,.1f} req/s (`--rate`)."
    c = bench.capacity
    tool = "wrk" if bench.capacity_loadgen == "wrk" else "`bench.loadgen`"
    closed = (f"closed loop with {tool} at concurrency {c.concurrency} for {c.duration_s:g} s after a discarded 1 s: "
              f"{c.rps:,.1f} req/s (p50 {c.p50_ms:.2f} ms, p99 {c.p99_ms:.2f} ms, {c.errors} errors; the server used "
              f"{bench.capacity_cores[0]:.2f} cores, other processes {bench.capacity_cores[1]:.2f})")
    if bench.sustained_rate is None:
        return f"Capacity: {closed}. Soak rate: {bench.load:.0%} of it, {bench.rate:,.1f} req/s."
    if not bench.search or not bench.sustained_rate:
        return f"Capacity: no open-loop rate was held (upper bound, {closed}); soak rate {bench.rate:,.1f} req/s."
    held = bench.search[-1]
    return (f"Capacity: {bench.sustained_rate:,.1f} req/s, the highest open-loop rate the server held "
            f"({held.fraction:.0%} of the upper bound, {closed}; the search is tabled below). "
            f"Soak rate: {bench.load:.0%} of it, {bench.rate:,.1f} req/s.")


def search_table(bench: SoakBenchmark) -> str:
    if not bench.search:
        return ""
    rows = ["| share of the closed-loop figure | rate asked, req/s | answered, req/s | p50 ms | p99 ms "
            "| client late p99 ms | errors | held |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for t in bench.search:
        r = t.result
        rows.append(f"| {t.fraction:.0%} | {t.rate:,.1f} | {r.rps:,.1f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
                    f"{r.late_p99_ms:.2f} | {r.errors:,} | {'yes' if t.held else 'no'} |")
    return "\n".join(rows)


def summary_text(bench: SoakBenchmark) -> str:
    soak = bench.soak
    served = sum(i.load.requests for i in bench.intervals)
    worst = max((i.load.p99_ms for i in soak), default=0.0)
    fds = [i.procs.fds for i in soak]
    batch = (f" Requests per model call over the server's life (`BatchSize` of the instance's `/metrics`): "
             f"{bench.batch_mean:.2f}." if bench.batch_mean is not None else "")
    behind = bench.behind
    queued = (f" **The server did not keep up with the rate** in interval{'s' if len(behind) > 1 else ''} "
              f"{', '.join(str(i.load.index) for i in behind)}: requests waited in the client for a free "
              f"connection (client late p99 up to {max(i.load.late_p99_ms for i in behind):,.0f} ms), so their "
              "latency is mostly queueing and the p99 drift does not measure the server's own drift; compare "
              "the server and other-load CPU columns with the capacity run's, and rerun on a quieter machine "
              "or with a lower `--load`." if behind else "")
    trend = bench.p99_trend_pct
    spread = (f" Interval p99 ranged {min(i.load.p99_ms for i in soak):.2f}–{worst:.2f} ms; its least-squares "
              f"line rises {trend:+.1f} % of the median interval p99 from the first interval to the last (the "
              "drift check compares two single minutes; the line weighs them all)." if trend is not None else "")
    return (f"{served:,} requests in the warm-up and soak, {bench.errors:,} failed (capacity run included). "
            f"Worst interval p99: {worst:.2f} ms.{spread} Open file descriptors ranged {min(fds, default=0)}–"
            f"{max(fds, default=0)} over the soak intervals.{batch}{queued}")


def console_text(bench: SoakBenchmark) -> str:
    lines = [search_table(bench), "", interval_table(bench), "", capacity_text(bench), summary_text(bench), ""]
    for check in bench.checks():
        lines.append(f"{check.name}: {check.measured} (target {check.target}): {check.verdict.strip('*')}")
    lines.append(f"soak: {verdict(bench)}")
    return "\n".join(lines)


def _capacity_method(bench: SoakBenchmark) -> str:
    if bench.fixed_rate:
        return "* **Rate**: fixed by `--rate`; no capacity run."
    closed = (f"* **Capacity**: first a closed-loop run at concurrency {bench.capacity_concurrency} with "
              f"{'wrk' if bench.capacity_loadgen == 'wrk' else '`bench/loadgen.py`'}\n"
              "  against the same URL as the soak (a Python client like the soak's: client and server share the\n"
              "  machine's 2 cores).")
    if bench.capacity_mode == "closed":
        return closed + f" Its req/s is the capacity; the soak holds {bench.load:.0%} of it (`--capacity-mode closed`)."
    return closed + f""" Its req/s is an upper bound, not the capacity: with 64 requests always waiting, the
  batcher's calls are larger (and each request cheaper) than under a steady stream of single requests, and
  80 % of it was more than the server held open loop (the run of 2026-12-07 20:54 UTC: 2,016 of 2,520
  req/s, with requests queueing in the client the whole ten minutes). Then the soak's own client
  (`bench/rateload.py`, open loop) runs {SEARCH_WARMUP_SHARE * bench.search_s:g} s + {bench.search_s:g} s
  at 100 %, 95 %, 90 %, ... of that bound and stops at the first rate the server **held**: no failed request, at least
  {HELD_RATE_SHARE:.0%} of the asked rate answered, and requests leaving the client at most
  {HELD_LATE_MS:g} ms late at p99 (no queue building behind the server). That rate is the capacity; the
  soak holds {bench.load:.0%} of it. Failures in the runs that were not held are overload by design and
  are not counted (`--capacity-mode closed` takes the closed-loop figure as the capacity instead)."""


def render_section(bench: SoakBenchmark) -> str:
    short = ""
    if bench.duration_s < 600 or bench.interval_s != 60:
        short = (f"\n> **A shorter run than the issue's** (10 minutes, reported per minute): {bench.duration_s:g} s "
                 f"reported every {bench.interval_s:g} s. Read the drift figures with that in mind.\n")
    before, after = bench.load_average
    return f"""
## Soak

Run on {bench.started:%Y-%m-%d %H:%M} UTC with `{bench.command}` ({bench.wall_s:.0f} s in all); code
{bench.code}.
{short}
* **Target**: {TARGET_LABELS[bench.target]}.
* **Machine**: {machine_summary()}; load average (1, 5, 15 min) {before} before the run, {after} after it.
* **Versions**: {versions(VERSIONS)}.

### Verdict: {verdict(bench)}

{checks_table(bench.checks())}

{capacity_text(bench)} {summary_text(bench)}

{search_table(bench)}

### Per interval

{interval_table(bench)}

### Method

* **Model**: the tabular XGBoost demo (`bench/tabular.py`: 100 trees, 30 features with risk tables,
  imputation and a calibration table), served by mainsail's built-in tabular handler with adaptive
  batching on (`MAINSAIL_BATCHING=true` in the model's environment, the default made explicit) and
  {bench.workers} workers. Every request is the same one JSON record (`application/json`).
{_capacity_method(bench)}
* **Soak load** (`bench/rateload.py`, its own process): open loop at a constant rate. Request *i* is due
  at *start + i / rate* whatever became of the earlier ones; it goes out on an idle keep-alive
  connection, or a new one while fewer than {bench.capacity_concurrency} are open (the capacity run's
  concurrency: a client's connection pool), else it waits in the client for one. Latency runs from the
  due time to the last byte of the answer, so time a request spent queued in the client counts (no
  coordinated omission). "client" shows how late requests left the client (p99; waiting for a
  connection included), the CPU the load generator used and the connections it had open at the
  interval's end: its own health on a shared machine. A request fails when it is unanswered 10 s after
  it went out, or still waiting for a connection 10 s after it was due. Each interval counts the
  requests that *completed* in it; p50 and p99 are over its 2xx answers, errors are every non-2xx
  answer, socket error and timeout. A {bench.warmup_s:g} s warm-up at the same rate comes first and
  counts only for errors.
* **Processes**: at the end of each interval, `VmRSS` and `Threads` of `/proc/<pid>/status` and the
  entries of `/proc/<pid>/fd` are summed over the server's processes: the root process (`mainsail up`,
  or `mainsail serve`'s supervisor; "root RSS") and all its descendants (the instance's supervisor, its
  workers and any helper process). RSS counts pages shared between processes in each of them. "server
  CPU" is their CPU over the interval; "other load" is the machine's busy CPU minus theirs and the load
  generator's; "steal" is the CPU the hypervisor gave other guests while this virtual machine's cores
  wanted it (`/proc/stat`'s steal): noise from beyond the machine, which slows every process here alike.
* **Targets**: the last interval against the first one after the warm-up: RSS growth under
  {RSS_GROWTH_TARGET_PCT:g} %, p99 drift under {P99_DRIFT_TARGET_PCT:g} % (a drop passes), and no failed request
  anywhere. The command exits non-zero when a target is not met.
"""


def add_soak_arguments(parser: argparse.ArgumentParser, out: Path) -> None:
    parser.add_argument("--target", choices=TARGETS, default="up",
                        help="up: InvokeEndpoint through mainsail up (default); serve: mainsail serve directly")
    parser.add_argument("--duration", type=float, default=600.0,
                        help="seconds of soak after the warm-up (default 600)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per reported interval (default 60)")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds at the soak rate before the first interval, not compared (default 30)")
    parser.add_argument("--capacity-seconds", type=float, default=15.0,
                        help="seconds of the closed-loop capacity run (default 15)")
    parser.add_argument("--capacity-concurrency", type=int, default=64,
                        help="connections of the capacity run (default 64)")
    parser.add_argument("--load", type=float, default=0.8,
                        help="the soak rate as a fraction of the capacity (default 0.8)")
    parser.add_argument("--rate", type=float, default=None, help="hold this many req/s instead (no capacity run)")
    parser.add_argument("--capacity-client", choices=("python", "wrk"), default="python",
                        help="client of the capacity run (default python: bench.loadgen, like the soak's client)")
    parser.add_argument("--capacity-mode", choices=CAPACITY_MODES, default="open",
                        help="open: the highest open-loop rate held, searched below the closed-loop figure "
                             "(default); closed: the closed-loop figure itself")
    parser.add_argument("--search-seconds", type=float, default=SEARCH_S,
                        help=f"measured seconds of each run of the open-loop capacity search (default {SEARCH_S:g})")
    parser.add_argument("--workers", type=int, default=2, help="model-server workers (default 2)")
    parser.add_argument("--requests-csv", type=Path, default=None,
                        help="also write every request (due time, latency, status) to this CSV file")
    parser.add_argument("--out", type=Path, default=out, help=f"markdown file to update (default {out.name})")
    parser.set_defaults(rounds=1)


def run_and_report(args: argparse.Namespace, *, command: str, log: Callable[[str], None]) -> int:
    """Run the soak from ``add_soak_arguments``' arguments, print it, write its section; 0 on PASS, 1 on FAIL."""
    try:
        bench = run_soak_benchmark(
            target=args.target, duration_s=args.duration, interval_s=args.interval, warmup_s=args.warmup,
            capacity_s=args.capacity_seconds, capacity_concurrency=args.capacity_concurrency, load=args.load,
            rate=args.rate, workers=args.workers, capacity_client=args.capacity_client,
            capacity_mode=args.capacity_mode, search_s=args.search_seconds,
            requests_csv=args.requests_csv, command=command, log=log)
    except ValueError as exc:
        raise SystemExit(f"python -m bench soak: {exc}") from None
    print()
    print(console_text(bench))
    write_section(args.out, SECTION, render_section(bench), header=FILE_HEADER)
    print(f"\nwrote the soak section of {args.out} ({bench.wall_s:.0f} s in all)")
    return 0 if bench.passed else 1
