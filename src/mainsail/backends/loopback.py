"""A small asyncio HTTP/1.1 client for the router's hop to its loopback instances.

The runtime route forwards every ``InvokeEndpoint`` to a ``mainsail serve`` instance on this machine.
A general-purpose client (httpx over httpcore over anyio) spent most of the route's CPU in its own
layers, so the hop uses this one instead: one ``asyncio.Protocol`` per connection, the request written
in one piece, the response parsed by ``httptools`` (llhttp, the parser uvicorn uses; it comes with
``uvicorn[standard]``, a dependency of mainsail, and is required here).

* **Pools**: keep-alive connections per ``(host, port)``, reused last-in first-out so that a few warm
  connections carry the load; at most ``max_idle`` idle ones are kept per port (more are closed on
  release); connections in use are not capped.
* **Retry**: a request sent on a *reused* connection that fails before a single byte of response
  arrived (the instance closed the idle keep-alive connection as we wrote: EOF or reset) is sent once
  more on a fresh connection. The instance cannot have answered it, and with HTTP/1.1 keep-alive a
  server only closes an idle connection between requests, so it never ran it. Nothing else is retried:
  not a fresh connection, not a failure after response bytes arrived, not a timeout.
* **Deadline**: ``timeout`` bounds the whole exchange (connect, retry, response). A connection whose
  exchange timed out, was cancelled or failed is closed, never pooled.
* **Errors**: all raise :class:`ForwardError` (refused, reset, timed out, malformed, too large).

A :class:`Forwarder` belongs to one event loop; connections made on another loop are dropped.

The other way to reach an instance, for payloads too large to hold, is :func:`stream` (its home is
:mod:`mainsail.backends.streaming`; importable from here too).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import httptools

# The response and error types live in mainsail.backends.base, the streamed exchange in
# mainsail.backends.streaming; they stay importable from here.
from mainsail.backends.base import ForwardError, Upstream
from mainsail.backends.pooled_stream import PooledStream
from mainsail.backends.wire import DEFAULT_MAX_RESPONSE, add_header, request_bytes

DEFAULT_MAX_IDLE = 256


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an instance: at most one exchange at a time."""

    def __init__(self, key: tuple[str, int], max_response: int,
                 on_lost: Callable[[_Connection], None]) -> None:
        self.key = key
        self.max_response = max_response
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.received = False
        """Whether any byte of the current exchange's response has arrived."""
        self.unanswered = False
        """Whether the current exchange failed because the instance closed the connection before
        answering (or before the request could be written): what the retry is for."""
        self.keep_alive = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Upstream] | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._head_done = False
        self._delimited = False  # Content-Length or chunked: the body does not end with the connection
        self._stream: PooledStream | None = None

    # -- the exchange -----------------------------------------------------------------------------

    def exchange_stream(self, request: bytes) -> asyncio.Future[Any]:
        """Send ``request``; the future is a :class:`PooledStream`, once the response's head arrived."""
        waiter = self.exchange(request)
        self._stream = PooledStream(self)
        return waiter

    def exchange(self, request: bytes) -> asyncio.Future[Upstream]:
        """Send ``request``; the future is the response."""
        self.received = False
        self.unanswered = False
        if self.closed or self.transport is None or self.transport.is_closing():
            self.unanswered = True
            raise ForwardError("the connection was closed before the request was sent")
        self.keep_alive = False
        self._status = 0
        self._headers = {}
        self._body = []
        self._size = 0
        self._head_done = False
        self._delimited = False
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return waiter

    @property
    def idle(self) -> bool:
        """Whether the last exchange ended cleanly and the connection may carry another."""
        return self._waiter is None and self.keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self._waiter = None
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, message: str, *, unanswered: bool = False) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ForwardError(message, unanswered=unanswered))
        self.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):  # asyncio and uvloop set it anyway
                pass

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if (waiter is None or waiter.done()) and self._stream is None:  # bytes nobody asked for: unusable
            self.abort()
            return
        self.received = True
        self._size += len(data)
        if self._size > self.max_response:
            self._fail(f"the response is larger than {self.max_response} bytes")
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(f"malformed response: {exc or type(exc).__name__}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        self.on_lost(self)
        stream = self._stream
        if stream is not None and stream.status:  # the head was given out: the body is the stream's
            if not self._delimited:
                stream.finish()  # a body that ends with the connection
            else:
                stream.fail(ForwardError(f"the instance closed the connection mid-response ({exc or 'EOF'})"))
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head_done and not self._delimited:  # a body that ends with the connection
            self._waiter = None
            self.keep_alive = False
            waiter.set_result(Upstream(self._status, self._headers, b"".join(self._body)))
        elif not self.received:
            self.unanswered = True
            self._fail(f"the instance closed the connection before answering ({exc or 'EOF'})", unanswered=True)
        else:
            self._fail(f"the instance closed the connection mid-response ({exc or 'EOF'})")

    # -- httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if add_header(self._headers, name, value):
            self._delimited = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._head_done = True
        self.keep_alive = self._parser.should_keep_alive()
        stream, waiter = self._stream, self._waiter
        if stream is not None and self._status >= 200 and waiter is not None and not waiter.done():
            stream.status, stream.headers = self._status, self._headers
            self._waiter = None
            cast("asyncio.Future[Any]", waiter).set_result(stream)

    def on_body(self, body: bytes) -> None:
        if self._stream is not None:
            self._stream.push(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an informational response: the real one follows
            self._headers = {}
            self._head_done = False
            self._delimited = False
            return
        if self._stream is not None:
            if not self._delimited:
                self.keep_alive = self.keep_alive and self._status in (204, 304)
            self._stream.finish()
            return
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():  # a second response in the same read: unusable
            self.keep_alive = False
            return
        if not self._delimited:  # complete without a length: a 204 or 304; don't trust the rest
            self.keep_alive = self.keep_alive and self._status in (204, 304)
        waiter.set_result(Upstream(self._status, self._headers, b"".join(self._body)))


class Forwarder:
    """Posts to loopback instances over pooled keep-alive HTTP/1.1 connections."""

    def __init__(self, *, max_idle: int = DEFAULT_MAX_IDLE, max_response: int = DEFAULT_MAX_RESPONSE) -> None:
        self.max_idle = max_idle
        self.max_response = max_response
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def idle_connections(self, port: int, host: str = "127.0.0.1") -> int:
        """Idle pooled connections to ``host:port``."""
        return sum(not conn.closed for conn in self._idle.get((host, port), ()))

    def open_connections(self) -> int:
        """Connections open or being opened, idle or in use, to any instance."""
        return len(self._open)

    async def post(self, port: int, path: str, body: bytes, headers: Sequence[tuple[str, str]], *,
                   timeout: float, host: str = "127.0.0.1") -> Upstream:
        """``POST path`` with ``body`` to ``host:port``, within ``timeout`` seconds in all."""
        request = request_bytes(host, port, path, body, headers)
        key = self._key(host, port)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                conn, upstream = await self._begin(key, request, streaming=False)
        except TimeoutError:
            if deadline.expired():
                raise ForwardError(f"timed out after {timeout:g} s") from None
            raise ForwardError(f"could not reach {host}:{port}: timed out") from None
        self._release(key, conn)
        return cast(Upstream, upstream)

    @contextlib.asynccontextmanager
    async def stream(self, port: int, path: str, body: bytes, headers: Sequence[tuple[str, str]], *,
                     timeout: float, host: str = "127.0.0.1") -> AsyncIterator[PooledStream]:
        """``POST path`` with ``body`` over a pooled connection; the response once its head arrived, its
        body read inside the ``async with`` (``timeout`` bounds it all). A response read to its end
        gives its connection back to the pool; one left unread is closed."""
        request = request_bytes(host, port, path, body, headers)
        key = self._key(host, port)
        conn: _Connection | None = None
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                conn, upstream = await self._begin(key, request, streaming=True)
                yield upstream
        except TimeoutError:
            if conn is not None:
                self._discard(conn)
            if deadline.expired():
                raise ForwardError(f"timed out after {timeout:g} s") from None
            raise
        except BaseException:
            if conn is not None:
                self._discard(conn)
            raise
        if upstream.done and upstream.error is None and not upstream.pending:
            conn._stream = None
            self._release(key, conn)
        else:
            self._discard(conn)

    def _key(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections of another loop cannot be used (nor closed) here
            self._loop, self._idle, self._open = loop, {}, set()
        return host, port

    async def _begin(self, key: tuple[str, int], request: bytes, *, streaming: bool) -> tuple[_Connection, Any]:
        """``request`` sent on a pooled connection (or a new one); the connection and its answer (the
        response, or its :class:`PooledStream` once the head arrived). A reused connection that died
        before answering is replaced once; on any failure the connection is discarded."""
        conn = self._take(key) or await self._connect(*key)
        try:
            try:
                return conn, await (conn.exchange_stream(request) if streaming else conn.exchange(request))
            except ForwardError:
                if not (conn.reused and conn.unanswered and not conn.received):
                    raise
                self._discard(conn)
                conn = await self._connect(*key)  # the idle connection died under us
                return conn, await (conn.exchange_stream(request) if streaming else conn.exchange(request))
        except BaseException:  # ForwardError, cancellation (a timeout)
            self._discard(conn)
            raise

    async def aclose(self) -> None:
        """Close every connection (requests still in flight fail with :class:`ForwardError`)."""
        conns, self._open, self._idle = self._open, set(), {}
        for conn in conns:
            conn._fail("the forwarder was closed")
        if conns:
            await asyncio.wait([conn.lost for conn in conns], timeout=1.0)

    # -- the pool ---------------------------------------------------------------------------------

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if idle is None:
            return None
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
            self._open.discard(conn)
        del self._idle[key]
        return None

    def _release(self, key: tuple[str, int], conn: _Connection) -> None:
        if conn.idle and conn in self._open:  # (not if the forwarder was closed meanwhile)
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        self._discard(conn, graceful=True)

    def _discard(self, conn: _Connection, graceful: bool = False) -> None:
        self._open.discard(conn)
        if graceful:
            conn.close()
        else:
            conn.abort()

    def _lost(self, conn: _Connection) -> None:
        """A connection closed (by either side): forget it, wherever it is."""
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection((host, port), self.max_response, self._lost), host, port)
        except ConnectionRefusedError:
            raise ForwardError(f"connection refused by {host}:{port}", unsent=True) from None
        except OSError as exc:
            raise ForwardError(f"could not connect to {host}:{port}: {exc}", unsent=True) from None
        self._open.add(conn)
        return conn
