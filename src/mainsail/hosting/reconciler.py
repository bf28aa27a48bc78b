"""The reconciler: brings each endpoint's instances to its desired state by an idempotent ``step``.

A background thread calls ``step(name)`` for every endpoint, over and over:

- Creating: start each variant's instances; InService once all answer /ping; an instance that
  exits first makes the endpoint Failed with its last log lines.
- InService: an instance that exits is replaced (after ``max_restarts`` replacements in a row that
  never became ready, the endpoint is Failed); the serving set grows or shrinks to each variant's
  count now (``hosting.capacity``: DesiredInstanceCount, or zero for an idle serverless variant);
  drained instances are stopped once idle.
- Updating: the serving set is maintained as above, then ``hosting.rollout`` moves the endpoint to
  its new config (blue/green) or capacities, or rolls the update back.
- Deleting: stop every instance, then drop the record.

``recover()`` runs once at start: instances recorded by an earlier ``mainsail up`` that still run
are adopted, the rest are forgotten (and started again by the steps above), orphans are reaped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from mainsail.backends.base import Address, Backend, Instance, ModelSourceError, address_of, tail
from mainsail.hosting.capacity import (
    Capacity,
    Clock,
    SystemClock,
    Traffic,
    all_ready,
    ready_counts,
)
from mainsail.hosting.endpoints import ENDPOINT, EndpointStatus
from mainsail.hosting.rollout import Rollout
from mainsail.hosting.specs import snapshot, start_instance, startup_timeout
from mainsail.hosting.store import Record, StateStore

logger = logging.getLogger(__name__)


class Reconciler:
    """Drives endpoints in ``store`` through ``backend``; ``start()`` runs ``step`` in a thread.

    ``in_flight(address)`` tells how many requests the router is forwarding to an instance, so that a
    draining instance is stopped only when idle (or after ``drain_timeout`` seconds); ``traffic`` (the
    router's) gives it and the idle clocks at once. ``clock``: the time it reads (a test's, or the system's).
    ``serverless_idle`` / ``async_idle``: seconds without a request (an empty queue) after which a
    serverless variant / an async endpoint scales to zero (``None``: an async endpoint never does).
    """

    def __init__(self, store: StateStore, backend: Backend, *, interval: float = 0.2,
                 in_flight: Callable[[Address], int] | None = None, drain_grace: float = 0.5,
                 drain_timeout: float = 60.0, max_restarts: int = 3,
                 last_used: Callable[[str, str], float | None] | None = None,
                 variant_in_flight: Callable[[str, str], int] | None = None,
                 note: Callable[[Address, str], None] | None = None,
                 serverless_idle: float = 300.0, async_idle: float | None = None, traffic: Traffic | None = None,
                 clock: Clock | None = None) -> None:
        self.store = store
        self.backend = backend
        self.interval = interval
        self.clock = clock or SystemClock()
        self.in_flight = in_flight or (lambda address: 0)
        self.last_used = last_used or (lambda endpoint, variant: None)
        self.variant_in_flight = variant_in_flight or (lambda endpoint, variant: 0)
        self.note = note or (lambda address, reason: None)
        if traffic is not None:  # the router of the same process: its counts, and a way to wake us
            self.in_flight, self.last_used = traffic.in_flight, traffic.last_used
            self.variant_in_flight, self.note = traffic.variant_in_flight, traffic.note
            traffic.wake = self.wake
        self.capacity = Capacity(
            serverless_idle=serverless_idle, async_idle=async_idle, last_used=self.last_used,
            variant_in_flight=self.variant_in_flight,
            clock=self.clock)
        self.rollout = Rollout(store, backend, self.write, self.clock)
        self._wake = threading.Event()
        self.drain_grace = drain_grace
        self.drain_timeout = drain_timeout
        self.max_restarts = max_restarts
        self._failures: dict[tuple[str, str, int], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self.recover()
            self._thread = threading.Thread(target=self._run, name="mainsail-reconciler", daemon=True)
            self._thread.start()

    def stop(self, *, stop_instances: bool = False) -> None:
        """Stop the loop; with ``stop_instances`` also stop every recorded instance."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if stop_instances:
            for record in self.store.list(ENDPOINT):
                for instance in self._all_instances(record):
                    self.backend.stop(instance)

    def wake(self) -> None:
        """Run the next step now (a serverless cold start is waiting), not after ``interval``."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self.step_all()
            self._wake.wait(self.interval)

    def step_all(self) -> None:
        for record in self.store.list(ENDPOINT):
            try:
                self.step(record["EndpointName"])
            except Exception:
                logger.exception("reconciling endpoint %s failed", record["EndpointName"])

    # -- recovery ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Adopt the recorded instances that still run; forget the others; reap orphans."""
        known: set[int] = set()
        for record in self.store.list(ENDPOINT):
            name = record["EndpointName"]
            keep: list[dict[str, Any]] = []
            for item in record.get("Instances", []):
                instance = Instance.from_record(item)
                running = (EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING, EndpointStatus.CREATING)
                if record["EndpointStatus"] in running and self.backend.adopt(instance):
                    keep.append(item)
                    known.add(instance.pid)
                else:
                    self.backend.stop(instance)
            for key in ("PendingInstances", "Draining"):
                for item in record.get(key, []):
                    self.backend.stop(Instance.from_record(item))
            adopted = len(keep)
            logger.info("endpoint %s (%s): adopted %d of %d instances", name, record["EndpointStatus"],
                        adopted, len(record.get("Instances", [])))

            def reset(current: Record, keep: list[dict[str, Any]] = keep) -> Record:
                current["Instances"] = keep
                current["PendingInstances"] = []
                current["Draining"] = []
                return current

            self.store.update(ENDPOINT, name, reset)
        for pid in self.backend.reap(known):
            logger.warning("stopped orphan instance process group %d", pid)

    # -- one step ------------------------------------------------------------------------------

    def step(self, name: str) -> None:
        """One idempotent move of endpoint ``name`` towards its desired state."""
        record = self.store.get(ENDPOINT, name)
        if record is None:
            return
        status = record["EndpointStatus"]
        if status == EndpointStatus.DELETING:
            for instance in self._all_instances(record):
                self.backend.stop(instance)
            self.store.delete(ENDPOINT, name)
            self._forget(name)
        elif status == EndpointStatus.FAILED:
            if self._all_instances(record):
                self._stop_all(record)
        elif status in (EndpointStatus.CREATING, EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING):
            self._drain(record)
            if not self._maintain(record):
                return
            record = self.store.get(ENDPOINT, name) or record
            if record["EndpointStatus"] == EndpointStatus.CREATING:
                self._finish_create(record)
            elif record["EndpointStatus"] == EndpointStatus.UPDATING:
                self.rollout.step(record)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _instances(record: Record, key: str = "Instances") -> list[Instance]:
        return [Instance.from_record(i) for i in record.get(key, [])]

    def _all_instances(self, record: Record) -> list[Instance]:
        return [*self._instances(record), *self._instances(record, "PendingInstances"),
                *self._instances(record, "Draining")]

    def _forget(self, name: str) -> None:
        for key in [k for k in self._failures if k[0] == name]:
            del self._failures[key]

    def write(self, name: str, mutate: Callable[[Record], None], *, status_change: bool = False) -> Record | None:
        """Apply ``mutate``; a status change loses to a delete that raced it (instances still land)."""
        def apply(record: Record) -> Record:
            if status_change and record["EndpointStatus"] == EndpointStatus.DELETING:
                return record
            mutate(record)
            if status_change:
                record["LastModifiedTime"] = self.clock.time()
            return record

        return self.store.update(ENDPOINT, name, apply)

    def _stop_all(self, record: Record) -> None:
        for instance in self._all_instances(record):
            self.backend.stop(instance)

        def clear(current: Record) -> None:
            current["Instances"], current["PendingInstances"], current["Draining"] = [], [], []

        self.write(record["EndpointName"], clear)

    def _fail(self, record: Record, reason: str) -> None:
        name = record["EndpointName"]
        logger.error("endpoint %s failed: %s", name, reason)
        self._stop_all(record)

        def fail(current: Record) -> None:
            current["EndpointStatus"] = EndpointStatus.FAILED
            current["FailureReason"] = reason[-1024:]
            current.pop("Pending", None)
            current.pop("PendingDeploymentSummary", None)

        self.write(name, fail, status_change=True)
        self._forget(name)

    # -- the serving set -----------------------------------------------------------------------

    def _maintain(self, record: Record) -> bool:
        """Replace exited instances, mark answering ones ready, grow/shrink each variant to its
        DesiredInstanceCount. ``False`` when the endpoint failed."""
        name = record["EndpointName"]
        status = record["EndpointStatus"]
        if "Specs" not in record:
            try:
                _, specs = snapshot(self.store, record["EndpointConfigName"])
            except ModelSourceError as exc:
                self._fail(record, str(exc))
                return False

            def keep_specs(current: Record) -> None:
                current["Specs"] = specs

            self.write(name, keep_specs)
        else:
            specs = record["Specs"]
        current = list(record.get("Instances", []))
        memory_limits = {pv["VariantName"]: int(pv["CurrentServerlessConfig"]["MemorySizeInMB"]) * 2**20
                         for pv in record["ProductionVariants"]
                         if (pv.get("CurrentServerlessConfig") or {}).get("MemorySizeInMB")}
        changed = False
        alive: list[dict[str, Any]] = []
        for item in current:
            instance = Instance.from_record(item)
            reason = self.backend.failure(instance)
            key = (name, item["variant"], int(item.get("index", 0)))
            timeout = startup_timeout(specs, item["variant"])
            limit = memory_limits.get(item["variant"])
            if reason is None and limit is not None:
                used = self.backend.memory_bytes(instance)
                if used is not None and used > limit:
                    reason = (f"The instance of serverless variant {item['variant']} used {used / 2**20:.0f} MB, "
                              f"over the variant's MemorySizeInMB ({limit // 2**20} MB); it was stopped and "
                              "is replaced.")
                    self.note(instance.address, reason)
            late = self.clock.time() - float(item.get("started", 0)) > timeout
            if reason is None and not item.get("ready") and late and not self.backend.healthy(instance):
                reason = (f"The instance of variant {item['variant']} did not pass the ping health check "
                          f"within {timeout:g} seconds: {tail(instance.log_path)}")
            if reason is not None:
                changed = True
                gone = instance.address

                def drop(current: Record, gone: Address = gone) -> None:  # stop routing to it first
                    current["Instances"] = [i for i in current.get("Instances", []) if address_of(i) != gone]

                self.write(name, drop)
                self.backend.stop(instance)
                if status == EndpointStatus.CREATING:
                    self._fail(record, reason)
                    return False
                self._failures[key] = self._failures.get(key, 0) + (0 if item.get("ready") else 1)
                if self._failures[key] >= self.max_restarts:
                    self._fail(record, f"{reason} (after {self._failures[key]} replacements)")
                    return False
                logger.warning("endpoint %s: an instance of variant %s exited; replacing it: %s",
                               name, item["variant"], reason)
                continue
            if not item.get("ready") and self.backend.healthy(instance):
                item = {**item, "ready": True}
                self._failures.pop(key, None)
                changed = True
            alive.append(item)
        draining: list[dict[str, Any]] = []
        for pv in record["ProductionVariants"]:
            variant = pv["VariantName"]
            desired = self.capacity.desired(record, pv)
            indexes = {int(i.get("index", 0)) for i in alive if i["variant"] == variant}
            for index in sorted(set(range(desired)) - indexes):
                try:
                    alive.append(start_instance(self.backend, name, specs, variant, index, now=self.clock.time()))
                except ModelSourceError as exc:
                    self._fail({**record, "Instances": alive}, str(exc))
                    return False
                changed = True
            for item in [i for i in alive if i["variant"] == variant and int(i.get("index", 0)) >= desired]:
                alive.remove(item)
                draining.append({**item, "since": self.clock.time()})
                changed = True
        if changed:
            def save(current: Record) -> None:
                current["Instances"] = alive
                current["Draining"] = [*current.get("Draining", []), *draining]
                if current["EndpointStatus"] == EndpointStatus.IN_SERVICE:
                    counts = ready_counts(alive)
                    current["ProductionVariants"] = [
                        {**pv, "CurrentInstanceCount": counts.get(pv["VariantName"], 0)}
                        for pv in current["ProductionVariants"]]

            if self.write(name, save) is None:  # deleted meanwhile
                for item in alive:
                    self.backend.stop(Instance.from_record(item))
                return False
        return True

    # -- create ------------------------------------------------------------------------------------

    def _finish_create(self, record: Record) -> None:
        if all_ready(record, record.get("Instances", [])):
            counts = ready_counts(record["Instances"])

            def in_service(current: Record) -> None:
                if current["EndpointStatus"] != EndpointStatus.CREATING:
                    return
                current["EndpointStatus"] = EndpointStatus.IN_SERVICE
                current["ProductionVariants"] = [
                    {**pv, "CurrentInstanceCount": counts.get(pv["VariantName"], 0)}
                    for pv in current["ProductionVariants"]]

            self.write(record["EndpointName"], in_service, status_change=True)

    def _drain(self, record: Record) -> None:
        now = self.clock.time()
        done = []
        for item in record.get("Draining", []):
            idle = self.in_flight(address_of(item)) == 0
            age = now - float(item.get("since", 0))
            if (idle and age >= self.drain_grace) or age >= self.drain_timeout:
                done.append(item)
        if not done:
            return
        gone = {address_of(item) for item in done}

        def drop(current: Record) -> None:
            current["Draining"] = [i for i in current.get("Draining", []) if address_of(i) not in gone]

        self.write(record["EndpointName"], drop)
        for item in done:
            threading.Thread(target=self.backend.stop, args=(Instance.from_record(item),),
                             name="mainsail-drain", daemon=True).start()

