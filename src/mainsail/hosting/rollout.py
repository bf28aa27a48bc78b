"""Rollouts of an Updating endpoint: UpdateEndpoint (blue/green), capacity updates, rollback.

- UpdateEndpoint: the new config's instances (``PendingInstances``) start beside the old ones,
  which keep serving; once all answer /ping, traffic moves in one store write and the old ones
  drain. A new instance that fails (or never answers) rolls the update back: the endpoint is
  InService on its old config again, with the ``FailureReason`` set.
- UpdateEndpointWeightsAndCapacities: the reconciler's serving set grows or shrinks to the new
  counts; once every variant has them ready, the weights switch and the endpoint is InService.

The reconciler calls ``Rollout.step`` for an Updating endpoint after it has maintained its serving set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from mainsail.backends.base import Backend, Instance, ModelSourceError
from mainsail.hosting.capacity import Clock, SystemClock, all_ready, ready_counts
from mainsail.hosting.endpoints import EndpointStatus
from mainsail.hosting.specs import snapshot, start_instance, startup_timeout
from mainsail.hosting.store import Record, StateStore

logger = logging.getLogger(__name__)


class Write(Protocol):
    """The reconciler's ``write``: apply a mutation; a status change loses to a delete that raced it."""

    def __call__(self, name: str, mutate: Callable[[Record], None], *,
                 status_change: bool = False) -> Record | None: ...


class Rollout:
    """Moves an Updating endpoint to its ``Pending`` target, or back to where it was."""

    def __init__(self, store: StateStore, backend: Backend, write: Write, clock: Clock | None = None) -> None:
        self.store = store
        self.backend = backend
        self.write = write
        self.clock = clock or SystemClock()

    def step(self, record: Record) -> None:
        pending = record.get("Pending")
        if not pending:
            self.write(record["EndpointName"], lambda r: r.update(EndpointStatus=EndpointStatus.IN_SERVICE),
                       status_change=True)
            return
        if pending["Kind"] == "capacity":
            self._finish_capacity(record, pending)
        else:
            self._blue_green(record, pending)

    def _finish_capacity(self, record: Record, pending: dict[str, Any]) -> None:
        if not all_ready(record, record.get("Instances", [])):
            return
        counts = ready_counts(record["Instances"])

        def done(current: Record) -> None:
            if current.get("Pending") != pending:
                return
            current["ProductionVariants"] = [
                {**pv, "CurrentWeight": pv.get("DesiredWeight", pv.get("CurrentWeight", 1.0)),
                 "CurrentInstanceCount": counts.get(pv["VariantName"], 0)}
                for pv in current["ProductionVariants"]]
            current["EndpointStatus"] = EndpointStatus.IN_SERVICE
            current.pop("Pending", None)

        self.write(record["EndpointName"], done, status_change=True)

    def _rollback(self, record: Record, reason: str) -> None:
        name = record["EndpointName"]
        logger.error("endpoint %s: update to %s failed, rolling back: %s", name,
                     record["Pending"].get("EndpointConfigName"), reason)
        for item in record.get("PendingInstances", []):
            self.backend.stop(Instance.from_record(item))

        def back(current: Record) -> None:
            current["PendingInstances"] = []
            current.pop("Pending", None)
            current.pop("PendingDeploymentSummary", None)
            current.pop("PendingSpecs", None)
            current["EndpointStatus"] = EndpointStatus.IN_SERVICE
            current["FailureReason"] = f"Update to endpoint configuration failed: {reason}"[-1024:]

        self.write(name, back, status_change=True)

    def _blue_green(self, record: Record, pending: dict[str, Any]) -> None:
        name = record["EndpointName"]
        green = list(record.get("PendingInstances", []))
        if not green:
            self._start_green(record, pending)
            return
        specs = record.get("PendingSpecs") or {}
        for item in green:
            instance = Instance.from_record(item)
            reason = self.backend.failure(instance)
            timeout = startup_timeout(specs, item["variant"])
            late = self.clock.time() - float(item.get("started", 0)) > timeout
            if reason is None and not item.get("ready") and late and not self.backend.healthy(instance):
                reason = (f"The instance of variant {item['variant']} did not pass the ping health check "
                          f"within {timeout:g} seconds.")
            if reason is not None:
                self._rollback(record, reason)
                return
        if not all(item.get("ready") or self.backend.healthy(Instance.from_record(item)) for item in green):
            return
        green = [{**item, "ready": True} for item in green]
        counts = ready_counts(green)
        now = self.clock.time()

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
            current["EndpointStatus"] = EndpointStatus.IN_SERVICE

        self.write(name, swap, status_change=True)
        logger.info("endpoint %s now serves endpoint configuration %s", name, pending["EndpointConfigName"])

    def _start_green(self, record: Record, pending: dict[str, Any]) -> None:
        """Start the new config's instances beside the serving ones (or roll back if it cannot run)."""
        name = record["EndpointName"]
        try:
            config, specs = snapshot(self.store, pending["EndpointConfigName"])
            started: list[dict[str, Any]] = []
            try:
                for pv in pending["Variants"]:
                    for index in range(int(pv.get("DesiredInstanceCount", 1))):
                        started.append(start_instance(self.backend, name, specs, pv["VariantName"], index,
                                                      now=self.clock.time()))
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

        if self.write(name, save) is None:
            for item in started:
                self.backend.stop(Instance.from_record(item))
