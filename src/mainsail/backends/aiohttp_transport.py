"""``AiohttpTransport``: :class:`~mainsail.backends.http_transport.HttpTransport` with ``post`` made by
aiohttp's client instead of the hand-written :class:`~mainsail.backends.loopback.Forwarder`.

The candidate of issue 13, item 7 (a maintained client on the control-plane hop), measured against the
hand-written one by ``python -m bench control --instance-client both``. aiohttp is an optional
dependency (the ``dev`` extra): nothing imports this module unless ``MAINSAIL_INSTANCE_CLIENT=aiohttp``
selects it (``mainsail.gateway.server``).

``post`` keeps :meth:`Forwarder.post`'s contract:

* **Request**: ``POST path`` with ``Host: host:port``, ``Content-Length`` and the caller's headers less
  the hop-by-hop and framing ones (:data:`~mainsail.backends.wire.NOT_FORWARDED`); a header with CR, LF
  (or ``:`` in its name) or not latin-1, or a bad path, is a :class:`ForwardError` before anything is
  sent. aiohttp adds nothing of its own (no ``User-Agent``, ``Accept``, ``Accept-Encoding``, default
  ``Content-Type``), follows no redirect, decompresses nothing, keeps no cookie, reads no proxy setting.
* **Response**: :class:`Upstream` with the headers as sent (names lower-case, repeats joined ``", "``),
  the body as sent, at most ``max_response`` bytes (1 GiB).
* **Pool**: one ``ClientSession`` per event loop over a ``TCPConnector`` with no cap on connections
  (``limit=0``: the Forwarder caps none in use either), no DNS (instances are IP literals), no happy
  eyeballs; idle keep-alive connections kept 60 s (the instances keep theirs 75 s, so the client lets
  go first). Connections whose exchange failed, timed out or was cancelled are closed, not pooled.
* **Retry**: as the Forwarder's, only a request sent on a *reused* connection that the instance closed
  (or reset) before any response arrived; never one on a fresh connection, never after the head.
  aiohttp does not retry a ``POST`` itself, so the connector notes which connections it reused.
* **Deadline**: ``timeout`` bounds the whole exchange (connect, retry, response); aiohttp's own timeouts
  are off. **Errors**: refused or failed connects are ``ForwardError(unsent=True)``; resets, early
  closes, malformed or too large responses and timeouts are ``ForwardError``.

``stream``, ``ping`` and ``blocking`` are :class:`HttpTransport`'s.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Sequence
from typing import Any

import aiohttp
import aiohttp.payload
from yarl import URL

from mainsail.backends.base import Address, ForwardError, Headers, Upstream
from mainsail.backends.http_transport import MAX_IDLE, HttpTransport
from mainsail.backends.wire import DEFAULT_MAX_RESPONSE, NOT_FORWARDED, add_header

#: seconds an idle pooled connection is kept (below the instances' 75 s keep-alive)
KEEPALIVE_S = 60.0
#: headers aiohttp would otherwise add by itself
#: bodies larger than this go as a :class:`_Body` (aiohttp's own threshold for its warning)
_LARGE = 1 << 20
_SKIPPED = frozenset(("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))


class _Attempt:
    """What the connector tells ``post`` about the connection one attempt got."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


class _Body(aiohttp.payload.Payload):
    """A request body over 1 MiB, written in one piece as the Forwarder writes it (aiohttp's own
    ``BytesPayload`` would warn that a large body "might lock the event loop": a transport write of a
    few megabytes is a copy into its buffer)."""

    _value: bytes
    _autoclose = True

    def __init__(self, value: bytes) -> None:
        super().__init__(value, content_type=None)
        self._size = len(value)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._value.decode(encoding, errors)

    async def write(self, writer: Any) -> None:
        await writer.write(self._value)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await writer.write(self._value if content_length is None else self._value[:content_length])


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("mainsail_aiohttp_attempt",
                                                                          default=None)


class _Connector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that notes, for the attempt in progress, whether it handed out a connection it
    had handed out before (a pooled one)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handed_out: weakref.WeakSet[object] = weakref.WeakSet()

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        conn = await super().connect(req, traces, timeout)
        protocol = conn.protocol
        attempt = _ATTEMPT.get()
        if protocol is not None:
            if attempt is not None:
                attempt.reused = protocol in self._handed_out
            self._handed_out.add(protocol)
        return conn


def request_headers(headers: Headers) -> list[tuple[str, str]]:
    """The caller's headers that go on to the instance, checked as the Forwarder checks them."""
    out = []
    for name, value in headers:
        if name.lower() in NOT_FORWARDED:
            continue
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ForwardError(f"invalid header {name!r}")
        try:
            name.encode("latin-1"), value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ForwardError(f"a header is not latin-1: {exc}") from None
        out.append((name, value))
    return out


class AiohttpTransport(HttpTransport):
    """:class:`HttpTransport` whose ``post`` is aiohttp's (see the module docstring)."""

    def __init__(self, *, max_idle: int = MAX_IDLE, max_response: int = DEFAULT_MAX_RESPONSE) -> None:
        super().__init__(max_idle=max_idle)
        self.max_response = max_response
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._urls: dict[tuple[str, int, str], URL] = {}

    def session(self) -> aiohttp.ClientSession:
        """The pooled client of the running loop (made on first use; another loop's is dropped)."""
        loop = asyncio.get_running_loop()
        if self._session is None or loop is not self._loop or self._session.closed:
            connector = _Connector(limit=0, limit_per_host=0, use_dns_cache=False, keepalive_timeout=KEEPALIVE_S,
                                   happy_eyeballs_delay=None, enable_cleanup_closed=False)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=_SKIPPED, trust_env=False)
            self._loop = loop
        return self._session

    def _url(self, host: str, port: int, path: str) -> URL:
        key = (host, port, path)
        url = self._urls.get(key)
        if url is None:
            if not path.startswith("/") or any(c in path for c in " \r\n"):
                raise ForwardError(f"invalid path {path!r}")
            url = URL(f"http://{host}:{port}{path}", encoded=True)
            if len(self._urls) < 4096:
                self._urls[key] = url
        return url

    async def post(self, address: Address, path: str, body: bytes, headers: Headers, *,
                   timeout: float) -> Upstream:
        host, port = address
        url = self._url(host, port, path)
        sent = request_headers(headers)
        session = self.session()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                while True:
                    attempt = _Attempt()
                    token = _ATTEMPT.set(attempt)
                    try:
                        return await self._exchange(session, url, body, sent, host, port)
                    except _Unanswered as exc:
                        if not attempt.reused:  # a fresh connection's failure is not retried
                            raise ForwardError(str(exc)) from None
                        # the pooled connection died under us (it is closed now): try again
                    finally:
                        _ATTEMPT.reset(token)
        except TimeoutError:
            if deadline.expired():
                raise ForwardError(f"timed out after {timeout:g} s") from None
            raise ForwardError(f"could not reach {host}:{port}: timed out") from None

    async def _exchange(self, session: aiohttp.ClientSession, url: URL, body: bytes,
                        headers: Sequence[tuple[str, str]], host: str, port: int) -> Upstream:
        try:
            data = body if len(body) <= _LARGE else _Body(body)
            response = await session.post(url, data=data, headers=headers, allow_redirects=False)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ConnectionRefusedError):
                raise ForwardError(f"connection refused by {host}:{port}", unsent=True) from None
            raise ForwardError(f"could not connect to {host}:{port}: {exc.os_error}", unsent=True) from None
        except aiohttp.ServerDisconnectedError as exc:
            if isinstance(exc.message, str):  # nothing of a response came
                raise _Unanswered(f"the instance closed the connection before answering ({exc})") from None
            raise ForwardError(f"the instance closed the connection mid-response ({exc})") from None
        except aiohttp.ClientResponseError as exc:  # the head could not be parsed
            raise ForwardError(f"malformed response: {exc.message or type(exc).__name__}") from None
        except aiohttp.ClientOSError as exc:  # reset or broken pipe before a head arrived
            raise _Unanswered(f"the instance closed the connection before answering ({exc})") from None
        except aiohttp.ClientError as exc:
            raise ForwardError(f"{type(exc).__name__}: {exc}") from None
        async with response:
            try:
                answer = await self._read(response)
            except aiohttp.ClientPayloadError as exc:
                text = str(exc)
                if "not completed" in text:
                    raise ForwardError(f"the instance closed the connection mid-response ({text})") from None
                raise ForwardError(f"malformed response: {text}") from None
            except aiohttp.ClientError as exc:
                raise ForwardError(f"the instance closed the connection mid-response ({exc})") from None
            out: dict[str, str] = {}
            for name, value in response.raw_headers:
                add_header(out, name, value)
            return Upstream(response.status, out, answer)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, at most ``max_response`` bytes (a larger one is a ForwardError, not read on)."""
        length = response.content_length
        if length is not None and length <= self.max_response:
            return await response.read()
        if length is not None:
            raise ForwardError(f"the response is larger than {self.max_response} bytes")
        parts, size = [], 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > self.max_response:
                raise ForwardError(f"the response is larger than {self.max_response} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
        await super().aclose()


class _Unanswered(Exception):
    """The attempt failed before any response arrived (the instance closed or reset the connection)."""
