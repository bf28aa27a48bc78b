"""The hosting API over a store, driven by a ``Reconciler`` on a :class:`tests.fakes.FakeBackend`
that the test steps by hand on a :class:`tests.fakes.FakeClock`: no thread, no process, no sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mainsail.backends.base import Address, address_of
from mainsail.hosting.api import OPERATIONS
from mainsail.hosting.calls import Call
from mainsail.hosting.endpoints import ENDPOINT
from mainsail.hosting.reconciler import Reconciler
from mainsail.hosting.store import Record, SQLiteStore
from tests.fakes import FakeBackend, FakeClock, FakeInstance, FakeModel

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mainsail:latest"


class StubTraffic:
    """What the reconciler learns from a router, set by the test (on the fake clock's monotonic time)."""

    def __init__(self) -> None:
        self.busy: dict[Address, int] = {}
        self.used: dict[tuple[str, str], float] = {}
        self.variant_busy: dict[tuple[str, str], int] = {}
        self.notes: dict[Address, str] = {}
        self.woken = 0
        self.wake: Callable[[], None] = self._woken

    def _woken(self) -> None:
        self.woken += 1

    def in_flight(self, address: Address) -> int:
        return self.busy.get(address, 0)

    def last_used(self, endpoint: str, variant: str) -> float | None:
        return self.used.get((endpoint, variant))

    def variant_in_flight(self, endpoint: str, variant: str) -> int:
        return self.variant_busy.get((endpoint, variant), 0)

    def note(self, address: Address, reason: str) -> None:
        self.notes[address] = reason


class Hosting:
    """A store, the hosting API's operations, a fake backend and a reconciler stepped by the test."""

    def __init__(self, root: Path, *, serverless_idle: float = 300.0, max_restarts: int = 3) -> None:
        self.store = SQLiteStore(root / "state.db")
        self.backend = FakeBackend()
        self.clock = FakeClock()
        self.traffic = StubTraffic()
        self.reconciler = Reconciler(self.store, self.backend, traffic=self.traffic, serverless_idle=serverless_idle,
                                     max_restarts=max_restarts, clock=self.clock)

    def close(self) -> None:
        self.store.close()

    # -- the API --------------------------------------------------------------------------------

    def call(self, operation: str, **body: Any) -> dict[str, Any]:
        out: dict[str, Any] = OPERATIONS[operation](Call(self.store, REGION, body))
        return out

    def model(self, name: str, **behaviour: Any) -> str:
        """CreateModel ``name`` whose instances behave as ``behaviour`` says (:class:`FakeModel`); its url."""
        url = f"file:///models/{name}"
        self.backend.models[url] = FakeModel(**behaviour)
        self.call("CreateModel", ModelName=name, ExecutionRoleArn=ROLE,
                  PrimaryContainer={"Image": IMAGE, "ModelDataUrl": url})
        return url

    def config(self, name: str, *variants: dict[str, Any], **extra: Any) -> None:
        """CreateEndpointConfig; a variant is ``{"VariantName", "ModelName", ...}`` with one ml.m5.large
        instance unless it says otherwise (or is serverless)."""
        full = [v if "ServerlessConfig" in v else {"InstanceType": "ml.m5.large", "InitialInstanceCount": 1, **v}
                for v in variants]
        self.call("CreateEndpointConfig", EndpointConfigName=name, ProductionVariants=full, **extra)

    def endpoint(self, name: str, config: str | None = None) -> None:
        self.call("CreateEndpoint", EndpointName=name, EndpointConfigName=config or name)

    def deploy(self, name: str, count: int = 1, **behaviour: Any) -> None:
        """Model, config and endpoint ``name`` (variant AllTraffic), stepped until InService."""
        self.model(name, **behaviour)
        self.config(name, {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": count})
        self.endpoint(name)
        self.settle(name)
        assert self.status(name) == "InService", self.record(name)

    # -- the reconciler -------------------------------------------------------------------------

    def step(self, name: str, times: int = 1) -> None:
        for _ in range(times):
            self.reconciler.step(name)

    def settle(self, name: str, limit: int = 20) -> None:
        """Step until the endpoint stops changing (or is gone)."""
        for _ in range(limit):
            before = self.store.get(ENDPOINT, name)
            self.reconciler.step(name)
            after = self.store.get(ENDPOINT, name)
            if after is None or _stable(before) == _stable(after):
                return
        raise AssertionError(f"endpoint {name} did not settle: {self.store.get(ENDPOINT, name)}")

    # -- what tests read ------------------------------------------------------------------------

    def record(self, name: str) -> Record:
        record = self.store.get(ENDPOINT, name)
        assert record is not None, f"no endpoint {name}"
        return record

    def status(self, name: str) -> str:
        return str(self.record(name)["EndpointStatus"])

    def describe(self, name: str) -> dict[str, Any]:
        return self.call("DescribeEndpoint", EndpointName=name)

    def counts(self, name: str) -> dict[str, int]:
        """CurrentInstanceCount per variant, as DescribeEndpoint shows it."""
        return {pv["VariantName"]: pv["CurrentInstanceCount"] for pv in self.describe(name)["ProductionVariants"]}

    def serving(self, name: str, key: str = "Instances") -> list[FakeInstance]:
        """The fake instances behind the record's ``key`` (Instances, PendingInstances, Draining)."""
        found = []
        for item in self.record(name).get(key, []):
            fake = self.backend.at(address_of(item))
            assert fake is not None and fake.instance.pid == item["pid"], item
            found.append(fake)
        return found


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """For the one thing the reconciler does in a thread of its own: stopping a drained instance."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def _stable(record: Record | None) -> Any:
    if record is None:
        return None
    return {k: v for k, v in record.items() if k != "LastModifiedTime"}
