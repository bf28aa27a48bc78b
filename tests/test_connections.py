"""mainsail.connections: the rules on a request's head and body, on a real uvicorn over loopback sockets."""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Iterator

import pytest
from starlette.types import Receive, Scope, Send

from mainsail.connections import guarded_http, raise_open_files_limit
from tests.conftest import ThreadedServer

HEAD_TIMEOUT = 1.0
HEAD_MAX = 4096
MIN_RATE = 200.0


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the body's length; ``/slow-reader`` waits 2.5 s before it reads."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow-reader":
        await asyncio.sleep(2.5)
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    live = ThreadedServer(echo_length, lifespan="off", timeout_keep_alive=10,
                          http=guarded_http(head_timeout=HEAD_TIMEOUT, head_max_bytes=HEAD_MAX,
                                            body_min_rate=MIN_RATE))
    live.start()
    yield live
    live.stop()


def connect(server: ThreadedServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (10 s at most)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n")[0] + b" " + body


def dribble_until_answered(sock: socket.socket, byte: bytes, seconds: float) -> bytes:
    """Send ``byte`` every 0.1 s until the server answers or closes, or ``seconds`` pass; what it sent."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.send(byte)
        except OSError:
            break
        sock.settimeout(0.1)
        try:
            if sock.recv(1, socket.MSG_PEEK):
                break
        except TimeoutError:
            continue
        finally:
            sock.settimeout(10)
    return read_all(sock)


def test_a_connection_that_sends_nothing_is_closed_silently_after_the_head_timeout(server: ThreadedServer) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""
        assert HEAD_TIMEOUT * 0.9 <= time.monotonic() - started < HEAD_TIMEOUT + 5


def test_a_head_sent_a_byte_at_a_time_is_answered_408(server: ThreadedServer) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for byte in b"X-Slow: a\r\n" * 3:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"RequestTimeout"' in answer
        assert time.monotonic() - started < HEAD_TIMEOUT + 5


def test_a_head_over_the_size_limit_is_answered_431(server: ThreadedServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):  # one read after another: the limit holds however the head is split
            try:
                sock.sendall(b"X-Big: " + b"a" * 1000 + b"\r\n")
            except OSError:
                break
            time.sleep(0.02)
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 431 "), answer


def test_a_head_under_the_limit_in_many_pieces_is_served(server: ThreadedServer) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n" + b"X-A: " + b"b" * 3000 + b"\r\n\r\nabc"
    with connect(server) as sock:
        for start in range(0, len(head), 500):
            sock.sendall(head[start:start + 500])
            time.sleep(0.05)
        assert read_response(sock) == b"HTTP/1.1 200 OK 3"


def test_a_body_under_the_minimum_rate_is_answered_408(server: ThreadedServer) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        answer = dribble_until_answered(sock, b"1", 2 * HEAD_TIMEOUT + 6)  # 10 bytes a second, of 200
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - started < 2 * HEAD_TIMEOUT + 5


def test_a_body_at_a_steady_pace_outlasts_the_head_timeout(server: ThreadedServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n")
        for _ in range(30):  # 100 bytes every 0.05 s: 2 kB/s for 1.5 s
            sock.sendall(b"1" * 100)
            time.sleep(0.05)
        assert read_response(sock) == b"HTTP/1.1 200 OK 3000"


def test_a_body_the_app_is_slow_to_read_is_not_the_clients_fault() -> None:
    # 10 MB/s at least: what uvicorn buffers before it stops reading (until the app asks) buys well
    # under the 2.5 s the app waits, so only the paused clock keeps this request alive
    fast = ThreadedServer(echo_length, lifespan="off",
                          http=guarded_http(head_timeout=HEAD_TIMEOUT, head_max_bytes=HEAD_MAX, body_min_rate=1e7))
    fast.start()
    size = 4_000_000
    try:
        with connect(fast) as sock:
            sock.sendall(b"POST /slow-reader HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
                         + b"1" * size)
            assert read_response(sock) == b"HTTP/1.1 200 OK %d" % size
    finally:
        fast.stop()


def test_keep_alive_connections_idle_past_the_head_timeout_serve_on(server: ThreadedServer) -> None:
    with connect(server) as sock:
        for pause in (HEAD_TIMEOUT * 1.5, 0):  # idle: uvicorn's keep-alive timeout (10 s here) applies
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
            assert read_response(sock) == b"HTTP/1.1 200 OK 2"
            time.sleep(pause)


@pytest.mark.parametrize("slow", ["head", "body"])
def test_a_kept_alive_connection_that_turns_slow_is_answered_408(server: ThreadedServer, slow: str) -> None:
    with connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
        assert read_response(sock) == b"HTTP/1.1 200 OK 2"
        time.sleep(HEAD_TIMEOUT * 1.2)  # its first timer found it idle
        started = time.monotonic()
        if slow == "head":
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            answer = dribble_until_answered(sock, b"X", HEAD_TIMEOUT + 6)
        else:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n1")
            answer = dribble_until_answered(sock, b"1", 2 * HEAD_TIMEOUT + 6)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - started < 2 * HEAD_TIMEOUT + 5


def test_the_rules_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        guarded_http(head_timeout=0, head_max_bytes=1024, body_min_rate=0)


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        assert raise_open_files_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == (hard if hard != resource.RLIM_INFINITY
                                                                 else max(512, 1 << 20))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
