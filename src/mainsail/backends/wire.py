"""HTTP/1.1 on the wire to an instance, shared by the pooled client and the streamed exchange.

:func:`request_bytes` writes a ``POST`` (hop-by-hop and framing headers dropped, names and values
checked); :func:`add_header` folds a response header into a dict the way both clients report them.
"""

from __future__ import annotations

from collections.abc import Sequence

from mainsail.backends.base import ForwardError

DEFAULT_MAX_RESPONSE = 1 << 30  # 1 GiB
# Headers that describe one connection, or that the forwarder sets itself: never taken from the caller.
NOT_FORWARDED = frozenset((
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
    "content-length", "host", "expect",
))


def add_header(headers: dict[str, str], name: bytes, value: bytes) -> bool:
    """Add one response header (repeats joined by ", "); whether it delimits the body."""
    key = name.decode("latin-1").lower()
    text = value.decode("latin-1")
    previous = headers.get(key)
    headers[key] = text if previous is None else f"{previous}, {text}"
    return key == "content-length" or key == "transfer-encoding"


def request_bytes(host: str, port: int, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    if not path.startswith("/") or any(c in path for c in " \r\n"):
        raise ForwardError(f"invalid path {path!r}")
    lines = [f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"]
    for name, value in headers:
        if name.lower() in NOT_FORWARDED:
            continue
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ForwardError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    try:
        head = "".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ForwardError(f"a header is not latin-1: {exc}") from None
    return head + body
