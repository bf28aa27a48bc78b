"""What every backend shares: the ``Backend`` and ``Transport`` protocols, the instances a backend
starts, and their failures.

A backend gives the control plane its instances (``InstanceSpec`` in, ``Instance`` out, each reached
at an :class:`Address`) and the :class:`Transport` to reach them: the router, target-model routing,
asynchronous inference and batch transform talk to instances only through it. A failed exchange with
an instance is a :class:`ForwardError`, a response an :class:`Upstream` (or a
:class:`StreamedResponse`). ``ModelSourceError`` says that an instance's model data cannot be had.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

#: Where the local backend's instances listen (and the host of records written before hosts were).
LOOPBACK = "127.0.0.1"
Headers = Sequence[tuple[str, str]]


class ModelSourceError(Exception):
    """The model's artifacts cannot be made available to an instance; the text is a FailureReason."""


@dataclass(frozen=True)
class InstanceSpec:
    """What one instance serves: the endpoint/variant it belongs to and the model's container.

    ``workers``: the model-server worker processes it runs (SageMaker's container runs one per vCPU
    of the instance type); ``None``: as ``SAGEMAKER_MODEL_SERVER_WORKERS`` in ``environment`` says,
    which the instance reads itself. A backend may run fewer than asked where its host has fewer
    cores (the local backend's cap)."""

    endpoint: str
    variant: str
    index: int
    model_data_url: str
    environment: dict[str, str] = field(default_factory=dict)
    workers: int | None = 1


class Address(NamedTuple):
    """Where an instance answers HTTP: a host and a port (the local backend's: 127.0.0.1 and its own
    port; another backend's instances may share a port on different hosts)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def address_of(record: Mapping[str, Any]) -> Address:
    """The address of an instance as recorded in the store (records without a host are local)."""
    return Address(str(record.get("host") or LOOPBACK), int(record["port"]))


@dataclass(frozen=True)
class Instance:
    """A started instance, as recorded in the store (``host`` defaults to loopback, so that records
    written before it existed read the same)."""

    variant: str
    pid: int
    port: int
    log_path: str
    host: str = LOOPBACK
    #: the model directory it serves, on its host ("": not known, as in records written before)
    model_dir: str = ""

    @property
    def address(self) -> Address:
        return Address(self.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Instance:
        return cls(variant=str(record["variant"]), pid=int(record["pid"]), port=int(record["port"]),
                   log_path=str(record["log_path"]), host=str(record.get("host") or LOOPBACK),
                   model_dir=str(record.get("model_dir") or ""))


class Backend(Protocol):
    """Starts, checks and stops instances. Every method is safe to call repeatedly."""

    def start(self, spec: InstanceSpec) -> Instance:
        """Start one instance (without waiting for it to be ready); ModelSourceError if impossible."""
        ...

    def stop(self, instance: Instance) -> None:
        """Stop the instance (no-op when already gone)."""
        ...

    def healthy(self, instance: Instance) -> bool:
        """Whether the instance answers ``GET /ping`` with 200."""
        ...

    def failure(self, instance: Instance) -> str | None:
        """Why the instance is gone (its exit and last log lines), or ``None`` while it runs."""
        ...

    def memory_bytes(self, instance: Instance) -> int | None:
        """Resident memory of the instance (all its processes), ``None`` when unknown."""
        ...

    def adopt(self, instance: Instance) -> bool:
        """Take over an instance recorded by an earlier control plane: ``True`` if it still runs
        (and is the process recorded, not a reused pid)."""
        ...

    def reap(self, known: set[int]) -> list[int]:
        """Stop instances this backend started earlier that are not in ``known``; their pids."""
        ...

    def transport(self) -> Transport:
        """How the control plane talks to this backend's instances (one object, the same each call)."""
        ...

    def model_data(self, url: str) -> str:
        """Where this backend's instances find the model data at ``url`` (a multi-model endpoint's
        target model, loaded on demand): a path on the instances' machine. Blocking;
        ``ModelSourceError`` when the data cannot be had."""
        ...


class ForwardError(Exception):
    """The instance could not be reached or did not answer with a usable HTTP response.

    ``unsent``: nothing reached the instance (it refused the connection), so the request may be
    sent elsewhere. ``unanswered``: the request was sent, and the connection closed before any byte of
    an answer came (the instance, or its worker, died with the request in flight)."""

    def __init__(self, message: str, *, unsent: bool = False, unanswered: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent
        self.unanswered = unanswered


@dataclass(frozen=True, slots=True)
class Upstream:
    """An instance's response. Header names are lower-case; repeated headers are joined with ", "."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class StreamedResponse(Protocol):
    """An instance's answer to :meth:`Transport.stream`: status and head at once, the body on demand."""

    status: int
    headers: dict[str, str]

    def body(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, read only as fast as they are taken."""
        ...

    async def read(self, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (the rest left unread): for error answers."""
        ...


async def read_at_most(pieces: AsyncIterator[bytes], limit: int) -> bytes:
    """At most ``limit`` bytes from ``pieces`` (the rest left unread): an error answer's body."""
    out = bytearray()
    async for piece in pieces:
        out += piece
        if len(out) >= limit:
            break
    return bytes(out[:limit])


class BlockingClient(Protocol):
    """A blocking client for threads (batch transform's): connections kept until :meth:`close`."""

    def post(self, address: Address, path: str, body: bytes, headers: Headers) -> Upstream:
        """``POST path`` to the instance at ``address``; a failure raises (its type and text are
        reported by the caller as they are)."""
        ...

    def close(self) -> None:
        """Close every connection this client opened."""
        ...


class Transport(Protocol):
    """How the control plane reaches instances: every request to an instance goes through one.

    ``post`` holds the whole exchange (the runtime API's requests, up to 6 MB); ``stream`` sends and
    receives bodies as they come (asynchronous inference, up to 1 GB); ``blocking`` gives threads a
    client of their own; ``ping`` is the health check. Failures raise :class:`ForwardError`, with
    ``unsent`` when nothing reached the instance (the request may go to another one)."""

    async def post(self, address: Address, path: str, body: bytes, headers: Headers, *,
                   timeout: float) -> Upstream:
        """``POST path`` with ``body`` to the instance at ``address``, within ``timeout`` seconds in all."""
        ...

    def stream(self, address: Address, path: str, body: bytes | AsyncIterable[bytes], headers: Headers, *,
               length: int | None, timeout: float) -> AbstractAsyncContextManager[StreamedResponse]:
        """``POST path`` with a body streamed from ``body`` (``length`` bytes; ``None``: unknown), or
        given whole (``bytes``: the transport may use a pooled connection); the response once its head
        arrived, its body read inside the ``async with``. ``timeout`` bounds the whole exchange, reading
        included."""
        ...

    def ping(self, address: Address, *, timeout: float = 1.0) -> bool:
        """Whether the instance answers ``GET /ping`` with 200 (blocking: for the reconciler's thread)."""
        ...

    def blocking(self, timeout: float) -> BlockingClient:
        """A blocking client whose requests time out after ``timeout`` seconds; the caller closes it."""
        ...

    async def aclose(self) -> None:
        """Close the pooled connections (of the event loop that runs the runtime API)."""
        ...


def tail(path: str | Path, lines: int = 10, max_chars: int = 900) -> str:
    """The last non-empty lines of a log file (at most ``max_chars``)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-max_chars:]
