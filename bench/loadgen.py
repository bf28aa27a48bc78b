"""A closed-loop HTTP/1.1 load generator: N connections, each sending its next request when answered.

It speaks raw HTTP/1.1 over asyncio protocols (uvloop when installed), keeps connections alive
when the server allows it and reconnects when the server closes them (gunicorn's sync worker closes
every connection). A request's latency runs from the moment the client starts it, including any
reconnect, to the last byte of its response. Only requests that start and finish inside the
measured window count; the warm-up before it is discarded. Like wrk, it does not correct for
coordinated omission.

It runs in its own process, so it never shares an interpreter with a server:
``python -m bench.loadgen URL --body-file F --concurrency 16 --duration 5`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    """One measurement. Latencies are in milliseconds."""

    concurrency: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_us_per_req: float
    """Load-generator CPU time per measured request: its own overhead."""
    connections_opened: int
    error_samples: list[str] = field(default_factory=list)
    sample_response: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        return cls(**json.loads(text))


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class HttpConnection(asyncio.Protocol):
    """One client connection; ``request`` returns a future of ``(status, body, keep_alive)``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False
        self._head: tuple[int, int, bool, bool] | None = None  # status, header end, keep-alive, chunked
        self._length = -1

    # -- protocol callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            try:
                self._parse()
            except Exception as exc:  # a malformed response fails only its own request
                self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            head = self._head
            if head is not None and self._length < 0 and not head[3]:
                # A body delimited by the end of the connection.
                self.waiter.set_result((head[0], bytes(self.buf[head[1]:]), False))
            else:
                self._fail(exc or ConnectionResetError("server closed the connection mid-response"))

    # -- requests -------------------------------------------------------------------------
    def request(self, payload: bytes) -> asyncio.Future[tuple[int, bytes, bool]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self._head = None
        self._length = -1
        self.transport.write(payload)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.abort()

    def _parse(self) -> None:
        buf = self.buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            version, _, rest = lines[0].partition(b" ")
            status = int(rest[:3])
            keep_alive = version == b"HTTP/1.1"
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                value = value.strip().lower()
                if name == b"content-length":
                    self._length = int(value)
                elif name == b"connection":
                    keep_alive = value == b"keep-alive" if version != b"HTTP/1.1" else value != b"close"
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value
            self._head = (status, end + 4, keep_alive, chunked)
        status, start, keep_alive, chunked = self._head
        if chunked:
            body = self._dechunk(start)
            if body is None:
                return
            assert self.waiter is not None
            self.waiter.set_result((status, body, keep_alive))
        elif self._length >= 0 and len(buf) >= start + self._length:
            body = bytes(buf[start:start + self._length])
            del buf[:start + self._length]
            assert self.waiter is not None
            self.waiter.set_result((status, body, keep_alive))

    def _dechunk(self, start: int) -> bytes | None:
        buf = self.buf
        pos = start
        parts: list[bytes] = []
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                del buf[:trailer_end + 4]
                return b"".join(parts)
            if len(buf) < line_end + 2 + size + 2:
                return None
            parts.append(bytes(buf[line_end + 2:line_end + 2 + size]))
            pos = line_end + 2 + size + 2


async def run_load(url: str, body: bytes, content_type: str, *, concurrency: int, duration_s: float,
                   warmup_s: float, timeout_s: float = 10.0) -> LoadResult:
    """Drive ``concurrency`` closed-loop connections for ``warmup_s`` then ``duration_s`` seconds."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    payload = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    window_start = started + warmup_s
    window_end = window_start + duration_s
    latencies: list[float] = []
    errors = 0
    error_samples: list[str] = []
    sample: list[bytes] = []
    opened = 0
    inflight: dict[int, tuple[float, HttpConnection]] = {}
    cpu_marks: dict[str, float] = {}
    stop = False

    def note_error(message: str) -> None:
        nonlocal errors
        errors += 1
        if len(error_samples) < 5:
            error_samples.append(message)

    async def user(index: int) -> None:
        nonlocal opened
        conn: HttpConnection | None = None
        while not stop:
            t0 = time.perf_counter()
            try:
                if conn is None or conn.closed:
                    _, conn = await loop.create_connection(HttpConnection, host, port)
                    opened += 1
                inflight[index] = (t0, conn)
                status, response, keep_alive = await conn.request(payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                inflight.pop(index, None)
                note_error(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.abort()
                conn = None
                await asyncio.sleep(0.01)  # never spin on a refused connection
                continue
            t1 = time.perf_counter()
            inflight.pop(index, None)
            if not keep_alive:
                conn.close()
                conn = None
            if status >= 300:
                note_error(f"HTTP {status}: {response[:200]!r}")
            elif t0 >= window_start and t1 <= window_end:
                latencies.append(t1 - t0)
                if not sample:
                    sample.append(response)

    async def watchdog() -> None:
        """Aborts requests that outlive ``timeout_s``; they count as errors."""
        while not stop:
            now = time.perf_counter()
            for t0, conn in list(inflight.values()):
                if now - t0 > timeout_s:
                    conn._fail(TimeoutError(f"no response within {timeout_s} s"))
            await asyncio.sleep(0.1)

    def mark_cpu() -> None:
        cpu_marks["start"] = time.process_time()

    users = [asyncio.ensure_future(user(i)) for i in range(concurrency)]
    dog = asyncio.ensure_future(watchdog())
    loop.call_later(warmup_s, mark_cpu)
    await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
    cpu_marks["end"] = time.process_time()
    cpu_marks.setdefault("start", cpu_marks["end"])
    stop = True
    done, pending = await asyncio.wait(users, timeout=timeout_s + 1)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, dog, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            note_error(f"client crashed: {task.exception()!r}")
    latencies.sort()
    count = len(latencies)
    return LoadResult(
        concurrency=concurrency, duration_s=duration_s, requests=count, errors=errors,
        rps=count / duration_s,
        p50_ms=percentile(latencies, 50) * 1e3, p90_ms=percentile(latencies, 90) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3, max_ms=(latencies[-1] * 1e3 if latencies else 0.0),
        client_cpu_us_per_req=((cpu_marks["end"] - cpu_marks["start"]) / count * 1e6 if count else 0.0),
        connections_opened=opened, error_samples=error_samples,
        sample_response=sample[0][:200].decode("utf-8", "replace") if sample else "",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--content-type", default="text/csv")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    coro = run_load(args.url, args.body_file.read_bytes(), args.content_type,
                    concurrency=args.concurrency, duration_s=args.duration, warmup_s=args.warmup,
                    timeout_s=args.timeout)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    sys.stdout.write(result.to_json() + "\n")


if __name__ == "__main__":
    main()
