"""The reconciler: brings each endpoint's instances to its desired state by an idempotent ``step``.

A background thread calls ``step(name)`` for every endpoint, over and over:

- Creating: start each variant's instances; InService once all answer /ping; an instance that
  exits first makes the endpoint Failed with its last log lines.
- InService: an instance that exits is replaced (after ``max_restarts`` replacements in a row that
  never became ready, the endpoint is Failed); the serving set grows or shrinks to each variant's
  DesiredInstanceCount; drained instances are stopped once idle.
- Updating (UpdateEndpoint, blue/green): the new config's instances start beside the old ones, which
  keep serving; once all new ones answer, traffic moves in one store write and the old ones drain.
  A new instance that fails rolls the update back (InService on the old config, FailureReason set).
  UpdateEndpointWeightsAndCapacities: instances are added or drained, then the weights switch.
- Deleting: stop every instance, then drop the record.

``recover()`` runs once at start: instances recorded by an earlier ``mainsail up`` that still run
are adopted, the rest are forgotten (and started again by the steps above), orphans are reaped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from mainsail.backends.local import Backend, Instance, InstanceSpec, ModelSourceError, tail
from mainsail.hosting import resources as res
from mainsail.hosting.endpoints import CREATING, DELETING, ENDPOINT, FAILED, IN_SERVICE, UPDATING
from mainsail.hosting.store import Record, StateStore

logger = logging.getLogger(__name__)

#: Seconds an instance may take to answer /ping (a variant's ContainerStartupHealthCheckTimeoutInSeconds).
DEFAULT_STARTUP_TIMEOUT = 600.0
Specs = dict[str, dict[str, Any]]  # variant -> {"model_data_url": ..., "environment": {...}}


class Traffic(Protocol):
    """What the reconciler learns from the router (``mainsail.routing.router.Router``)."""

    wake: Callable[[], None]

    def in_flight(self, port: int) -> int: ...

    def last_used(self, endpoint: str, variant: str) -> float | None: ...

    def variant_in_flight(self, endpoint: str, variant: str) -> int: ...

    def note(self, port: int, reason: str) -> None: ...


class Reconciler:
    """Drives endpoints in ``store`` through ``backend``; ``start()`` runs ``step`` in a thread.

    ``in_flight(port)`` tells how many requests the router is forwarding to an instance, so that a
    draining instance is stopped only when idle (or after ``drain_timeout`` seconds).
    """

    def __init__(self, store: StateStore, backend: Backend, *, interval: float = 0.2,
                 in_flight: Callable[[int], int] | None = None, drain_grace: float = 0.5,
                 drain_timeout: float = 60.0, max_restarts: int = 3,
                 last_used: Callable[[str, str], float | None] | None = None,
                 variant_in_flight: Callable[[str, str], int] | None = None,
                 note: Callable[[int, str], None] | None = None,
                 serverless_idle: float | None = None, traffic: Traffic | None = None) -> None:
        self.store = store
        self.backend = backend
        self.interval = interval
        self.in_flight = in_flight or (lambda port: 0)
        self.last_used = last_used or (lambda endpoint, variant: None)
        self.variant_in_flight = variant_in_flight or (lambda endpoint, variant: 0)
        self.note = note or (lambda port, reason: None)
        self.serverless_idle = (serverless_idle if serverless_idle is not None
                                else float(os.environ.get("MAINSAIL_SERVERLESS_IDLE_SECONDS", "300")))
        if traffic is not None:  # the router of the same process: its counts, and a way to wake us
            self.in_flight, self.last_used = traffic.in_flight, traffic.last_used
            self.variant_in_flight, self.note = traffic.variant_in_flight, traffic.note
            traffic.wake = self.wake
        from mainsail.routing.router import async_idle_seconds

        self.async_idle = async_idle_seconds()
        self._idle_since: dict[tuple[str, str], float] = {}
        self._scaled_to_zero: dict[tuple[str, str], float] = {}
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
                if record["EndpointStatus"] in (IN_SERVICE, UPDATING, CREATING) and self.backend.adopt(instance):
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
        if status == DELETING:
            for instance in self._all_instances(record):
                self.backend.stop(instance)
            self.store.delete(ENDPOINT, name)
            self._forget(name)
        elif status == FAILED:
            if self._all_instances(record):
                self._stop_all(record)
        elif status in (CREATING, IN_SERVICE, UPDATING):
            self._drain(record)
            if not self._maintain(record):
                return
            record = self.store.get(ENDPOINT, name) or record
            if record["EndpointStatus"] == CREATING:
                self._finish_create(record)
            elif record["EndpointStatus"] == UPDATING:
                self._update(record)

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

    def _write(self, name: str, mutate: Callable[[Record], None], *, status_change: bool = False) -> Record | None:
        """Apply ``mutate``; a status change loses to a delete that raced it (instances still land)."""
        def apply(record: Record) -> Record:
            if status_change and record["EndpointStatus"] == DELETING:
                return record
            mutate(record)
            if status_change:
                record["LastModifiedTime"] = time.time()
            return record

        return self.store.update(ENDPOINT, name, apply)

    def _stop_all(self, record: Record) -> None:
        for instance in self._all_instances(record):
            self.backend.stop(instance)

        def clear(current: Record) -> None:
            current["Instances"], current["PendingInstances"], current["Draining"] = [], [], []

        self._write(record["EndpointName"], clear)

    def _fail(self, record: Record, reason: str) -> None:
        name = record["EndpointName"]
        logger.error("endpoint %s failed: %s", name, reason)
        self._stop_all(record)

        def fail(current: Record) -> None:
            current["EndpointStatus"] = FAILED
            current["FailureReason"] = reason[-1024:]
            current.pop("Pending", None)
            current.pop("PendingDeploymentSummary", None)

        self._write(name, fail, status_change=True)
        self._forget(name)

    def _snapshot(self, config_name: str) -> tuple[Record, Specs]:
        """The config and, per variant, what its instances run (kept, so a deleted model or config
        does not stop a running endpoint from replacing an instance, as on SageMaker)."""
        config = self.store.get(res.ENDPOINT_CONFIG, config_name)
        if config is None:
            raise ModelSourceError(f"Endpoint configuration {config_name} no longer exists.")
        specs: Specs = {}
        for pv in config.get("ProductionVariants", []):
            model = self.store.get(res.MODEL, pv["ModelName"])
            if model is None:
                raise ModelSourceError(f"Model {pv['ModelName']} no longer exists.")
            container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
            from mainsail.backends.model_fetch import container_model_source

            url = container_model_source(container)
            if not url:
                raise ModelSourceError(f"Model {pv['ModelName']} has no ModelDataUrl or ModelDataSource.")
            env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
            if config.get("AsyncInferenceConfig"):  # its instances take async payloads (up to 1 GB)
                from mainsail.jobs.async_inference import ASYNC_INSTANCE_MAX_PAYLOAD_MB

                env.setdefault("SAGEMAKER_MAX_PAYLOAD_IN_MB", str(ASYNC_INSTANCE_MAX_PAYLOAD_MB))
                # and may run up to InvocationTimeoutSeconds' maximum; each request's own limit is
                # enforced by the control plane, so the instance's 60 s default must not cut it first
                env.setdefault("SAGEMAKER_MODEL_SERVER_TIMEOUT", "3600")
            specs[pv["VariantName"]] = {
                "model_data_url": url, "environment": env,
                "startup_timeout": float(pv.get("ContainerStartupHealthCheckTimeoutInSeconds")
                                         or DEFAULT_STARTUP_TIMEOUT)}
        return config, specs

    def _start(self, name: str, specs: Specs, variant: str, index: int) -> dict[str, Any]:
        spec = specs[variant]
        instance = self.backend.start(InstanceSpec(endpoint=name, variant=variant, index=index,
                                                   model_data_url=spec["model_data_url"],
                                                   environment=dict(spec["environment"])))
        return {**instance.to_record(), "index": index, "ready": False, "started": time.time()}

    # -- the serving set -----------------------------------------------------------------------

    def _maintain(self, record: Record) -> bool:
        """Replace exited instances, mark answering ones ready, grow/shrink each variant to its
        DesiredInstanceCount. ``False`` when the endpoint failed."""
        name = record["EndpointName"]
        status = record["EndpointStatus"]
        if "Specs" not in record:
            try:
                _, specs = self._snapshot(record["EndpointConfigName"])
            except ModelSourceError as exc:
                self._fail(record, str(exc))
                return False

            def keep_specs(current: Record) -> None:
                current["Specs"] = specs

            self._write(name, keep_specs)
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
            timeout = float(specs.get(item["variant"], {}).get("startup_timeout", DEFAULT_STARTUP_TIMEOUT))
            limit = memory_limits.get(item["variant"])
            if reason is None and limit is not None:
                used = self.backend.memory_bytes(instance)
                if used is not None and used > limit:
                    reason = (f"The instance of serverless variant {item['variant']} used {used / 2**20:.0f} MB, "
                              f"over the variant's MemorySizeInMB ({limit // 2**20} MB); it was stopped and "
                              "is replaced.")
                    self.note(instance.port, reason)
            if reason is None and not item.get("ready") and time.time() - float(item.get("started", 0)) > timeout \
                    and not self.backend.healthy(instance):
                reason = (f"The instance of variant {item['variant']} did not pass the ping health check "
                          f"within {timeout:g} seconds: {tail(instance.log_path)}")
            if reason is not None:
                changed = True
                gone = int(item["port"])

                def drop(current: Record, gone: int = gone) -> None:  # stop routing to it first
                    current["Instances"] = [i for i in current.get("Instances", []) if int(i["port"]) != gone]

                self._write(name, drop)
                self.backend.stop(instance)
                if status == CREATING:
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
            desired = self._desired(record, pv)
            indexes = {int(i.get("index", 0)) for i in alive if i["variant"] == variant}
            for index in sorted(set(range(desired)) - indexes):
                try:
                    alive.append(self._start(name, specs, variant, index))
                except ModelSourceError as exc:
                    self._fail({**record, "Instances": alive}, str(exc))
                    return False
                changed = True
            for item in [i for i in alive if i["variant"] == variant and int(i.get("index", 0)) >= desired]:
                alive.remove(item)
                draining.append({**item, "since": time.time()})
                changed = True
        if changed:
            def save(current: Record) -> None:
                current["Instances"] = alive
                current["Draining"] = [*current.get("Draining", []), *draining]
                if current["EndpointStatus"] == IN_SERVICE:
                    counts = _ready_counts(alive)
                    current["ProductionVariants"] = [
                        {**pv, "CurrentInstanceCount": counts.get(pv["VariantName"], 0)}
                        for pv in current["ProductionVariants"]]

            if self._write(name, save) is None:  # deleted meanwhile
                for item in alive:
                    self.backend.stop(Instance.from_record(item))
                return False
        return True

    def _desired(self, record: Record, pv: dict[str, Any]) -> int:
        """Instances a variant should run now. A serverless variant runs one while in use (or while
        the endpoint is created, to check the model loads, or with ProvisionedConcurrency) and none
        once idle for ``serverless_idle`` seconds."""
        serverless = pv.get("CurrentServerlessConfig")
        idle_after = self.serverless_idle
        count = 1
        if not serverless:
            count = int(pv.get("DesiredInstanceCount", 1))
            if not record.get("AsyncInferenceConfig") or self.async_idle is None:
                return count
            idle_after = self.async_idle  # an async endpoint that scales to zero while its queue is empty
        if record["EndpointStatus"] == CREATING or (serverless or {}).get("ProvisionedConcurrency"):
            return count
        key = (record["EndpointName"], pv["VariantName"])
        now = time.monotonic()
        if self.variant_in_flight(*key) > 0:
            return count
        last = self.last_used(*key)
        recent = max(last or 0.0, self._idle_since.setdefault(key, now))
        running = any(i["variant"] == pv["VariantName"] for i in record.get("Instances", []))
        if now - recent < idle_after:
            if running:
                return count
            return count if last is not None and last > self._scaled_to_zero.get(key, 0.0) else 0
        if running:
            logger.info("endpoint %s variant %s: idle for %.0f s, scaling to zero", *key, now - recent)
            self._scaled_to_zero[key] = now
        return 0

    def _finish_create(self, record: Record) -> None:
        if _all_ready(record, record.get("Instances", [])):
            counts = _ready_counts(record["Instances"])

            def in_service(current: Record) -> None:
                if current["EndpointStatus"] != CREATING:
                    return
                current["EndpointStatus"] = IN_SERVICE
                current["ProductionVariants"] = [
                    {**pv, "CurrentInstanceCount": counts.get(pv["VariantName"], 0)}
                    for pv in current["ProductionVariants"]]

            self._write(record["EndpointName"], in_service, status_change=True)

    def _drain(self, record: Record) -> None:
        now = time.time()
        done = []
        for item in record.get("Draining", []):
            idle = self.in_flight(int(item["port"])) == 0
            age = now - float(item.get("since", 0))
            if (idle and age >= self.drain_grace) or age >= self.drain_timeout:
                done.append(item)
        if not done:
            return
        ports = {int(item["port"]) for item in done}

        def drop(current: Record) -> None:
            current["Draining"] = [i for i in current.get("Draining", []) if int(i["port"]) not in ports]

        self._write(record["EndpointName"], drop)
        for item in done:
            threading.Thread(target=self.backend.stop, args=(Instance.from_record(item),),
                             name="mainsail-drain", daemon=True).start()

    # -- updates -------------------------------------------------------------------------------

    def _update(self, record: Record) -> None:
        pending = record.get("Pending")
        if not pending:
            self._write(record["EndpointName"], lambda r: r.update(EndpointStatus=IN_SERVICE),
                        status_change=True)
            return
        if pending["Kind"] == "capacity":
            self._finish_capacity(record, pending)
        else:
            self._blue_green(record, pending)

    def _finish_capacity(self, record: Record, pending: dict[str, Any]) -> None:
        if not _all_ready(record, record.get("Instances", [])):
            return
        counts = _ready_counts(record["Instances"])

        def done(current: Record) -> None:
            if current.get("Pending") != pending:
                return
            current["ProductionVariants"] = [
                {**pv, "CurrentWeight": pv.get("DesiredWeight", pv.get("CurrentWeight", 1.0)),
                 "CurrentInstanceCount": counts.get(pv["VariantName"], 0)}
                for pv in current["ProductionVariants"]]
            current["EndpointStatus"] = IN_SERVICE
            current.pop("Pending", None)

        self._write(record["EndpointName"], done, status_change=True)

    def _rollback(self, record: Record, reason: str) -> None:
        name = record["EndpointName"]
        logger.error("endpoint %s: update to %s failed, rolling back: %s", name,
                     record["Pending"].get("EndpointConfigName"), reason)
        for instance in self._instances(record, "PendingInstances"):
            self.backend.stop(instance)

        def back(current: Record) -> None:
            current["PendingInstances"] = []
            current.pop("Pending", None)
            current.pop("PendingDeploymentSummary", None)
            current.pop("PendingSpecs", None)
            current["EndpointStatus"] = IN_SERVICE
            current["FailureReason"] = f"Update to endpoint configuration failed: {reason}"[-1024:]

        self._write(name, back, status_change=True)

    def _blue_green(self, record: Record, pending: dict[str, Any]) -> None:
        name = record["EndpointName"]
        green = list(record.get("PendingInstances", []))
        if not green:
            try:
                config, specs = self._snapshot(pending["EndpointConfigName"])
                started: list[dict[str, Any]] = []
                try:
                    for pv in pending["Variants"]:
                        for index in range(int(pv.get("DesiredInstanceCount", 1))):
                            started.append(self._start(name, specs, pv["VariantName"], index))
                except BaseException:
                    for item in started:
                        self.backend.stop(Instance.from_record(item))
                    raise
            except ModelSourceError as exc:
                self._rollback(record, str(exc))
                return

            def save(current: Record) -> None:
                current["PendingInstances"] = started
                current["PendingSpecs"] = specs
                current["PendingConfig"] = {k: config[k] for k in ("DataCaptureConfig", "AsyncInferenceConfig")
                                            if config.get(k)}

            if self._write(name, save) is None:
                for item in started:
                    self.backend.stop(Instance.from_record(item))
            return
        specs = record.get("PendingSpecs") or {}
        for item in green:
            instance = Instance.from_record(item)
            reason = self.backend.failure(instance)
            timeout = float(specs.get(item["variant"], {}).get("startup_timeout", DEFAULT_STARTUP_TIMEOUT))
            if reason is None and not item.get("ready") and time.time() - float(item.get("started", 0)) > timeout \
                    and not self.backend.healthy(instance):
                reason = (f"The instance of variant {item['variant']} did not pass the ping health check "
                          f"within {timeout:g} seconds.")
            if reason is not None:
                self._rollback(record, reason)
                return
        if not all(item.get("ready") or self.backend.healthy(Instance.from_record(item)) for item in green):
            return
        green = [{**item, "ready": True} for item in green]
        counts = _ready_counts(green)
        now = time.time()

        def swap(current: Record) -> None:
            if current.get("Pending") != pending:
                return
            current["Draining"] = [*current.get("Draining", []),
                                   *({**i, "since": now} for i in current.get("Instances", []))]
            current["Instances"] = green
            current["PendingInstances"] = []
            current["Specs"] = current.pop("PendingSpecs", None) or current.get("Specs")
            current["EndpointConfigName"] = pending["EndpointConfigName"]
            current["ProductionVariants"] = [
                {**pv, "CurrentInstanceCount": counts.get(pv["VariantName"], 0)} for pv in pending["Variants"]]
            extra = current.pop("PendingConfig", None) or {}
            for key in ("DataCaptureConfig", "AsyncInferenceConfig"):
                if key in extra:
                    current[key] = extra[key]
                else:
                    current.pop(key, None)
            if pending.get("DeploymentConfig"):
                current["LastDeploymentConfig"] = pending["DeploymentConfig"]
            current.pop("Pending", None)
            current.pop("PendingDeploymentSummary", None)
            current["EndpointStatus"] = IN_SERVICE

        self._write(name, swap, status_change=True)
        logger.info("endpoint %s now serves endpoint configuration %s", name, pending["EndpointConfigName"])


def _ready_counts(items: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        if item.get("ready"):
            counts[item["variant"]] = counts.get(item["variant"], 0) + 1
    return counts


def _all_ready(record: Record, items: list[dict[str, Any]]) -> bool:
    counts = _ready_counts(items)
    return all(item.get("ready") for item in items) and all(
        counts.get(pv["VariantName"], 0) >= int(pv.get("DesiredInstanceCount", 1))
        for pv in record["ProductionVariants"])
