"""A response read as it arrives over one of the pooled loopback connections
(:meth:`mainsail.backends.loopback.Forwarder.stream`): what ``InvokeEndpointWithResponseStream`` relays."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

from mainsail.backends.base import ForwardError, read_at_most


class PooledStream:
    """A response read as it arrives over a pooled connection (:meth:`Forwarder.stream`): status and
    headers at once, the body's pieces from :meth:`body`. Reading is paused while more than
    ``HIGH_WATER`` bytes wait to be taken."""

    HIGH_WATER = 4 << 20

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self.done = False
        self.error: ForwardError | None = None
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._paused = False
        self._wakeup: asyncio.Future[None] | None = None

    def push(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._size += len(piece)
        if self._size > self.HIGH_WATER and not self._paused and self.conn.transport is not None:
            self._paused = True
            self.conn.transport.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, error: ForwardError) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def body(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive; a connection lost mid-body raises :class:`ForwardError`."""
        while True:
            while self._pieces:
                piece = self._pieces.popleft()
                self._size -= len(piece)
                if self._paused and self._size <= self.HIGH_WATER // 2 and self.conn.transport is not None:
                    self._paused = False
                    self.conn.transport.resume_reading()
                yield piece
            if self.error is not None:
                raise self.error
            if self.done:
                return
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    @property
    def pending(self) -> bool:
        """Whether pieces that arrived were not taken."""
        return bool(self._pieces)

    async def read(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (for error answers; the connection is then not reused)."""
        return await read_at_most(self.body(), limit)
