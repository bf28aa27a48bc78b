"""The access log: one line per request, written in batches off the request's path.

A request adds a tuple to a buffer (well under a microsecond); the buffer is written every
``FLUSH_S`` seconds, when it holds ``MAX_PENDING`` lines, and when the app shuts down. The lines are
those ``logging`` writes for ``mainsail.access`` (``mainsail.log``'s format); where logging is set up
as ``configure_logging`` does it (one stream handler with ``LineFormatter`` at the root), the whole
batch is formatted here and written with one call, else each line goes through ``logging`` as a
record with the request's own time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mainsail.log import LineFormatter

access_logger = logging.getLogger("mainsail.access")

FLUSH_S = 0.2
MAX_PENDING = 256
Entry = tuple[float, Any, str, str, int, float]


class AccessLogWriter:
    """Buffers access lines and writes them in batches."""

    def __init__(self, logger: logging.Logger = access_logger) -> None:
        self.logger = logger
        self._pending: list[Entry] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def add(self, client: Any, method: str, path: str, status: int, ms: float) -> None:
        """Queue one line (``client`` is the ASGI scope's ``(host, port)`` or None)."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        pending = self._pending
        pending.append((time.time(), client, method, path, status, ms))
        if len(pending) >= MAX_PENDING:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
            except RuntimeError:  # no loop (called from a thread): write now
                self.flush()

    def flush(self) -> None:
        """Write every queued line."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries, self._pending = self._pending, []
        if entries:
            self.write(entries)

    def write(self, entries: list[Entry]) -> None:
        """Write these lines now: ``(time.time(), client, method, path, status, ms)`` each."""
        handler = self._plain_handler()
        if handler is None:
            for entry in entries:
                self._emit(entry)
            return
        prefix = f" INFO [{os.getpid()}] {self.logger.name}: "
        text = "".join([self._line(entry, prefix) for entry in entries])
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:
            handler.handleError(self.logger.makeRecord(self.logger.name, logging.INFO, "", 0, text, (), None))
        finally:
            handler.release()

    @staticmethod
    def message(entry: Entry) -> str:
        _, client, method, path, status, ms = entry
        where = f"{client[0]}:{client[1]}" if client else "-"
        return f'{where} "{method} {path}" {status} {ms:.3f}ms'

    def _line(self, entry: Entry, prefix: str) -> str:
        created = entry[0]
        second = int(created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime(LineFormatter.default_time_format, time.localtime(created))
        msecs = int((created - second) * 1000)
        return f"{self._second_text},{msecs:03d}{prefix}{self.message(entry)}\n"

    def _emit(self, entry: Entry) -> None:
        record = self.logger.makeRecord(self.logger.name, logging.INFO, "", 0, "%s", (self.message(entry),), None)
        shift = record.created - entry[0]  # the request's time, not the flush's
        record.created = entry[0]
        record.msecs = int((entry[0] - int(entry[0])) * 1000) + 0.0
        record.relativeCreated -= shift * 1000
        self.logger.handle(record)

    def _plain_handler(self) -> logging.StreamHandler[Any] | None:
        """The one stream handler the lines reach, when they reach exactly that one with
        ``LineFormatter`` and no filter on the way (so writing them here is what logging would do)."""
        logger: logging.Logger | None = self.logger
        found: list[logging.Handler] = []
        while logger is not None:
            if logger.filters:
                return None
            found.extend(logger.handlers)
            if not logger.propagate:
                break
            logger = logger.parent
        if len(found) != 1:
            return None
        handler, formatter = found[0], found[0].formatter
        if (type(handler) is not logging.StreamHandler or handler.filters or handler.level > logging.INFO
                or not isinstance(formatter, LineFormatter) or type(formatter) is not LineFormatter
                or not formatter.is_default):
            return None
        return handler


class AccessLog:
    """ASGI middleware: one access line per HTTP request, through ``writer``; the lines still
    queued are written when the app shuts down."""

    def __init__(self, app: ASGIApp, writer: AccessLogWriter | None = None) -> None:
        self.app = app
        self.writer = writer or AccessLogWriter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._flush_on_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.writer.add(scope.get("client"), scope["method"], scope["path"], status,
                            (time.perf_counter() - started) * 1e3)

    def _flush_on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                self.writer.flush()
            await send(message)
        return wrapped
