"""The loopback client's streamed exchange over pooled connections (``Forwarder.stream``, what
InvokeEndpointWithResponseStream relays): pieces as they arrive, the connection pooled again when the
body was read to its end, closed otherwise; flow control on a reader that lags. Real servers, as in
test_forward.py, on both asyncio and uvloop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mainsail.backends.base import ForwardError
from mainsail.backends.loopback import Forwarder
from mainsail.backends.pooled_stream import PooledStream
from tests.control.test_forward import TIMEOUT, Instance, RawServer, instance, read_request, run, uvicorn_server

__all__ = ["instance", "run", "uvicorn_server"]  # fixtures, used by name


async def pieces(fwd: Forwarder, port: int, path: str, body: bytes = b"") -> tuple[int, list[bytes]]:
    async with fwd.stream(port, path, body, (), timeout=TIMEOUT) as upstream:
        return upstream.status, [piece async for piece in upstream.body()]


def test_a_streamed_answer_arrives_whole_and_the_connection_is_reused(run: Any,
                                                                       instance: tuple[int, Instance]) -> None:
    port, seen = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            for _ in range(3):
                status, got = await pieces(fwd, port, "/chunked?parts=5&size=1000")
                assert status == 200 and b"".join(got) == b"".join(bytes([65 + i]) * 1000 for i in range(5))
            status, got = await pieces(fwd, port, "/echo", b"x" * 100_000)  # Content-Length framing
            assert status == 200 and b"".join(got) == b"x" * 100_000
            assert fwd.idle_connections(port) == 1
            assert (await fwd.post(port, "/echo", b"after", (), timeout=TIMEOUT)).body == b"after"
        finally:
            await fwd.aclose()

    run(main())
    assert seen.connections() == 1


def test_a_stream_left_unread_closes_its_connection(run: Any, instance: tuple[int, Instance]) -> None:
    port, _ = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            async with fwd.stream(port, "/chunked?parts=50&size=100000", b"", (), timeout=TIMEOUT) as upstream:
                assert upstream.status == 200
                async for _ in upstream.body():
                    break  # the caller stops early (its client went away)
            assert fwd.idle_connections(port) == 0
            status, got = await pieces(fwd, port, "/chunked?parts=2&size=3")
            assert status == 200 and b"".join(got) == b"AAABBB"
        finally:
            await fwd.aclose()

    run(main())


def test_a_connection_lost_mid_body_raises_and_a_slow_reader_pauses_reading(run: Any) -> None:
    size = 3 * PooledStream.HIGH_WATER

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        if index == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"y" * 65536)
            await writer.drain()  # blocks while the client has paused reading

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            fwd = Forwarder()
            try:
                with pytest.raises(ForwardError, match="mid-response"):
                    await pieces(fwd, raw.port, "/")
                async with fwd.stream(raw.port, "/", b"", (), timeout=TIMEOUT) as upstream:
                    await asyncio.sleep(0.3)  # a lagging reader: at most HIGH_WATER and a read are held
                    assert upstream._size <= PooledStream.HIGH_WATER + (1 << 20)
                    total = 0
                    async for piece in upstream.body():
                        total += len(piece)
                    assert total == size
            finally:
                await fwd.aclose()

    run(main())
