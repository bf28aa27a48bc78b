"""The seam between the serving runtime and whatever turns a request into a response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Invocation:
    """One ``POST /invocations`` request, as the handler sees it."""

    body: bytes
    content_type: str | None
    """The Content-Type header exactly as sent (``None`` when absent)."""
    accept: str
    """The Accept header, with a missing or ``*/*`` value already resolved to the default."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """All request headers, names lowercased."""
    request_id: str | None = None


@dataclass(slots=True)
class Reply:
    """What a handler answers: an encoded body, its type, and optionally a status and headers."""

    body: bytes
    content_type: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class Handler(Protocol):
    """Loads one model and answers invocations for it.

    ``load`` is called once per process before any ``invoke``; it raises ``ModelLoadError`` (or
    any exception) when the model cannot serve. ``invoke`` runs in a worker thread, never on the
    event loop; it raises ``MainsailError`` subclasses for request problems (4xx) and ``ModelError``
    for failures inside model code.
    """

    name: str

    def load(self) -> None: ...

    def invoke(self, invocation: Invocation) -> Reply: ...
