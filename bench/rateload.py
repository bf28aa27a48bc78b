"""An open-loop load generator: requests start on a fixed schedule, at a constant rate, answered or not.

Request ``i`` is due at ``start + i / rate`` whatever became of the earlier ones (wrk2's constant
throughput, which wrk lacks). It goes out on an idle keep-alive connection, or on a new one while
fewer than ``max_connections`` are open, else it waits for one. Its latency runs from the moment
it was *due* to the last byte of its answer, so a server (or a client) that falls behind is charged
for every request that queued behind it: unlike ``bench.loadgen`` and wrk, this corrects for
coordinated omission. A request fails when it is unanswered ``timeout_s`` after it went out, or
still waiting for a connection ``timeout_s`` after it was due (so a server that cannot keep up
shows errors as it goes, not a queue that grows to the end of the run).

The run is cut into intervals (a warm-up first, when there is one); each interval counts the
requests that *completed* in it and is reported as it ends: statuses, errors, p50/p90/p99/max of
the 2xx answers, how late the client sent (its own health), its CPU and the connections open.
``python -m bench.rateload URL --body-file F --rate 800 --duration 600 --interval 60`` prints one
JSON object per interval; ``--log FILE`` also writes a CSV line per request (due time, latency, status).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from bench.loadgen import HttpConnection, percentile

WARMUP, SOAK = "warmup", "soak"
TIMER_SLACK_S = 0.001
"""A request goes out up to this early; its latency then runs from when it went out, not from its due time."""


@dataclass
class IntervalResult:
    """The requests that completed within one interval. Latencies in milliseconds, times in seconds
    from the start of the schedule."""

    phase: str
    index: int
    """0 for the warm-up, then 1, 2, ..."""
    start_s: float
    end_s: float
    due: int
    """Requests scheduled to start in the interval."""
    requests: int
    """Requests completed in it (answered or failed)."""
    errors: int
    statuses: dict[str, int]
    """How many completed with each HTTP status ("error" for no answer: a socket error or timeout)."""
    rps: float
    """2xx answers per second of the interval."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    late_p99_ms: float
    """p99 of how late the client sent a request after it was due (waiting for a connection included)."""
    in_flight: int
    connections: int
    client_cpu_s: float
    error_samples: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> IntervalResult:
        return cls(**json.loads(text))


def interval_bounds(duration_s: float, interval_s: float, warmup_s: float = 0.0) -> list[tuple[str, int, float, float]]:
    """(phase, index, start, end) of each interval: the warm-up (when > 0), then ``duration_s`` cut into
    ``interval_s`` pieces (the last one shorter when it does not divide)."""
    if duration_s <= 0 or interval_s <= 0 or warmup_s < 0:
        raise ValueError("duration_s and interval_s must be positive, warmup_s not negative")
    bounds = [(WARMUP, 0, 0.0, warmup_s)] if warmup_s > 0 else []
    count = max(1, math.ceil(duration_s / interval_s - 1e-9))
    for k in range(count):
        bounds.append((SOAK, k + 1, warmup_s + k * interval_s, warmup_s + min((k + 1) * interval_s, duration_s)))
    return bounds


class _Bucket:
    def __init__(self) -> None:
        self.due = 0
        self.latencies: list[float] = []
        self.late: list[float] = []
        self.statuses: collections.Counter[str] = collections.Counter()
        self.errors = 0
        self.samples: list[str] = []
        self.cpu_start = time.process_time()

    def result(self, phase: str, index: int, start_s: float, end_s: float, in_flight: int,
               connections: int) -> IntervalResult:
        self.latencies.sort()
        self.late.sort()
        ok = len(self.latencies)
        return IntervalResult(
            phase=phase, index=index, start_s=start_s, end_s=end_s, due=self.due, requests=ok + self.errors,
            errors=self.errors, statuses=dict(self.statuses), rps=ok / (end_s - start_s) if end_s > start_s else 0.0,
            p50_ms=percentile(self.latencies, 50) * 1e3, p90_ms=percentile(self.latencies, 90) * 1e3,
            p99_ms=percentile(self.latencies, 99) * 1e3, max_ms=(self.latencies[-1] * 1e3 if ok else 0.0),
            late_p99_ms=percentile(self.late, 99) * 1e3, in_flight=in_flight, connections=connections,
            client_cpu_s=time.process_time() - self.cpu_start, error_samples=self.samples)


async def run_rate(url: str, body: bytes, content_type: str, *, rate: float, duration_s: float, interval_s: float,
                   warmup_s: float = 0.0, timeout_s: float = 10.0, max_connections: int = 512,
                   emit: Callable[[IntervalResult], None], log: TextIO | None = None) -> None:
    """Send ``rate`` requests per second for ``warmup_s + duration_s`` seconds; ``emit`` each interval as it ends.

    Callbacks rather than a task per request: at a few hundred requests per second the client's CPU
    per request is mostly the event loop's own, and it shares the cores with the server.
    """
    if rate <= 0 or timeout_s <= 0 or max_connections < 1:
        raise ValueError("rate and timeout_s must be positive, max_connections at least 1")
    bounds = interval_bounds(duration_s, interval_s, warmup_s)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
               f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    idle: list[HttpConnection] = []
    queued: collections.deque[float] = collections.deque()  # due times of requests waiting for a connection
    inflight: dict[int, tuple[float, HttpConnection]] = {}
    connecting: set[asyncio.Task[None]] = set()
    reused: set[int] = set()  # connections that answered once already (a new one fails for real)
    ids = itertools.count()
    total = int(round(bounds[-1][3] * rate))
    opened = outstanding = scheduled = 0
    bucket = _Bucket()
    drained: asyncio.Future[None] = loop.create_future()
    start = time.perf_counter()

    def finish(due: float, status: int, detail: str) -> None:
        nonlocal outstanding
        latency = time.perf_counter() - due
        if 200 <= status < 300:
            bucket.latencies.append(latency)
        else:
            bucket.errors += 1
            if len(bucket.samples) < 5:
                bucket.samples.append(detail[:300])
        bucket.statuses[str(status) if status else "error"] += 1
        if log is not None:
            log.write(f"{due - start:.6f},{latency * 1e3:.3f},{status}\n")
        outstanding -= 1
        if scheduled == total and outstanding == 0 and not drained.done():
            drained.set_result(None)

    def send(conn: HttpConnection, due: float) -> None:
        sent = time.perf_counter()
        bucket.late.append(max(0.0, sent - due))
        key = next(ids)
        inflight[key] = (sent, conn)
        # Latency runs from the due time, or from the send when the request went out early (TIMER_SLACK_S).
        conn.request(payload).add_done_callback(lambda answer: answered(answer, key, conn, min(due, sent)))

    def answered(answer: asyncio.Future[tuple[int, bytes, bool]], key: int, conn: HttpConnection, due: float) -> None:
        inflight.pop(key, None)
        exc = answer.exception()
        if exc is not None:
            if id(conn) in reused:
                # the server closed this idle keep-alive connection as it was taken again (its keep-alive
                # timeout): once more on a new connection, as HTTP clients do; a second failure counts
                reused.discard(id(conn))
                drop(conn)
                open_for(due)
                return
            finish(due, 0, f"{type(exc).__name__}: {exc}")
            drop(conn)
            return
        reused.add(id(conn))
        status, response, keep_alive = answer.result()
        finish(due, status, "" if status < 300 else f"HTTP {status}: {response[:200]!r}")
        if keep_alive and not conn.closed:
            if queued:
                send(conn, queued.popleft())
            else:
                idle.append(conn)
        else:
            drop(conn)

    def drop(conn: HttpConnection) -> None:
        nonlocal opened
        reused.discard(id(conn))
        conn.abort()
        opened -= 1
        if queued:
            open_for(queued.popleft())

    def open_for(due: float) -> None:
        nonlocal opened
        opened += 1
        task = asyncio.ensure_future(connect_then_send(due))
        connecting.add(task)
        task.add_done_callback(connecting.discard)

    async def connect_then_send(due: float) -> None:
        nonlocal opened
        try:
            _, conn = await loop.create_connection(HttpConnection, host, port)
        except asyncio.CancelledError:
            opened -= 1
            finish(due, 0, "not connected by the end of the run")
            raise
        except Exception as exc:
            opened -= 1
            finish(due, 0, f"{type(exc).__name__}: {exc}")
            if queued and opened < max_connections:
                open_for(queued.popleft())
            return
        send(conn, due)

    def dispatch(due: float) -> None:
        nonlocal opened
        while idle:
            conn = idle.pop()
            if not conn.closed:
                send(conn, due)
                return
            opened -= 1
        if opened < max_connections:
            open_for(due)
        else:
            queued.append(due)

    def tick() -> None:
        nonlocal outstanding, scheduled
        now = time.perf_counter()
        # Every request due within the timer's resolution goes out now (uvloop's timers count whole
        # milliseconds: waiting for a due time closer than that spins the loop).
        while scheduled < total and start + scheduled / rate <= now + TIMER_SLACK_S:
            bucket.due += 1
            outstanding += 1
            scheduled += 1
            dispatch(start + (scheduled - 1) / rate)
        if scheduled < total:
            loop.call_later(max(TIMER_SLACK_S, start + scheduled / rate - TIMER_SLACK_S - time.perf_counter()), tick)
        elif outstanding == 0 and not drained.done():
            drained.set_result(None)

    async def watchdog() -> None:
        while True:
            now = time.perf_counter()
            for sent, conn in list(inflight.values()):
                if now - sent > timeout_s:
                    conn._fail(TimeoutError(f"no response within {timeout_s:g} s"))
            while queued and now - queued[0] > timeout_s:  # a client gives up on a request it could not send
                finish(queued.popleft(), 0, f"TimeoutError: no connection free within {timeout_s:g} s of its due time")
            await asyncio.sleep(0.1)

    def close(phase: str, index: int, b_start: float, b_end: float) -> None:
        nonlocal bucket
        done, bucket = bucket, _Bucket()
        emit(done.result(phase, index, b_start, b_end, outstanding, opened))

    dog = asyncio.ensure_future(watchdog())
    loop.call_soon(tick)
    try:
        for phase, index, b_start, b_end in bounds[:-1]:
            await asyncio.sleep(max(0.0, start + b_end - time.perf_counter()))
            close(phase, index, b_start, b_end)
        await asyncio.sleep(max(0.0, start + bounds[-1][3] - time.perf_counter()))
        try:  # the last requests: each is answered or times out (the watchdog)
            await asyncio.wait_for(asyncio.shield(drained), timeout_s + 1)
        except TimeoutError:
            pass
        for task in list(connecting):
            task.cancel()
        await asyncio.gather(*connecting, return_exceptions=True)
        while queued:
            finish(queued.popleft(), 0, "not sent by the end of the run")
        for _, conn in list(inflight.values()):
            conn._fail(TimeoutError("not answered by the end of the run"))
        await asyncio.sleep(0)  # their callbacks count them
        close(*bounds[-1])
    finally:
        dog.cancel()
        await asyncio.gather(dog, return_exceptions=True)
        for conn in idle:
            conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rateload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds after the warm-up")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per reported interval")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds at the same rate, reported apart")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--log", type=Path, default=None, help="CSV: due time (s), latency (ms), status (0: none)")

    def emit(result: IntervalResult) -> None:
        sys.stdout.write(result.to_json() + "\n")
        sys.stdout.flush()

    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(args.log.open("w")) if args.log else None
        if log is not None:
            log.write("due_s,latency_ms,status\n")
        coro = run_rate(args.url, args.body_file.read_bytes(), args.content_type, rate=args.rate,
                        duration_s=args.duration, interval_s=args.interval, warmup_s=args.warmup,
                        timeout_s=args.timeout, max_connections=args.max_connections, emit=emit, log=log)
        # the client's own start-up objects out of the garbage collector's full walks, as mainsail up does
        # with its own: a walk stops the client's loop, and every request due meanwhile would be charged for it
        gc.collect()
        gc.freeze()
        try:
            import uvloop
        except ImportError:
            asyncio.run(coro)
        else:
            uvloop.run(coro)


if __name__ == "__main__":
    main()
