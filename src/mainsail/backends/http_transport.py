"""``HttpTransport``: the :class:`~mainsail.backends.base.Transport` of instances that answer HTTP/1.1
at a host and port, as ``mainsail serve`` does (the local backend's, on loopback).

- ``post``: the pooled keep-alive client (:class:`mainsail.backends.loopback.Forwarder`, made on
  first use and again after :meth:`HttpTransport.aclose`), up to :data:`MAX_IDLE` idle connections
  per instance;
- ``stream``: the streamed exchange, a connection of its own (:func:`mainsail.backends.streaming.stream`);
- ``blocking``: :class:`Connections`, the standard library's client, one keep-alive connection per
  (thread, instance), for batch transform's threads;
- ``ping``: ``GET /ping`` within a second.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import AsyncIterable
from contextlib import AbstractAsyncContextManager

import httpx

from mainsail.backends.base import Address, Headers, StreamedResponse, Upstream
from mainsail.backends.loopback import Forwarder
from mainsail.backends.streaming import stream

#: idle keep-alive connections kept per instance
MAX_IDLE = 256


class Connections:
    """Keep-alive HTTP/1.1 connections to the instances, one per (thread, address). The standard
    library's client, not httpx: its request/response objects form reference cycles that hold the
    megabyte bodies until the cyclic GC runs, which multiplied the control plane's memory."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def post(self, address: Address, path: str, body: bytes, headers: Headers) -> Upstream:
        conns: dict[Address, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(address)
        if conn is None:
            conn = http.client.HTTPConnection(address.host, address.port, timeout=self.timeout)
            conns[address] = conn
            with self._lock:
                self._all.append(conn)
        try:
            conn.request("POST", path, body=body, headers=dict(headers))
            response = conn.getresponse()
            answer = response.read()
            if response.will_close:
                conn.close()
            out: dict[str, str] = {}
            for name, value in response.getheaders():
                key = name.lower()
                out[key] = value if key not in out else f"{out[key]}, {value}"
            return Upstream(response.status, out, answer)
        except BaseException:
            conn.close()
            conns.pop(address, None)
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class HttpTransport:
    """Reaches instances over HTTP/1.1 (see the module docstring)."""

    def __init__(self, *, max_idle: int = MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._forwarder: Forwarder | None = None

    @property
    def forwarder(self) -> Forwarder:
        """The pooled client (made on first use)."""
        if self._forwarder is None:
            self._forwarder = Forwarder(max_idle=self.max_idle)
        return self._forwarder

    async def post(self, address: Address, path: str, body: bytes, headers: Headers, *,
                   timeout: float) -> Upstream:
        return await self.forwarder.post(address.port, path, body, headers, timeout=timeout, host=address.host)

    def stream(self, address: Address, path: str, body: bytes | AsyncIterable[bytes], headers: Headers, *,
               length: int | None, timeout: float) -> AbstractAsyncContextManager[StreamedResponse]:
        if isinstance(body, bytes):  # a body in hand (a response stream's request): a pooled connection
            return self.forwarder.stream(address.port, path, body, headers, timeout=timeout, host=address.host)
        return stream(address.port, path, body, headers, length=length, timeout=timeout, host=address.host)

    def ping(self, address: Address, *, timeout: float = 1.0) -> bool:
        try:
            return httpx.get(f"http://{address.host}:{address.port}/ping", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def blocking(self, timeout: float) -> Connections:
        return Connections(timeout)

    async def aclose(self) -> None:
        if self._forwarder is not None:
            forwarder, self._forwarder = self._forwarder, None
            await forwarder.aclose()
