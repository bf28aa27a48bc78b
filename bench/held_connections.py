"""Idle and slow connections held open against a server while good requests are timed (issue 18).

A loopback load tool, bounded in count and time: it opens connections to a server in batches and holds
them in one of three ways, while it sends good requests on fresh connections and reads the server's
memory and descriptors from ``/proc``:

* ``idle``: connect, send nothing;
* ``slowloris``: a request line and a header, then one byte of another header line every
  ``interval`` seconds, never ending the head;
* ``slow-body``: a whole head with ``Content-Length``, then one byte of body every ``interval`` seconds.

Every socket is closed in a ``finally``, and every wait has a deadline. ``python -m bench.held_connections``
starts ``mainsail serve`` and ``mainsail up`` itself (see :mod:`bench.held_report`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.loadgen import percentile

MODES = ("idle", "slowloris", "slow-body")
SLOWLORIS_LINE = b"X-Slow: a\r\n"
"""What a slowloris connection sends, a byte at a time, after its first header."""


# -- the server's processes --------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Resident memory and open descriptors of a set of processes, summed."""

    rss_kib: int
    fds: int
    processes: int

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024


def tree_pids(root: int) -> list[int]:
    """``root`` and every live process below it (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


def usage(pids: Sequence[int]) -> Usage:
    """VmRSS (from ``/proc/PID/status``) and descriptor counts of ``pids``, summed over those alive."""
    rss = fds = alive = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            count = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        line = next((ln for ln in status.splitlines() if ln.startswith("VmRSS:")), "VmRSS: 0 kB")
        rss += int(line.split()[1])
        fds += count
        alive += 1
    return Usage(rss, fds, alive)


# -- held connections --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where to hold connections and what a slow connection starts with."""

    host: str
    port: int
    slowloris_head: bytes = b"GET /ping HTTP/1.1\r\nHost: held\r\n"
    slow_body_head: bytes = (b"POST /invocations HTTP/1.1\r\nHost: held\r\nContent-Type: text/csv\r\n"
                             b"Content-Length: 65536\r\n\r\n")


@dataclass
class Held:
    """Connections held open in one ``mode``; the server-closed ones are counted by :meth:`sweep`."""

    target: Target
    mode: str
    sockets: list[socket.socket] = field(default_factory=list)
    refused: int = 0
    """Connections that could not be opened (refused, reset, timed out)."""
    closed_by_server: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    """What the server wrote before closing, by its status line (``HTTP/1.1 408 ...``)."""
    sent_bytes: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}: use one of {', '.join(MODES)}")

    async def open(self, count: int, *, concurrency: int = 256, timeout_s: float = 20.0) -> None:
        """Open ``count`` connections, ``concurrency`` at a time (a burst beyond the server's listen
        backlog would wait on SYN retries), and send each its first bytes."""
        loop = asyncio.get_running_loop()
        first = {"idle": b"", "slowloris": self.target.slowloris_head,
                 "slow-body": self.target.slow_body_head}[self.mode]
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    await asyncio.wait_for(loop.sock_connect(sock, (self.target.host, self.target.port)),
                                           timeout_s)
                    if first:
                        sock.send(first)
                except (OSError, TimeoutError):
                    sock.close()
                    self.refused += 1
                    return
                self.sockets.append(sock)

        await asyncio.gather(*(one() for _ in range(count)))

    async def dribble(self, batch: int = 500) -> None:
        """One more byte on every slow connection still open (nothing for ``idle``), ``batch`` at a time
        between turns of the event loop (the good requests share it)."""
        if self.mode != "idle":
            byte = b"1" if self.mode == "slow-body" else SLOWLORIS_LINE[self.sent_bytes % len(SLOWLORIS_LINE):][:1]
            self.sent_bytes += 1
            for start in range(0, len(self.sockets), batch):
                for sock in self.sockets[start:start + batch]:
                    with contextlib.suppress(OSError):
                        sock.send(byte)
                await asyncio.sleep(0)
        self.sweep()

    def sweep(self) -> int:
        """Drop the connections the server has closed (or answered); the number still open."""
        still = []
        for sock in self.sockets:
            try:
                data = sock.recv(256, socket.MSG_PEEK)
            except BlockingIOError:
                still.append(sock)
                continue
            except OSError:
                data = b""
            if data:
                status = data.split(b"\r\n", 1)[0].decode("latin-1")
                self.answered[status] = self.answered.get(status, 0) + 1
            self.closed_by_server += 1
            sock.close()
        self.sockets = still
        return len(still)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


# -- good requests -----------------------------------------------------------------------------


@dataclass
class Probe:
    """A good request: raw HTTP/1.1 bytes (``Connection: close``), sent on a fresh connection."""

    name: str
    request: bytes
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies_ms), q)

    def reset(self) -> None:
        self.statuses, self.latencies_ms, self.errors = {}, [], []


def http_request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: probe", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def send_probe(host: str, port: int, probe: Probe, timeout_s: float = 10.0) -> None:
    """One good request on a new connection: its status and latency (connect to last byte) recorded."""
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(probe.request)
            response = await reader.read()
        status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0
    except (OSError, TimeoutError, ValueError, IndexError) as exc:
        probe.errors.append(f"{type(exc).__name__}: {exc}")
        status = 0
    finally:
        if writer is not None:
            writer.close()
    probe.statuses[status] = probe.statuses.get(status, 0) + 1
    if status:
        probe.latencies_ms.append((time.perf_counter() - started) * 1e3)


async def probe_for(host: str, port: int, probes: Sequence[Probe], seconds: float, pause_s: float = 0.02) -> None:
    """Send the probes in turn, one at a time, for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for probe in probes:
            await send_probe(host, port, probe)
        await asyncio.sleep(pause_s)


def _probe_here(host: str, port: int, requests: list[tuple[str, bytes]], seconds: float) -> list[Probe]:
    probes = [Probe(name, request) for name, request in requests]
    asyncio.run(probe_for(host, port, probes, seconds))
    return probes


async def probe_apart(host: str, port: int, probes: Sequence[Probe], seconds: float) -> None:
    """:func:`probe_for` in a process of its own, so that the work of holding thousands of connections
    (sending, sweeping, reading ``/proc``) does not delay the good requests' clocks; results into ``probes``."""
    loop = asyncio.get_running_loop()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = await asyncio.wait_for(
            loop.run_in_executor(pool, _probe_here, host, port, [(p.name, p.request) for p in probes], seconds),
            seconds + 60)
    for probe, result in zip(probes, done, strict=True):
        probe.statuses, probe.latencies_ms, probe.errors = result.statuses, result.latencies_ms, result.errors


# -- one run -----------------------------------------------------------------------------------


@dataclass
class HoldResult:
    """What one hold against one server measured."""

    server: str
    counts: dict[str, int]
    before: Usage
    during: Usage
    """The highest RSS and descriptor counts sampled while the connections were held."""
    after: Usage
    root_before: Usage
    """The same three of the server's first process alone (``mainsail up`` without its instances)."""
    root_during: Usage
    root_after: Usage
    opened: dict[str, int]
    open_s: float
    still_open: dict[str, int]
    """Per mode, how many were still open when the client let go."""
    answered: dict[str, dict[str, int]]
    probes: list[Probe]
    baseline: list[Probe]
    hold_s: float
    closed_after_s: float | None = None
    """How long after the client let go the server's descriptors were back near the baseline."""
    reaped_after_s: float | None = None
    """When the server had closed every held connection itself, counted from the last one opened
    (None: some were still open when the client let go)."""

    @property
    def held(self) -> int:
        return sum(self.opened.values())

    def probe(self, name: str, *, baseline: bool = False) -> Probe:
        return next(p for p in (self.baseline if baseline else self.probes) if p.name == name)


async def hold(server: str, target: Target, root_pid: int, counts: dict[str, int], probes: Sequence[Probe], *,
               hold_s: float, interval_s: float = 2.0, baseline_s: float = 2.0, settle_s: float = 15.0,
               fd_slack: int = 64) -> HoldResult:
    """Measure ``probes`` alone, then hold ``counts`` connections (by mode) for ``hold_s`` seconds while the
    probes run again, then let go and wait up to ``settle_s`` for the server's descriptors to come back."""
    baseline = [Probe(p.name, p.request) for p in probes]
    await probe_apart(target.host, target.port, baseline, baseline_s)
    before, root_before = usage(tree_pids(root_pid)), usage([root_pid])
    helds = [Held(target, mode) for mode in counts]
    peak, root_peak = [before.rss_kib, before.fds], [root_before.rss_kib, root_before.fds]
    try:
        started = time.monotonic()
        for held in helds:
            await held.open(counts[held.mode])
        open_s = time.monotonic() - started
        for probe in probes:
            probe.reset()
        prober = asyncio.create_task(probe_apart(target.host, target.port, probes, hold_s))
        deadline = time.monotonic() + hold_s
        reaped_after = None
        while not prober.done():
            for sample, high in ((usage(tree_pids(root_pid)), peak), (usage([root_pid]), root_peak)):
                high[:] = max(high[0], sample.rss_kib), max(high[1], sample.fds)
            for held in helds:
                await held.dribble()
            if reaped_after is None and not any(held.sockets for held in helds):
                reaped_after = time.monotonic() - started - open_s
            await asyncio.wait([prober], timeout=min(interval_s, max(0.05, deadline - time.monotonic() + 5)))
        await prober
        still_open = {held.mode: held.sweep() for held in helds}
    finally:
        for held in helds:
            held.close()
    let_go = time.monotonic()
    closed_after: float | None = None
    while time.monotonic() - let_go < settle_s:
        now = usage(tree_pids(root_pid))
        if now.fds <= before.fds + fd_slack:
            closed_after = time.monotonic() - let_go
            break
        await asyncio.sleep(0.25)
    after = usage(tree_pids(root_pid))
    return HoldResult(server, dict(counts), before, Usage(peak[0], peak[1], before.processes), after,
                      root_before, Usage(root_peak[0], root_peak[1], 1), usage([root_pid]),
                      {h.mode: counts[h.mode] - h.refused for h in helds}, open_s, still_open,
                      {h.mode: dict(h.answered) for h in helds}, list(probes), baseline, hold_s, closed_after,
                      reaped_after)
