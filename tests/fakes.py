"""An in-memory backend for tests: instances are objects, no process is spawned, no socket is opened.

``FakeBackend`` implements :class:`mainsail.backends.base.Backend`; its instances
(:class:`FakeInstance`) are ready, crash, use memory and answer as the test says, by model
(``backend.models[model_data_url] = FakeModel(...)``, taken by each instance as it starts) or one by
one (``backend.instances[i].ready = True``, ``.crash("why")``). Its ``FakeTransport`` implements
:class:`mainsail.backends.base.Transport` by calling the instance's ``answer`` in process (request
header names in lower case, as a server reads them). Every
instance listens on the same port of a host of its own, so that whatever keys instances by port
alone would mix them up.

:class:`FakeClock` is a clock a test moves (``advance``) for the reconciler's ``clock=``.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from mainsail.backends.base import (
    Address,
    ForwardError,
    Headers,
    Instance,
    InstanceSpec,
    ModelSourceError,
    Upstream,
)

PORT = 8080

Answer = Callable[["FakeInstance", str, bytes, dict[str, str]], "Upstream | Awaitable[Upstream]"]


def echo(fake: FakeInstance, path: str, body: bytes, headers: dict[str, str]) -> Upstream:
    """The default answer: which instance answered, of which model and variant, to what."""
    return Upstream(200, {"content-type": "application/json"}, json.dumps({
        "model": fake.spec.model_data_url, "variant": fake.spec.variant, "instance": str(fake.address),
        "path": path, "body": body.decode("utf-8", "replace")}).encode())


@dataclass
class FakeModel:
    """How the instances of one model behave from their start."""

    ready: bool = True
    """Whether an instance answers /ping as soon as it started."""
    failure: str | None = None
    """An instance exits at once, with this text."""
    memory: int | None = None
    """Resident bytes an instance reports."""
    missing: bool = False
    """The model data cannot be had: ``start`` raises ModelSourceError."""
    answer: Answer = echo


@dataclass(eq=False)
class FakeInstance:
    """One instance: what the backend reports of it, and its answers."""

    instance: Instance
    spec: InstanceSpec
    ready: bool
    failure: str | None
    memory: int | None
    answer: Answer
    stopped: bool = False
    requests: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    @property
    def address(self) -> Address:
        return self.instance.address

    @property
    def running(self) -> bool:
        return not self.stopped and self.failure is None

    def crash(self, reason: str = "killed") -> None:
        """The instance exits; ``failure`` reports ``reason``."""
        self.failure = f"Instance of variant {self.spec.variant} exited with code -9: {reason}"


class FakeBackend:
    """Instances in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.models: dict[str, FakeModel] = {}
        self.instances: list[FakeInstance] = []
        """Every instance started, in order."""
        self._by_address: dict[Address, FakeInstance] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._transport = FakeTransport(self)

    # -- what tests read ------------------------------------------------------------------------

    def at(self, address: Address) -> FakeInstance | None:
        return self._by_address.get(address)

    def of(self, instance: Instance) -> FakeInstance:
        fake = self._by_address.get(instance.address)
        assert fake is not None and fake.instance.pid == instance.pid, instance
        return fake

    def running(self, endpoint: str | None = None) -> list[FakeInstance]:
        """The instances that run (of ``endpoint``)."""
        return [f for f in self.instances if f.running and (endpoint is None or f.spec.endpoint == endpoint)]

    # -- the Backend protocol -------------------------------------------------------------------

    def start(self, spec: InstanceSpec) -> Instance:
        model = self.models.get(spec.model_data_url) or FakeModel()
        if model.missing:
            raise ModelSourceError(f"no such model data: {spec.model_data_url}")
        with self._lock:
            n = next(self._numbers)
            instance = Instance(variant=spec.variant, pid=100_000 + n, port=PORT, log_path="",
                                host=f"10.0.{n // 250}.{n % 250 + 1}")
            fake = FakeInstance(instance, spec, ready=model.ready, failure=None, memory=model.memory,
                                answer=model.answer)
            if model.failure is not None:
                fake.crash(model.failure)
            self.instances.append(fake)
            self._by_address[instance.address] = fake
        return instance

    def stop(self, instance: Instance) -> None:
        fake = self._by_address.get(instance.address)
        if fake is not None and fake.instance.pid == instance.pid:
            fake.stopped = True

    def healthy(self, instance: Instance) -> bool:
        return self._transport.ping(instance.address)

    def failure(self, instance: Instance) -> str | None:
        fake = self._by_address.get(instance.address)
        if fake is None:
            return f"Instance of variant {instance.variant} is unknown"
        if fake.failure is not None:
            return fake.failure
        return f"Instance of variant {instance.variant} was stopped" if fake.stopped else None

    def memory_bytes(self, instance: Instance) -> int | None:
        fake = self._by_address.get(instance.address)
        return fake.memory if fake is not None and fake.running else None

    def adopt(self, instance: Instance) -> bool:
        fake = self._by_address.get(instance.address)
        return fake is not None and fake.instance.pid == instance.pid and fake.running

    def reap(self, known: set[int]) -> list[int]:
        orphans = [f for f in self.instances if f.running and f.instance.pid not in known]
        for fake in orphans:
            fake.stopped = True
        return [f.instance.pid for f in orphans]

    def transport(self) -> FakeTransport:
        return self._transport

    def model_data(self, url: str) -> str:
        """Model data needs no placing here: ``url`` as it is (or ``ModelSourceError`` for a missing one)."""
        if self.models.get(url, FakeModel()).missing:
            raise ModelSourceError(f"no such model data: {url}")
        return url

    def stop_all(self) -> None:
        for fake in self.instances:
            fake.stopped = True


@dataclass
class FakeStreamed:
    """A :class:`mainsail.backends.base.StreamedResponse` over a whole answer."""

    status: int
    headers: dict[str, str]
    data: bytes

    async def body(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 64 * 1024):
            yield self.data[start:start + 64 * 1024]

    async def read(self, limit: int) -> bytes:
        return self.data[:limit]


class FakeTransport:
    """Answers requests in process, by the instance's ``answer``; an instance that does not run (or
    does not answer /ping yet) refuses the connection, as a process that does not listen would."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.closed = 0
        self.blocking_clients = 0

    def _live(self, address: Address) -> FakeInstance:
        fake = self.backend.at(address)
        if fake is None or not fake.running or not fake.ready:
            raise ForwardError(f"connection refused by {address}", unsent=True)
        return fake

    async def post(self, address: Address, path: str, body: bytes, headers: Headers, *,
                   timeout: float) -> Upstream:
        fake = self._live(address)
        received = _received(headers)
        fake.requests.append((path, body, received))
        try:
            async with asyncio.timeout(timeout):
                answer = fake.answer(fake, path, body, received)
                upstream = await answer if inspect.isawaitable(answer) else answer
        except TimeoutError:
            raise ForwardError(f"timed out after {timeout:g} s") from None
        if not fake.running:  # it exited while it worked on the request
            raise ForwardError("the instance closed the connection mid-response (EOF)")
        return upstream

    @asynccontextmanager
    async def stream(self, address: Address, path: str, body: bytes | AsyncIterable[bytes], headers: Headers, *,
                     length: int | None, timeout: float) -> AsyncIterator[FakeStreamed]:
        self._live(address)
        data = body if isinstance(body, bytes) else b"".join([chunk async for chunk in body])
        assert length is None or len(data) == length
        upstream = await self.post(address, path, data, headers, timeout=timeout)
        yield FakeStreamed(upstream.status, upstream.headers, upstream.body)

    def ping(self, address: Address, *, timeout: float = 1.0) -> bool:
        fake = self.backend.at(address)
        return fake is not None and fake.running and fake.ready

    def blocking(self, timeout: float) -> FakeBlockingClient:
        self.blocking_clients += 1
        return FakeBlockingClient(self)

    async def aclose(self) -> None:
        self.closed += 1


class FakeBlockingClient:
    """The transport's blocking client: the same answers, for threads (answers must not be awaitable)."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport

    def post(self, address: Address, path: str, body: bytes, headers: Headers) -> Upstream:
        fake = self.transport._live(address)
        received = _received(headers)
        fake.requests.append((path, body, received))
        answer = fake.answer(fake, path, body, received)
        assert isinstance(answer, Upstream), "a blocking client needs an answer that is not awaitable"
        return answer

    def close(self) -> None:
        pass


def _received(headers: Headers) -> dict[str, str]:
    """The request headers as an instance sees them: names in lower case."""
    return {name.lower(): value for name, value in headers}


class FakeClock:
    """The reconciler's clock, moved by the test."""

    def __init__(self) -> None:
        self.wall = time.time()
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds
