"""Sending a streamed reply (``Reply.chunks``) over raw ASGI: a chunked HTTP response, each chunk
written as the handler produces it, nothing buffered.

The first chunk is taken before the response starts, so an error before it is an ordinary error
response (its status, the JSON body). A sync iterator is advanced in a thread (a chunk may take a model
call), an async one on the loop. The client going away (``http.disconnect``) stops the iteration at once
and closes the iterator, which runs the generator's ``finally`` and frees the worker. An error after the
first chunk cannot change the status: it is logged and the connection is dropped without the chunked
body's end (:class:`StreamAborted`), which a client (the control plane) sees as a broken stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.types import Receive, Send

from mainsail.handlers.base import Reply
from mainsail.serve.http import content_type_header

logger = logging.getLogger(__name__)

_END = object()


class StreamAborted(Exception):
    """A stream failed after its first chunk: the server drops the connection (no end of body). Its
    cause is logged by :func:`send_stream`, so uvicorn's traceback of it is not (``mainsail.log``)."""

    quiet_in_logs = True


def _next_sync(iterator: Any) -> Any:
    try:
        return next(iterator)
    except StopIteration:
        return _END


async def next_chunk(chunks: Any) -> Any:
    """The next ``(bytes, content type)`` pair of ``chunks``, or ``_END``."""
    if hasattr(chunks, "__anext__"):
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return _END
    return await asyncio.to_thread(_next_sync, chunks)


async def close_chunks(chunks: Any) -> None:
    with contextlib.suppress(Exception):
        if hasattr(chunks, "aclose"):
            await chunks.aclose()
        elif hasattr(chunks, "close"):
            await asyncio.to_thread(chunks.close)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_stream(send: Send, receive: Receive, reply: Reply, first: Any) -> bool:
    """Send ``reply`` whose first pair ``first`` was taken already (``_END``: an empty stream). Returns
    whether the stream was sent to its end (False: the client went away)."""
    chunks = reply.chunks
    body, content_type = (b"", None) if first is _END else first
    headers = [(b"content-type", content_type_header(content_type or reply.content_type))]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()
                if k.lower() not in ("content-type", "content-length")]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    if first is _END:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await send({"type": "http.response.body", "body": body, "more_body": True})
        while True:
            step = asyncio.ensure_future(next_chunk(chunks))
            await asyncio.wait((step, gone), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():  # the client went away while the handler was producing
                await asyncio.wait((step,))  # a thread cannot be interrupted: let its next() return
                if not step.cancelled():
                    step.exception()  # taken: a failure after the client left is nobody's answer
                return False
            try:
                item = step.result()
            except Exception as exc:
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                logger.error("the stream failed after its first chunk: %s", message, exc_info=exc.__cause__ or exc)
                raise StreamAborted(message) from exc
            if item is _END:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return True
            if gone.done():
                return False
            if item[0]:
                await send({"type": "http.response.body", "body": item[0], "more_body": True})
    finally:
        gone.cancel()
        await close_chunks(chunks)


async def first_chunk(reply: Reply) -> Any:
    """The stream's first pair (an error raised here is an ordinary error response)."""
    try:
        return await next_chunk(reply.chunks)
    except BaseException:
        await close_chunks(reply.chunks)
        raise
