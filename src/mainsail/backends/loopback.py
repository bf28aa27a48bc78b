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

:func:`stream` is the other way, for payloads too large to hold (asynchronous inference, up to
1 GB): the request body comes from an async iterable and goes out as it comes (``Content-Length``
when the caller knows it, chunked otherwise), and the response body is handed over as it arrives,
read only as fast as the caller takes it. Each exchange has a connection of its own, closed after
it: nothing is pooled or retried, and the buffered :meth:`Forwarder.post` path is not involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import httptools

DEFAULT_MAX_IDLE = 256
DEFAULT_MAX_RESPONSE = 1 << 30  # 1 GiB
# Headers that describe one connection, or that the forwarder sets itself: never taken from the caller.
_NOT_FORWARDED = frozenset((
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
    "content-length", "host", "expect",
))



def add_header(headers: dict[str, str], name: bytes, value: bytes) -> bool:
    """Add one response header (repeats joined by ", "); whether it delimits the body."""
    key = name.decode("latin-1").lower()
    text = value.decode("latin-1")
    previous = headers.get(key)
    headers[key] = text if previous is None else f"{previous}, {text}"
    return key == "content-length" or key == "transfer-encoding"

class ForwardError(Exception):
    """The instance could not be reached or did not answer with a usable HTTP response.

    ``unsent``: nothing reached the instance (it refused the connection), so the request may be
    sent elsewhere."""

    def __init__(self, message: str, *, unsent: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent


@dataclass(frozen=True, slots=True)
class Upstream:
    """An instance's response. Header names are lower-case; repeated headers are joined with ", "."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


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

    # -- the exchange -----------------------------------------------------------------------------

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

    def _fail(self, message: str) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ForwardError(message))
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
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection is unusable
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
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head_done and not self._delimited:  # a body that ends with the connection
            self._waiter = None
            self.keep_alive = False
            waiter.set_result(Upstream(self._status, self._headers, b"".join(self._body)))
        elif not self.received:
            self.unanswered = True
            self._fail(f"the instance closed the connection before answering ({exc or 'EOF'})")
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

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # an informational response: the real one follows
            self._headers = {}
            self._head_done = False
            self._delimited = False
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
        request = _request(host, port, path, body, headers)
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections of another loop cannot be used (nor closed) here
            self._loop, self._idle, self._open = loop, {}, set()
        key = (host, port)
        conn: _Connection | None = None
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                conn = self._take(key)
                if conn is None:
                    conn = await self._connect(host, port)
                try:
                    upstream = await conn.exchange(request)
                except ForwardError:
                    if not (conn.reused and conn.unanswered and not conn.received):
                        raise
                    self._discard(conn)
                    conn = await self._connect(host, port)  # the idle connection died under us
                    upstream = await conn.exchange(request)
        except TimeoutError:
            if conn is not None:
                self._discard(conn)
            if deadline.expired():
                raise ForwardError(f"timed out after {timeout:g} s") from None
            raise ForwardError(f"could not reach {host}:{port}: timed out") from None
        except BaseException:  # ForwardError, cancellation
            if conn is not None:
                self._discard(conn)
            raise
        self._release(key, conn)
        return upstream

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


def _request(host: str, port: int, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    if not path.startswith("/") or any(c in path for c in " \r\n"):
        raise ForwardError(f"invalid path {path!r}")
    lines = [f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"]
    for name, value in headers:
        if name.lower() in _NOT_FORWARDED:
            continue
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ForwardError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    try:
        head = "".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ForwardError(f"a header is not latin-1: {exc}") from None
    return head + body


# -- streaming: one connection per exchange, bodies never held ------------------------------------

STREAM_READ = 1 << 20  # bytes asked of the socket per read of a streamed response


class _StreamParser:
    """httptools callbacks of one streamed response: the head, then body pieces as they are parsed."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.delimited = False
        self.complete = False
        self.pieces: list[bytes] = []

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            raise ForwardError(f"malformed response: {exc or type(exc).__name__}") from None

    def on_header(self, name: bytes, value: bytes) -> None:
        if add_header(self.headers, name, value):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status >= 200:
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an informational response: the real one follows
            self.headers = {}
            self.delimited = False
            return
        self.complete = True


@dataclass(slots=True)
class StreamedUpstream:
    """An instance's response from :func:`stream`: status and head at once, the body read on demand.

    Header names are lower-case; repeated headers are joined with ", "."""

    status: int
    headers: dict[str, str]
    _reader: asyncio.StreamReader = field(repr=False)
    _parsed: _StreamParser = field(repr=False)
    _max_response: int = field(repr=False)

    async def body(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (pieces of any size), read only as fast as they are taken."""
        parsed, size = self._parsed, 0
        while True:
            if parsed.pieces:
                pieces, parsed.pieces = parsed.pieces, []
                for piece in pieces:
                    size += len(piece)
                    if size > self._max_response:
                        raise ForwardError(f"the response is larger than {self._max_response} bytes")
                    yield piece
            if parsed.complete:
                return
            try:
                data = await self._reader.read(STREAM_READ)
            except OSError as exc:
                raise ForwardError(f"the instance closed the connection mid-response ({exc})") from None
            if not data:
                if parsed.delimited:
                    raise ForwardError("the instance closed the connection mid-response (EOF)")
                return  # a body that ends with the connection
            parsed.feed(data)

    async def read(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (the rest is left unread): for error answers."""
        out = bytearray()
        async for piece in self.body():
            out += piece
            if len(out) >= limit:
                break
        return bytes(out[:limit])


@contextlib.asynccontextmanager
async def stream(port: int, path: str, body: AsyncIterable[bytes], headers: Sequence[tuple[str, str]], *,
                 length: int | None, timeout: float, host: str = "127.0.0.1",
                 max_response: int = DEFAULT_MAX_RESPONSE) -> AsyncIterator[StreamedUpstream]:
    """``POST path`` to ``host:port`` with a body streamed from ``body``; yields the response once its
    head has arrived, its body to be read inside the ``async with``.

    ``length``: the body's size, sent as ``Content-Length`` (the bytes ``body`` gives must add up
    to it); ``None`` sends it chunked. ``timeout`` bounds the whole exchange, the caller's reading
    of the response included. An exception raised by ``body`` propagates unchanged (the connection
    is dropped); failures of the connection or of the response raise :class:`ForwardError`, with
    ``unsent`` when the instance could not be connected to (``body`` was then never read).
    """
    head = _head(host, port, path, headers, length)
    deadline = asyncio.timeout(timeout)
    writer: asyncio.StreamWriter | None = None
    try:
        async with deadline:
            try:
                reader, writer = await asyncio.open_connection(host, port, limit=STREAM_READ)
            except ConnectionRefusedError:
                raise ForwardError(f"connection refused by {host}:{port}", unsent=True) from None
            except OSError as exc:
                raise ForwardError(f"could not connect to {host}:{port}: {exc}", unsent=True) from None
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, AttributeError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parsed = _StreamParser()
            await _exchange_head(writer, reader, parsed, head, body, length)
            yield StreamedUpstream(parsed.status, parsed.headers, reader, parsed, max_response)
    except TimeoutError:
        if deadline.expired():
            raise ForwardError(f"timed out after {timeout:g} s") from None
        raise
    finally:
        if writer is not None:
            writer.transport.abort()  # never reused: a half-read response must not linger


def _head(host: str, port: int, path: str, headers: Sequence[tuple[str, str]], length: int | None) -> bytes:
    # the buffered path's head (same validation, same headers), its empty body's framing replaced
    head = _request(host, port, path, b"", headers)[:-len(b"Content-Length: 0\r\n\r\n")]
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return head + f"{framing}\r\nConnection: close\r\n\r\n".encode()


async def _exchange_head(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, parsed: _StreamParser,
                         head: bytes, body: AsyncIterable[bytes], length: int | None) -> None:
    """Send the request while reading the response's head, which may come first: an instance that
    refuses the body (a 413) answers before reading it, then closes, and sending stops there."""
    sending = asyncio.ensure_future(_send(writer, head, body, length))
    answering = asyncio.ensure_future(_read_head(reader, parsed, "the instance closed the connection "
                                                 "before answering"))
    try:
        await asyncio.wait((sending, answering), return_when=asyncio.FIRST_COMPLETED)
        if not sending.done():  # answered (or gone) before the request was all sent
            await answering
            return
        failed = sending.exception()
        if failed is None:
            await answering
            return
        if not isinstance(failed, ConnectionError):  # the body's own failure, as it was raised
            raise failed
        try:  # the instance closed the connection: it may have said why first
            await answering
        except ForwardError:
            raise ForwardError(f"the instance closed the connection as the request was sent ({failed})") from None
    finally:
        pending = [task for task in (sending, answering) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def _send(writer: asyncio.StreamWriter, head: bytes, body: AsyncIterable[bytes], length: int | None) -> None:
    writer.write(head)
    sent = 0
    async for chunk in body:
        if not chunk:
            continue
        sent += len(chunk)
        if length is not None and sent > length:
            raise ForwardError(f"the request body is longer than its Content-Length ({length})")
        if length is None:
            writer.writelines((f"{len(chunk):x}\r\n".encode(), chunk, b"\r\n"))
        else:
            writer.write(chunk)
        await writer.drain()  # at most the transport's high-water mark is held here
    if length is not None and sent != length:
        raise ForwardError(f"the request body ended after {sent} of its {length} bytes")
    if length is None:
        writer.write(b"0\r\n\r\n")
    await writer.drain()


async def _read_head(reader: asyncio.StreamReader, parsed: _StreamParser, closed: str) -> None:
    while not parsed.head_done:
        try:
            data = await reader.read(STREAM_READ)
        except OSError as exc:
            raise ForwardError(f"{closed}: {exc}") from None
        if not data:
            raise ForwardError(closed)
        parsed.feed(data)
