"""Clients for the tests of refused request bodies (``mainsail.drain``): Python's ``urllib`` as users
run it (it sends ``Connection: close``), a keep-alive ``http.client`` connection, and a raw socket that
sends only a request head."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

#: a body over the 6 MB default limit of both planes
BIG = b"x" * (7 * 1024 * 1024)


def urllib_post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """POST with ``urllib.request``: the status, headers (names in lower case) and body, an HTTP error's
    included (a broken pipe or a reset connection raises, as it does for users)."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def keep_alive_posts(url: str, first: bytes, second: bytes) -> tuple[int, bytes, int, bytes, bool]:
    """Two POSTs on one keep-alive ``http.client`` connection: each status and body, and whether the
    second went over the first one's connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        conn.request("POST", parts.path, body=first)
        response = conn.getresponse()
        status, body = response.status, response.read()
        sock = conn.sock
        conn.request("POST", parts.path, body=second)
        again = conn.getresponse()
        return status, body, again.status, again.read(), sock is not None and conn.sock is sock
    finally:
        conn.close()


def head_only(port: int, head: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send only ``head`` (a request line and headers, no body) and read until the server closes: what
    it sent, and the seconds it took; ``TimeoutError`` when it does not close within ``timeout``."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started
