"""The streamed exchange with an instance, for payloads too large to hold (asynchronous inference).

:func:`stream` sends a request body taken from an async iterable as it comes (``Content-Length``
when the caller knows it, chunked otherwise), and hands the response body over as it arrives, read
only as fast as the caller takes it (up to 1 GB). Each exchange has a connection of its own, closed
after it: nothing is pooled or retried, and the buffered :meth:`mainsail.backends.loopback.Forwarder.post`
path is not involved. Failures raise :class:`~mainsail.backends.base.ForwardError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field

import httptools

from mainsail.backends.base import ForwardError, read_at_most
from mainsail.backends.wire import DEFAULT_MAX_RESPONSE, add_header, request_bytes

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
        return await read_at_most(self.body(), limit)


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
    head = request_bytes(host, port, path, b"", headers)[:-len(b"Content-Length: 0\r\n\r\n")]
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
