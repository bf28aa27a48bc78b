"""Reading structured values off a fuzz input (atheris's ``FuzzedDataProvider`` without needing atheris)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Reader:
    """Consumes ``data`` from the front; past its end every read gives zeros or empty values."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def uint(self, size: int = 2) -> int:
        return int.from_bytes(self.take(size).ljust(size, b"\0"), "big")

    def flag(self) -> bool:
        return bool(self.u8() & 1)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.u8() % len(options)]

    def take(self, size: int) -> bytes:
        out = self.data[self.pos:self.pos + size]
        self.pos += len(out)
        return out

    def chunk(self) -> bytes:
        """A length-prefixed piece (one byte of length)."""
        return self.take(self.u8())

    def text(self) -> str:
        """A length-prefixed piece as text (latin-1, as HTTP headers arrive in ASGI)."""
        return self.chunk().decode("latin-1")

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


def http_request(data: bytes) -> tuple[str, str, str, list[tuple[str, str]], bytes]:
    """``METHOD /path?query`` / ``name: value`` lines / a blank line / the body, as ASGI hands them on:
    (method, raw path, query string, [(lower-case name, value)], body), all text latin-1."""
    head, _, body = data.partition(b"\n\n")
    first, *lines = head.decode("latin-1").split("\n")
    method, _, target = first.partition(" ")
    path, _, query = target.partition("?")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return method, path, query, headers, body
