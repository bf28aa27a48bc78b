"""Streamed answers of a user script: an iterator or generator (sync or async) instead of one body.

``transform_fn`` (or ``output_fn``) returning one streams its items as they are produced; ``predict_fn``
returning one has each item encoded by ``output_fn(item, accept)`` as it comes. Each item becomes a
``(bytes, content type or None)`` pair (:func:`chunk`): bytes as they are, ``str`` in UTF-8, a
``(body, content_type)`` tuple as ``output_fn`` returns it, anything else JSON (as Multi Model Server
encodes a non-bytes answer). A user exception inside the iteration is translated as any other
(``translate``), so the server logs it in the same words.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson

from mainsail.codecs import toolkit
from mainsail.errors import MainsailError

Chunk = tuple[bytes, str | None]


def is_stream(obj: Any) -> bool:
    """Whether a function's result is a stream: a generator, an async generator, or any iterator
    (an object with ``__next__`` / ``__anext__``) that is not text or bytes."""
    if isinstance(obj, (bytes, str, bytearray, memoryview, dict, list, tuple)):
        return False
    return (inspect.isgenerator(obj) or inspect.isasyncgen(obj) or hasattr(obj, "__anext__")
            or (hasattr(obj, "__next__") and hasattr(obj, "__iter__")))


def chunk(item: Any) -> Chunk:
    """One streamed item as bytes (and the content type it names, if any)."""
    content_type: str | None = None
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str):
        item, content_type = item
    if isinstance(item, bytes):
        return item, content_type
    if isinstance(item, str):
        return item.encode("utf-8"), content_type
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item), content_type
    return orjson.dumps(item, default=toolkit.tolist), content_type


def _translated(exc: Exception, translate: Callable[[Exception], MainsailError]) -> MainsailError:
    return exc if isinstance(exc, MainsailError) else translate(exc)


class SyncChunks:
    """A sync stream as chunks; ``encode`` maps each item first (``output_fn`` for ``predict_fn``'s items)."""

    def __init__(self, source: Any, translate: Callable[[Exception], MainsailError],
                 encode: Callable[[Any], Any] | None = None) -> None:
        self.source = iter(source)
        self.translate = translate
        self.encode = encode

    def __iter__(self) -> Iterator[Chunk]:
        return self

    def __next__(self) -> Chunk:
        try:
            item = next(self.source)
            return chunk(self.encode(item) if self.encode is not None else item)
        except StopIteration:
            raise
        except Exception as exc:
            raise _translated(exc, self.translate) from exc

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


class AsyncChunks:
    """An async stream as chunks (``encode`` as :class:`SyncChunks`; it runs on the event loop)."""

    def __init__(self, source: Any, translate: Callable[[Exception], MainsailError],
                 encode: Callable[[Any], Any] | None = None) -> None:
        self.source = source
        self.translate = translate
        self.encode = encode

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self

    async def __anext__(self) -> Chunk:
        try:
            item = await self.source.__anext__()
            return chunk(self.encode(item) if self.encode is not None else item)
        except StopAsyncIteration:
            raise
        except Exception as exc:
            raise _translated(exc, self.translate) from exc

    async def aclose(self) -> None:
        close = getattr(self.source, "aclose", None)
        if close is not None:
            await close()


def chunks_of(source: Any, translate: Callable[[Exception], MainsailError],
              encode: Callable[[Any], Any] | None = None) -> SyncChunks | AsyncChunks:
    """``source`` (a stream, :func:`is_stream`) as chunks."""
    if hasattr(source, "__anext__"):
        return AsyncChunks(source, translate, encode)
    return SyncChunks(source, translate, encode)
