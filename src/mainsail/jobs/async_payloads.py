"""An asynchronous inference's payloads, streamed: the input read from its location and the result
written to its own, a piece at a time (:mod:`mainsail.jobs.async_inference`).

Locations are those of :class:`mainsail.jobs.storage.Storage`: mainsail's own S3 store, real S3
through boto3, or local files. Their reads and writes block, so each runs in a worker thread, one at
a time per payload.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from mainsail.jobs.storage import InputObject, local_path, s3_parts

logger = logging.getLogger(__name__)

#: The largest async payload read from its input location (SageMaker: 1 GB).
MAX_ASYNC_PAYLOAD = 1024**3
CHUNK = 1 << 20  # bytes read from the input, and written to the output, at a time
_T = TypeVar("_T")


class InputError(Exception):
    """The input location could not be read (or is over :data:`MAX_ASYNC_PAYLOAD`)."""


class _Blocking:
    """Blocking calls on one file, made one at a time in a worker thread. A cancelled await leaves
    its call running; :meth:`settle` waits for it, so that closing a file never races a read or write."""

    def __init__(self) -> None:
        self._last: asyncio.Future[Any] | None = None

    async def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        self._last = future
        result: _T = await asyncio.shield(future)
        return result

    async def settle(self) -> None:
        last = self._last
        if last is not None:
            if not last.done():
                await asyncio.wait([last])
            if not last.cancelled():
                last.exception()  # retrieved: its failure was (or will be) reported another way


class PayloadInput(_Blocking):
    """The input object, read in :data:`CHUNK` pieces from its location: mainsail's own store, real
    S3 (get_object's streaming body) or a file, never whole."""

    def __init__(self, storage: Any, location: str) -> None:
        super().__init__()
        self.storage = storage
        self.location = location
        self.size: int | None = None
        """Its size when the reader knows it (a file of the own store, a local file); ``None``: sent chunked."""
        self._fh: Any = None

    def _open(self) -> Any:
        local = local_path(self.location)
        if local is not None:
            obj = InputObject(self.location, local.name, 0, path=str(local))
        else:
            bucket, key = s3_parts(self.location)
            obj = InputObject(self.location, key, 0, bucket=bucket, key=key)
        try:
            return self.storage.open_raw(obj)
        except Exception as exc:
            raise InputError(str(exc)) from exc

    async def open(self) -> None:
        self._fh = await self.call(self._open)
        try:
            st = os.fstat(self._fh.fileno())
            self.size = st.st_size if stat.S_ISREG(st.st_mode) else None
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
            self.size = None
        if self.size is not None and self.size > MAX_ASYNC_PAYLOAD:
            raise InputError(f"the input is larger than {MAX_ASYNC_PAYLOAD} bytes ({self.size})")

    def _read(self) -> bytes:
        try:
            data: bytes = self._fh.read(CHUNK)
        except Exception as exc:
            raise InputError(str(exc)) from exc
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        total = 0
        while data := await self.call(self._read):
            total += len(data)
            if total > MAX_ASYNC_PAYLOAD:
                raise InputError(f"the input is larger than {MAX_ASYNC_PAYLOAD} bytes")
            yield data

    async def close(self) -> None:
        await self.settle()
        if self._fh is not None:
            fh, self._fh = self._fh, None
            await self.call(fh.close)


class PayloadOutput(_Blocking):
    """The result written to its location as it arrives, in pieces of about :data:`CHUNK`: a temp
    file renamed into place (own store, file://) or a multipart upload (real S3), see
    :meth:`mainsail.jobs.storage.Storage.writer`. Nothing is visible there before :meth:`commit`."""

    def __init__(self, storage: Any, location: str, content_type: str | None) -> None:
        super().__init__()
        self.storage = storage
        self.location = location
        self.content_type = content_type or None
        self._sink: Any = None
        self._buffer = bytearray()

    async def open(self) -> None:
        self._sink = await self.call(self.storage.writer, self.location, self.content_type)

    async def write(self, piece: bytes) -> None:
        self._buffer += piece
        if len(self._buffer) >= CHUNK:
            data, self._buffer = bytes(self._buffer), bytearray()
            await self.call(self._sink.write, data)

    async def commit(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await self.call(self._sink.write, data)
        await self.call(self._sink.commit)

    async def abort(self) -> None:
        await self.settle()
        self._buffer = bytearray()
        if self._sink is not None:
            try:
                await self.call(self._sink.abort)
            except Exception:
                logger.warning("could not remove the partial result at %s", self.location, exc_info=True)
