"""The router's loopback HTTP/1.1 client (``mainsail.backends.loopback``) against real servers.

Well-behaved answers come from a small Starlette app under a real uvicorn (in a thread); misbehaving
ones from raw ``asyncio.start_server`` servers in the test's own event loop. Every test runs on both
the standard asyncio loop and uvloop (``mainsail up`` runs on uvloop when it is installed).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mainsail.backends.base import ForwardError, Upstream
from mainsail.backends.loopback import Forwarder
from tests.conftest import ThreadedServer, free_port

TIMEOUT = 5.0  # per exchange, well above anything a passing test needs


# -- a well-behaved instance -------------------------------------------------------------------------


class Instance:
    """What the Starlette app saw: the client port of each request (one port per connection)."""

    def __init__(self) -> None:
        self.client_ports: list[int] = []

    def connections(self) -> int:
        return len(set(self.client_ports))


def make_app(seen: Instance) -> Starlette:
    async def echo(request: Request) -> Response:
        seen.client_ports.append(request.scope["client"][1])
        delay = float(request.query_params.get("delay", "0"))
        if delay:
            await asyncio.sleep(delay)
        body = await request.body()
        return Response(body, media_type=request.headers.get("content-type", "application/octet-stream"))

    async def headers(request: Request) -> Response:
        return JSONResponse([[k.decode(), v.decode()] for k, v in request.headers.raw])

    async def chunked(request: Request) -> Response:
        parts = int(request.query_params.get("parts", "5"))
        size = int(request.query_params.get("size", "10"))

        async def chunks() -> Any:
            for i in range(parts):
                yield bytes([65 + i % 26]) * size

        return StreamingResponse(chunks(), media_type="text/plain")

    async def repeated(request: Request) -> Response:
        response = Response(b"ok", media_type="text/plain")
        response.raw_headers.extend([(b"x-multi", b"a"), (b"x-multi", b"b"), (b"X-Single", b"One")])
        return response

    async def close(request: Request) -> Response:
        seen.client_ports.append(request.scope["client"][1])
        return Response(b"bye", headers={"Connection": "close"})

    async def failing(request: Request) -> Response:
        return Response("no model here", status_code=int(request.path_params["code"]))

    return Starlette(routes=[
        Route("/echo", echo, methods=["POST"]),
        Route("/headers", headers, methods=["POST"]),
        Route("/chunked", chunked, methods=["POST"]),
        Route("/repeated", repeated, methods=["POST"]),
        Route("/close", close, methods=["POST"]),
        Route("/status/{code:int}", failing, methods=["POST"]),
    ])


@pytest.fixture(scope="module")
def uvicorn_server() -> Iterator[tuple[ThreadedServer, Instance]]:
    seen = Instance()
    server = ThreadedServer(make_app(seen), lifespan="off")
    server.start()
    try:
        yield server, seen
    finally:
        server.stop()


@pytest.fixture
def instance(uvicorn_server: tuple[ThreadedServer, Instance]) -> tuple[int, Instance]:
    server, seen = uvicorn_server
    seen.client_ports.clear()
    return server.port, seen


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Runs a test's coroutine to completion on a fresh loop of the given kind, within 30 s."""

    def runner(coro: Coroutine[Any, Any, None]) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(30):
                await coro

        if request.param == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            uvloop.run(bounded())
        else:
            asyncio.run(bounded())

    return runner


async def post(fwd: Forwarder, port: int, path: str, body: bytes = b"",
               headers: tuple[tuple[str, str], ...] = (), timeout: float = TIMEOUT) -> Upstream:
    return await fwd.post(port, path, body, headers, timeout=timeout)


# -- a misbehaving instance ---------------------------------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """An ``asyncio.start_server`` in the test's loop; ``handler(reader, writer, index)`` per connection,
    ``index`` counting connections from 0. Closes every connection it accepted on exit."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_by_peer = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.append(writer)
        index = self.connections
        self.connections += 1
        try:
            await self.handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()

    async def wait_for_eof(self, reader: asyncio.StreamReader) -> None:
        """Reads until the client closes the connection, then counts it."""
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.closed_by_peer += 1


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request (head and Content-Length body); b"" at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def reply(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- well-behaved answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 5 * 1024 * 1024])
def test_content_length_body_round_trips(run: Any, instance: tuple[int, Instance], size: int) -> None:
    port, _ = instance
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def main() -> None:
        fwd = Forwarder()
        try:
            upstream = await post(fwd, port, "/echo", body, (("Content-Type", "application/x-test"),))
        finally:
            await fwd.aclose()
        assert upstream.status == 200
        assert upstream.body == body
        assert upstream.headers["content-type"] == "application/x-test"
        assert upstream.headers["content-length"] == str(size)

    run(main())


def test_request_headers_are_forwarded_without_hop_by_hop_ones(run: Any, instance: tuple[int, Instance]) -> None:
    port, _ = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            upstream = await post(fwd, port, "/headers", b"abc", (
                ("Content-Type", "text/csv"), ("Accept", "application/json"),
                ("X-Amzn-SageMaker-Custom-Attributes", "a=1, b=2"), ("Connection", "close"),
                ("Transfer-Encoding", "chunked"), ("Content-Length", "999"), ("Host", "elsewhere")))
        finally:
            await fwd.aclose()
        seen = json.loads(upstream.body)
        names = [name for name, _ in seen]
        assert sorted(names) == sorted(["host", "content-type", "accept", "x-amzn-sagemaker-custom-attributes",
                                        "content-length"])
        assert dict(seen)["host"] == f"127.0.0.1:{port}"
        assert dict(seen)["content-length"] == "3"
        assert dict(seen)["x-amzn-sagemaker-custom-attributes"] == "a=1, b=2"

    run(main())


def test_header_injection_is_refused(run: Any, instance: tuple[int, Instance]) -> None:
    port, _ = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            with pytest.raises(ForwardError, match="invalid header"):
                await post(fwd, port, "/echo", b"", (("Accept", "x\r\nX-Evil: 1"),))
        finally:
            await fwd.aclose()

    run(main())


def test_chunked_response(run: Any, instance: tuple[int, Instance]) -> None:
    port, _ = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            small = await post(fwd, port, "/chunked?parts=5&size=3")
            large = await post(fwd, port, "/chunked?parts=40&size=65536")
            assert fwd.idle_connections(port) == 1  # a chunked response leaves the connection reusable
        finally:
            await fwd.aclose()
        assert small.status == 200
        assert small.headers["transfer-encoding"] == "chunked"
        assert small.body == b"AAABBBCCCDDDEEE"
        assert large.body == b"".join(bytes([65 + i % 26]) * 65536 for i in range(40))

    run(main())


def test_repeated_response_headers_are_joined(run: Any, instance: tuple[int, Instance]) -> None:
    port, _ = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            upstream = await post(fwd, port, "/repeated")
        finally:
            await fwd.aclose()
        assert upstream.headers["x-multi"] == "a, b"
        assert upstream.headers["x-single"] == "One"
        assert upstream.text == "ok"

    run(main())


def test_error_status_and_text_come_back(run: Any, instance: tuple[int, Instance]) -> None:
    port, _ = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            upstream = await post(fwd, port, "/status/507")
            assert fwd.idle_connections(port) == 1
        finally:
            await fwd.aclose()
        assert upstream.status == 507
        assert upstream.text == "no model here"

    run(main())


def test_sequential_posts_reuse_one_connection(run: Any, instance: tuple[int, Instance]) -> None:
    port, seen = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            for i in range(50):
                upstream = await post(fwd, port, "/echo", b"request %d" % i)
                assert upstream.body == b"request %d" % i
            assert fwd.idle_connections(port) == 1
        finally:
            await fwd.aclose()

    run(main())
    assert len(seen.client_ports) == 50
    assert seen.connections() == 1


def test_concurrent_posts_each_get_their_own_answer(run: Any, instance: tuple[int, Instance]) -> None:
    port, seen = instance

    async def main() -> None:
        fwd = Forwarder(max_idle=8)
        try:
            bodies = [b"body %d " % i * (i + 1) for i in range(32)]
            # a small delay keeps all 32 in flight at once: one connection each
            answers = await asyncio.gather(*(post(fwd, port, "/echo?delay=0.05", b) for b in bodies))
            assert [a.body for a in answers] == bodies
            assert fwd.idle_connections(port) == 8  # the rest were closed on release
            assert fwd.open_connections() == 8
            again = await asyncio.gather(*(post(fwd, port, "/echo", b) for b in bodies[:8]))
            assert [a.body for a in again] == bodies[:8]
        finally:
            await fwd.aclose()

    run(main())
    assert seen.connections() == 32  # the second round reused pooled connections only


def test_connection_close_is_honoured(run: Any, instance: tuple[int, Instance]) -> None:
    port, seen = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            for _ in range(3):
                upstream = await post(fwd, port, "/close")
                assert upstream.body == b"bye"
                assert upstream.headers["connection"] == "close"
                assert fwd.idle_connections(port) == 0
        finally:
            await fwd.aclose()

    run(main())
    assert seen.connections() == 3


def test_idle_connection_closed_by_uvicorn_keep_alive_timeout(run: Any) -> None:
    seen = Instance()
    server = ThreadedServer(make_app(seen), lifespan="off")
    server.server.config.timeout_keep_alive = 0.1  # type: ignore[assignment]
    server.start()

    async def main() -> None:
        fwd = Forwarder()
        try:
            assert (await post(fwd, server.port, "/echo", b"one")).body == b"one"
            await asyncio.sleep(0.5)  # uvicorn closes the idle connection meanwhile
            assert fwd.open_connections() == 0  # and the pool forgot it
            assert (await post(fwd, server.port, "/echo", b"two")).body == b"two"
        finally:
            await fwd.aclose()

    try:
        run(main())
    finally:
        server.stop()
    assert seen.connections() == 2


def test_aclose_closes_pooled_connections(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(reply(b"ok"))
        await raw.wait_for_eof(reader)

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            fwd = Forwarder()
            assert (await post(fwd, raw.port, "/")).body == b"ok"
            assert fwd.idle_connections(raw.port) == 1
            await fwd.aclose()
            assert fwd.idle_connections(raw.port) == 0
            async with asyncio.timeout(5):
                while raw.closed_by_peer < 1:
                    await asyncio.sleep(0.01)

    run(main())


# -- the retry of a dead keep-alive connection ----------------------------------------------------------


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_reused_connection_dead_before_answering_is_retried_once(run: Any, how: str) -> None:
    """The server answers the first request of each connection, keeps it open, and drops it (FIN or
    RST) when a second request arrives on it: the race of an idle timeout with a new request."""

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
            fwd = Forwarder()
            try:
                assert (await post(fwd, raw.port, "/", b"first")).body == b"first"
                assert fwd.idle_connections(raw.port) == 1
                assert (await post(fwd, raw.port, "/", b"second")).body == b"second"  # retried
                assert raw.connections == 2
                assert (await post(fwd, raw.port, "/", b"third")).body == b"third"  # retried again
                assert raw.connections == 3
                assert fwd.open_connections() == 1
            finally:
                await fwd.aclose()

    run(main())


def test_server_closing_after_each_response_without_saying_so(run: Any) -> None:
    """An HTTP/1.1 server that closes each connection after one response, without ``Connection: close``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        request = await read_request(reader)
        writer.write(reply(request.rpartition(b"\r\n\r\n")[2]))
        await writer.drain()
        writer.close()

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            fwd = Forwarder()
            try:
                for i in range(5):
                    assert (await post(fwd, raw.port, "/", b"n%d" % i)).body == b"n%d" % i
            finally:
                await fwd.aclose()
            assert raw.connections == 5

    run(main())


def test_fresh_connection_failure_is_not_retried(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.close()  # never answers

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            fwd = Forwarder()
            try:
                with pytest.raises(ForwardError, match="closed the connection before answering"):
                    await post(fwd, raw.port, "/", b"x")
                assert raw.connections == 1
            finally:
                await fwd.aclose()

    run(main())


def test_reused_connection_failing_mid_response_is_not_retried(run: Any) -> None:
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
            fwd = Forwarder()
            try:
                assert (await post(fwd, raw.port, "/")).body == b"ok"
                with pytest.raises(ForwardError, match="mid-response"):
                    await post(fwd, raw.port, "/")
                assert raw.connections == 1
                assert fwd.idle_connections(raw.port) == 0
            finally:
                await fwd.aclose()

    run(main())


# -- other response framings ------------------------------------------------------------------------------


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
            fwd = Forwarder()
            try:
                for _ in range(2):
                    upstream = await post(fwd, raw.port, "/")
                    assert upstream.status == 200
                    assert upstream.body == b"hello world"
                    assert fwd.idle_connections(raw.port) == 0
                assert raw.connections == 2
            finally:
                await fwd.aclose()

    run(main())


def test_http_1_0_keep_alive_with_content_length_is_not_reused(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while await read_request(reader):
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            fwd = Forwarder()
            try:
                for _ in range(2):
                    assert (await post(fwd, raw.port, "/")).body == b"ok"
                assert raw.connections == 2
            finally:
                await fwd.aclose()

    run(main())


def test_informational_response_is_skipped(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while await read_request(reader):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"done"))

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            fwd = Forwarder()
            try:
                for _ in range(2):
                    upstream = await post(fwd, raw.port, "/")
                    assert (upstream.status, upstream.body) == (200, b"done")
                assert raw.connections == 1
            finally:
                await fwd.aclose()

    run(main())


# -- failures -------------------------------------------------------------------------------------------


def test_refused_port(run: Any) -> None:
    port = free_port()  # nothing listens there

    async def main() -> None:
        fwd = Forwarder()
        try:
            with pytest.raises(ForwardError, match=f"refused by 127.0.0.1:{port}"):
                await post(fwd, port, "/", b"x")
        finally:
            await fwd.aclose()

    run(main())


def test_server_that_never_answers_times_out_and_is_not_pooled(run: Any) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        await raw.wait_for_eof(reader)  # never answers; notes when the client gives up

    raw = RawServer(handler)

    async def main() -> None:
        async with raw:
            fwd = Forwarder()
            try:
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(ForwardError, match=r"timed out after 0\.3 s"):
                    await post(fwd, raw.port, "/", b"x", timeout=0.3)
                assert 0.25 < loop.time() - started < 2.0
                assert fwd.idle_connections(raw.port) == 0
                assert fwd.open_connections() == 0
                async with asyncio.timeout(5):  # the connection was closed, not kept
                    while raw.closed_by_peer < 1:
                        await asyncio.sleep(0.01)
                assert raw.connections == 1  # a timeout is not retried
            finally:
                await fwd.aclose()

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
            fwd = Forwarder()
            try:
                with pytest.raises(ForwardError, match="malformed response"):
                    await post(fwd, raw.port, "/", b"x")
                assert fwd.idle_connections(raw.port) == 0
            finally:
                await fwd.aclose()

    run(main())


def test_response_larger_than_the_ceiling(run: Any, instance: tuple[int, Instance]) -> None:
    port, _ = instance

    async def main() -> None:
        fwd = Forwarder(max_response=64 * 1024)
        try:
            assert (await post(fwd, port, "/echo", b"y" * 1000)).body == b"y" * 1000
            with pytest.raises(ForwardError, match="larger than 65536 bytes"):
                await post(fwd, port, "/echo", b"y" * 100_000)
            assert fwd.idle_connections(port) == 0
            assert (await post(fwd, port, "/echo", b"z")).body == b"z"
        finally:
            await fwd.aclose()

    run(main())


def test_cancellation_mid_request_does_not_poison_the_pool(run: Any, instance: tuple[int, Instance]) -> None:
    port, seen = instance

    async def main() -> None:
        fwd = Forwarder()
        try:
            assert (await post(fwd, port, "/echo", b"warm")).body == b"warm"
            slow = asyncio.create_task(post(fwd, port, "/echo?delay=0.3", b"slow"))
            while len(seen.client_ports) < 2:  # the slow request reached the server on the pooled connection
                await asyncio.sleep(0.005)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert fwd.idle_connections(port) == 0
            assert fwd.open_connections() == 0
            # the late answer to the cancelled request must not be read as this one's
            for i in range(3):
                assert (await post(fwd, port, "/echo", b"after %d" % i)).body == b"after %d" % i
            await asyncio.sleep(0.4)  # past the slow answer
            assert (await post(fwd, port, "/echo", b"last")).body == b"last"
        finally:
            await fwd.aclose()

    run(main())
    assert seen.connections() == 2
