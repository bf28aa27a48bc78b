"""``AiohttpTransport.post`` (aiohttp's client) keeps the contract of the hand-written ``Forwarder``.

The same servers as ``test_forward.py``: a Starlette app under a real uvicorn in a thread for the
well-behaved answers, raw ``asyncio.start_server`` servers in the test's loop for the misbehaving ones;
every test on the standard asyncio loop and on uvloop. Connection counts are taken on the server side.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mainsail.backends.base import Address, ForwardError, Upstream
from tests.conftest import free_port

# the Forwarder's servers and fixtures: the same instance, on the same loops, for both clients
from tests.control.test_forward import (  # noqa: F401 - instance, run and uvicorn_server are fixtures
    Instance,
    RawServer,
    instance,
    read_request,
    reply,
    reset,
    run,
    uvicorn_server,
)

aiohttp_transport = pytest.importorskip("mainsail.backends.aiohttp_transport")
AiohttpTransport = aiohttp_transport.AiohttpTransport

TIMEOUT = 5.0


async def post(transport: Any, port: int, path: str, body: bytes = b"",
               headers: tuple[tuple[str, str], ...] = (), timeout: float = TIMEOUT) -> Upstream:
    upstream: Upstream = await transport.post(Address("127.0.0.1", port), path, body, headers, timeout=timeout)
    return upstream


@pytest.mark.parametrize("size", [1, 5 * 1024 * 1024])
def test_large_and_small_bodies_round_trip(run: Any, instance: tuple[int, Instance], size: int) -> None:
    port, _ = instance
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def main() -> None:
        transport = AiohttpTransport()
        try:
            upstream = await post(transport, port, "/echo", body, (("Content-Type", "application/x-test"),))
        finally:
            await transport.aclose()
        assert (upstream.status, upstream.body) == (200, body)
        assert upstream.headers["content-type"] == "application/x-test"
        assert upstream.headers["content-length"] == str(size)

    run(main())


def test_the_instance_sees_the_same_headers_as_from_the_forwarder(run: Any, instance: tuple[int, Instance]) -> None:
    port, _ = instance

    async def main() -> None:
        transport = AiohttpTransport()
        try:
            upstream = await post(transport, port, "/headers", b"abc", (
                ("Content-Type", "text/csv"), ("Accept", "application/json"),
                ("X-Amzn-SageMaker-Custom-Attributes", "a=1, b=2"), ("Connection", "close"),
                ("Transfer-Encoding", "chunked"), ("Content-Length", "999"), ("Host", "elsewhere")))
            with pytest.raises(ForwardError, match="invalid header"):
                await post(transport, port, "/echo", b"", (("Accept", "x\r\nX-Evil: 1"),))
            with pytest.raises(ForwardError, match="invalid path"):
                await post(transport, port, "echo")
        finally:
            await transport.aclose()
        seen = dict(json.loads(upstream.body))
        assert sorted(seen) == sorted(["host", "content-type", "accept", "x-amzn-sagemaker-custom-attributes",
                                       "content-length"])
        assert seen["host"] == f"127.0.0.1:{port}" and seen["content-length"] == "3"
        assert (seen["content-type"], seen["x-amzn-sagemaker-custom-attributes"]) == ("text/csv", "a=1, b=2")

    run(main())


def test_response_headers_chunked_bodies_and_error_statuses(run: Any, instance: tuple[int, Instance]) -> None:
    port, seen = instance

    async def main() -> None:
        transport = AiohttpTransport()
        try:
            repeated = await post(transport, port, "/repeated")
            small = await post(transport, port, "/chunked?parts=5&size=3")
            large = await post(transport, port, "/chunked?parts=40&size=65536")
            failed = await post(transport, port, "/status/507")
        finally:
            await transport.aclose()
        assert (repeated.headers["x-multi"], repeated.headers["x-single"], repeated.text) == ("a, b", "One", "ok")
        assert small.headers["transfer-encoding"] == "chunked" and small.body == b"AAABBBCCCDDDEEE"
        assert large.body == b"".join(bytes([65 + i % 26]) * 65536 for i in range(40))
        assert (failed.status, failed.text) == (507, "no model here")

    run(main())


def test_keep_alive_reuse_sequential_and_concurrent(run: Any, instance: tuple[int, Instance]) -> None:
    port, seen = instance

    async def main() -> None:
        transport = AiohttpTransport()
        try:
            for i in range(50):
                assert (await post(transport, port, "/echo", b"request %d" % i)).body == b"request %d" % i
            assert seen.connections() == 1
            bodies = [b"body %d " % i * (i + 1) for i in range(32)]
            answers = await asyncio.gather(*(post(transport, port, "/echo?delay=0.05", b) for b in bodies))
            assert [a.body for a in answers] == bodies
            opened = seen.connections()
            assert 32 <= opened <= 33  # one each while all 32 were in flight (the first one among them)
            again = await asyncio.gather(*(post(transport, port, "/echo", b) for b in bodies))
            assert [a.body for a in again] == bodies
            assert seen.connections() == opened  # all pooled, none opened
        finally:
            await transport.aclose()

    run(main())


def test_connection_close_is_honoured(run: Any, instance: tuple[int, Instance]) -> None:
    port, seen = instance

    async def main() -> None:
        transport = AiohttpTransport()
        try:
            for _ in range(3):
                upstream = await post(transport, port, "/close")
                assert upstream.body == b"bye" and upstream.headers["connection"] == "close"
        finally:
            await transport.aclose()

    run(main())
    assert seen.connections() == 3


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_reused_connection_dead_before_answering_is_retried(run: Any, how: str) -> None:
    """Each connection answers its first request and drops (FIN or RST) on the second."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        request = await read_request(reader)
        writer.write(reply(request.rpartition(b"\r\n\r\n")[2]))
        await read_request(reader)
        if how == "reset":
            reset(writer)
        else:
            writer.close()

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            transport = AiohttpTransport()
            try:
                assert (await post(transport, raw.port, "/", b"first")).body == b"first"
                assert (await post(transport, raw.port, "/", b"second")).body == b"second"  # retried
                assert raw.connections == 2
                assert (await post(transport, raw.port, "/", b"third")).body == b"third"
                assert raw.connections == 3
            finally:
                await transport.aclose()

    run(main())


def test_fresh_connection_closed_before_answering_is_not_retried(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.close()

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            transport = AiohttpTransport()
            try:
                with pytest.raises(ForwardError, match="closed the connection before answering") as caught:
                    await post(transport, raw.port, "/", b"x")
                assert not caught.value.unsent and raw.connections == 1
            finally:
                await transport.aclose()

    run(main())


def test_instance_closing_mid_response_is_an_error_not_retried(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(reply(b"ok"))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            transport = AiohttpTransport()
            try:
                assert (await post(transport, raw.port, "/")).body == b"ok"
                with pytest.raises(ForwardError, match="mid-response") as caught:
                    await post(transport, raw.port, "/")
                assert not caught.value.unsent and raw.connections == 1
            finally:
                await transport.aclose()

    run(main())


@pytest.mark.parametrize("status_line", [b"HTTP/1.0 200 OK", b"HTTP/1.1 200 OK\r\nConnection: close"])
def test_body_delimited_by_the_end_of_the_connection(run: Any, status_line: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(status_line + b"\r\nContent-Type: text/plain\r\n\r\nhello ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"world")
        await writer.drain()
        writer.close()

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            transport = AiohttpTransport()
            try:
                for _ in range(2):
                    assert (await post(transport, raw.port, "/")).body == b"hello world"
                assert raw.connections == 2
            finally:
                await transport.aclose()

    run(main())


def test_refused_connection_is_unsent(run: Any) -> None:
    port = free_port()  # nothing listens there

    async def main() -> None:
        transport = AiohttpTransport()
        try:
            with pytest.raises(ForwardError, match=f"refused by 127.0.0.1:{port}") as caught:
                await post(transport, port, "/", b"x")
            assert caught.value.unsent
        finally:
            await transport.aclose()

    run(main())


def test_instance_that_never_answers_times_out_and_is_not_pooled(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        await raw.wait_for_eof(reader)

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            transport = AiohttpTransport()
            try:
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(ForwardError, match=r"timed out after 0\.3 s") as caught:
                    await post(transport, raw.port, "/", b"x", timeout=0.3)
                assert 0.25 < loop.time() - started < 2.0 and not caught.value.unsent
                async with asyncio.timeout(5):  # the connection was closed, not kept
                    while raw.closed_by_peer < 1:
                        await asyncio.sleep(0.01)
                assert raw.connections == 1  # a timeout is not retried
            finally:
                await transport.aclose()

    run(main())


@pytest.mark.parametrize("answer", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_response(run: Any, answer: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(answer)
        await raw.wait_for_eof(reader)

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            transport = AiohttpTransport()
            try:
                with pytest.raises(ForwardError, match="malformed response"):
                    await post(transport, raw.port, "/", b"x")
            finally:
                await transport.aclose()

    run(main())


def test_response_larger_than_the_ceiling(run: Any, instance: tuple[int, Instance]) -> None:
    port, _ = instance

    async def main() -> None:
        transport = AiohttpTransport(max_response=64 * 1024)
        try:
            assert (await post(transport, port, "/echo", b"y" * 1000)).body == b"y" * 1000
            with pytest.raises(ForwardError, match="larger than 65536 bytes"):
                await post(transport, port, "/echo", b"y" * 100_000)
            with pytest.raises(ForwardError, match="larger than 65536 bytes"):
                await post(transport, port, "/chunked?parts=3&size=30000")
            assert (await post(transport, port, "/echo", b"z")).body == b"z"
        finally:
            await transport.aclose()

    run(main())


def test_cancellation_mid_request_does_not_poison_the_pool(run: Any, instance: tuple[int, Instance]) -> None:
    port, seen = instance

    async def main() -> None:
        transport = AiohttpTransport()
        try:
            assert (await post(transport, port, "/echo", b"warm")).body == b"warm"
            slow = asyncio.create_task(post(transport, port, "/echo?delay=0.3", b"slow"))
            while len(seen.client_ports) < 2:
                await asyncio.sleep(0.005)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            for i in range(3):  # the late answer to the cancelled request is never read as this one's
                assert (await post(transport, port, "/echo", b"after %d" % i)).body == b"after %d" % i
            await asyncio.sleep(0.4)
            assert (await post(transport, port, "/echo", b"last")).body == b"last"
        finally:
            await transport.aclose()

    run(main())
    assert seen.connections() == 2


def test_stream_ping_and_blocking_are_the_http_transports(instance: tuple[int, Instance]) -> None:
    port, _ = instance
    transport = AiohttpTransport()
    client = transport.blocking(TIMEOUT)
    try:
        assert client.post(Address("127.0.0.1", port), "/echo", b"sync", ()).body == b"sync"
    finally:
        client.close()
    assert transport.ping(Address("127.0.0.1", free_port()), timeout=0.5) is False
