"""What a connection may cost the server before its request is in (both planes' uvicorn).

uvicorn's httptools protocol waits for a request for as long as the client keeps the connection open: a
connection that sends nothing is never closed (its keep-alive timer starts only after a response), a
request head sent a byte at a time (slowloris) is read forever, and the head itself has no size limit, so
one connection streaming header lines grows the worker's memory without bound. :func:`guarded_http`
makes the protocol both planes serve with, which adds three rules:

* **the head's deadline**: a new connection's first request head must be in within ``head_timeout``
  seconds of connecting, and a later request's head within ``head_timeout`` of its first byte; then the
  connection is closed (with ``408`` if part of a head came, silently if nothing did);
* **the head's size**: a head larger than ``head_max_bytes`` is answered ``431`` and the connection
  closed (checked per read, so a head is held to at most that plus one read);
* **the body's pace**: a body still coming ``head_timeout`` seconds after its head must average
  ``body_min_rate`` bytes a second from then on, else ``408`` and close (Apache's ``mod_reqtimeout``
  rule; ``0`` turns it off).

While the server itself stops reading (a worker busy with earlier pipelined requests, or a body waiting
for the app to take it) the clocks wait too. One timer per connection, firing at most every
``head_timeout`` seconds, does the checking; a request costs a few attribute reads per read from the
socket (1 to 2 us, docs/reliability.md).
:func:`raise_open_files_limit` lifts the soft descriptor limit to the hard one, so idle connections run
out of memory long before the process runs out of descriptors. docs/reliability.md has the figures.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

logger = logging.getLogger(__name__)

#: how often, at most, a server logs the connections it closed under these rules
REPORT_EVERY_S = 60.0


def _answer(status: str, error: str, message: str) -> bytes:
    body = orjson.dumps({"error": error, "message": message})
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode("latin-1") + body


class ClosedConnections:
    """Counts what the rules closed, and logs it: the first at once, then what came since at most once
    every :data:`REPORT_EVERY_S` seconds."""

    def __init__(self) -> None:
        self.counts = {"idle": 0, "head timeout": 0, "head too large": 0, "body too slow": 0}
        self._logged = dict(self.counts)
        self._next_log = 0.0
        self._pending = False

    def add(self, reason: str, loop: asyncio.AbstractEventLoop) -> None:
        self.counts[reason] += 1
        if self._pending:
            return
        wait = self._next_log - time.monotonic()
        if wait <= 0:
            self._log()
        else:
            self._pending = True
            loop.call_later(wait, self._log)

    def _log(self) -> None:
        self._pending = False
        self._next_log = time.monotonic() + REPORT_EVERY_S
        new = {k: v - self._logged[k] for k, v in self.counts.items() if v > self._logged[k]}
        self._logged = dict(self.counts)
        if new:
            logger.warning("closed slow or idle client connections: %s",
                           ", ".join(f"{count} {reason}" for reason, count in new.items()))


class ConnectionRules(Protocol):
    """The settings :func:`guarded_http_for` reads (``ServeSettings`` and ``ControlSettings`` have them)."""

    @property
    def request_head_timeout(self) -> float: ...

    @property
    def request_head_max_bytes(self) -> int: ...

    @property
    def request_body_min_rate(self) -> float: ...


def guarded_http_for(settings: ConnectionRules) -> type[asyncio.Protocol]:
    """:func:`guarded_http` with ``settings``' rules."""
    return guarded_http(head_timeout=settings.request_head_timeout, head_max_bytes=settings.request_head_max_bytes,
                        body_min_rate=settings.request_body_min_rate)


def guarded_http(*, head_timeout: float, head_max_bytes: int, body_min_rate: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the rules above (``uvicorn.Config(http=...)``)."""
    if head_timeout <= 0 or head_max_bytes <= 0 or body_min_rate < 0:
        raise ValueError("head_timeout and head_max_bytes must be positive, body_min_rate 0 or more")
    # here: a supervisor that only raises the descriptor limit never imports uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    closed = ClosedConnections()
    timed_out = _answer("408 Request Timeout", "RequestTimeout",
                        f"the request did not arrive in time (head within {head_timeout:g} s, then its body "
                        f"at {body_min_rate:g} bytes/s at least)")
    too_large = _answer("431 Request Header Fields Too Large", "RequestHeaderFieldsTooLarge",
                        f"the request line and headers exceed {head_max_bytes} bytes")

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        # Slots, not the instance dict: uvicorn's protocol sets ~28 attributes, and past CPython's 30
        # shared keys every attribute read of the request path gets slower (~2 us a request, measured).
        __slots__ = ("_head_started", "_head_bytes", "_received", "_body_cycle", "_body_started", "_body_mark",
                     "_watch")
        closed_connections = closed

        def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                     _loop: asyncio.AbstractEventLoop | None = None) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self._head_started: float | None = None
            """When the head being read was due to start (None: no head being read)."""
            self._head_bytes = 0
            self._received = 0
            self._body_cycle: object = None
            """The request whose body ``_body_started`` times (uvicorn's ``RequestResponseCycle``)."""
            self._body_started = 0.0
            self._body_mark = 0
            self._watch: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_started = self.loop.time()
            self._watch = self.loop.call_later(head_timeout, self._check)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # The only per-request cost: uvicorn gives a request's scope its "method" once the head is in.
            self._received += len(data)
            in_head = self._head_started is not None
            super().data_received(data)
            scope = self.scope
            if scope is None or "method" not in scope:  # a head still unfinished after this read
                if not in_head:
                    self._head_started, self._head_bytes = self.loop.time(), 0
                    return
                # only reads that began inside the head count: a read that also carried an earlier
                # request's body is not all head
                self._head_bytes += len(data)
                if self._head_bytes > head_max_bytes and not self.transport.is_closing():
                    self._close(too_large, "head too large")
            else:
                if in_head:
                    self._head_started = None
                if self.cycle is not self._body_cycle:  # a head came in with this read: its body's clock starts
                    self._body_cycle, self._body_started, self._body_mark = self.cycle, self.loop.time(), self._received

        def _close(self, answer: bytes | None, reason: str) -> None:
            cycle = self.cycle
            # never into the middle of a response (a pipelined request's, or one the app began early)
            if answer is not None and (cycle is None or cycle.response_complete or not cycle.response_started):
                self.transport.write(answer)
            self.transport.close()
            closed.add(reason, self.loop)

        def _check(self) -> None:
            """Every ``head_timeout`` seconds at most while the connection is open."""
            self._watch = None
            if self.transport.is_closing():
                return
            now = self.loop.time()
            cycle = self.cycle
            next_in = head_timeout
            if self.flow.read_paused:  # the server is the one not reading: the clocks wait
                if self._head_started is not None:
                    self._head_started = now
                self._body_started, self._body_mark = now, self._received
            elif self._head_started is not None:
                due = self._head_started + head_timeout
                if now < due:
                    next_in = due - now
                elif cycle is not None and not cycle.response_complete:
                    next_in = head_timeout / 4  # a pipelined head behind a request in flight: that one first
                else:
                    self._close(timed_out if self._received else None, "head timeout" if self._received else "idle")
                    return
            elif cycle is not None and cycle.more_body and body_min_rate:
                due = self._body_started + head_timeout + (self._received - self._body_mark) / body_min_rate
                if now >= due:
                    self._close(timed_out, "body too slow")
                    return
                next_in = due - now
            self._watch = self.loop.call_later(next_in, self._check)

    return GuardedHttpToolsProtocol


def raise_open_files_limit() -> int:
    """Lift this process's soft limit on open descriptors to its hard limit (children inherit it); the
    limit now. A server that holds one descriptor per connection should run out of something else first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open files limit from %d to %d: %s", soft, target, exc)
    return soft
