"""What every backend shares: the ``Backend`` protocol, the instances it starts, and their failures.

A backend gives the control plane its instances (``InstanceSpec`` in, ``Instance`` out); an instance
answers HTTP, and a failed exchange with it is a :class:`ForwardError`, a response an
:class:`Upstream`. ``ModelSourceError`` says that an instance's model data cannot be had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


class ModelSourceError(Exception):
    """The model's artifacts cannot be made available to an instance; the text is a FailureReason."""


@dataclass(frozen=True)
class InstanceSpec:
    """What one instance serves: the endpoint/variant it belongs to and the model's container."""

    endpoint: str
    variant: str
    index: int
    model_data_url: str
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Instance:
    """A started instance, as recorded in the store."""

    variant: str
    pid: int
    port: int
    log_path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Instance:
        return cls(variant=str(record["variant"]), pid=int(record["pid"]), port=int(record["port"]),
                   log_path=str(record["log_path"]))


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


class ForwardError(Exception):
    """The instance could not be reached or did not answer with a usable HTTP response.

    ``unsent``: nothing reached the instance (it refused the connection), so the request may be
    sent elsewhere."""

    def __init__(self, message: str, *, unsent: bool = False) -> None:
        super().__init__(message)
        self.unsent = unsent


@dataclass(frozen=True, slots=True)
class Upstream:
    """An instance's response. Header names are lower-case; repeated headers are joined with ", "."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def tail(path: str | Path, lines: int = 10, max_chars: int = 900) -> str:
    """The last non-empty lines of a log file (at most ``max_chars``)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept)[-max_chars:]
