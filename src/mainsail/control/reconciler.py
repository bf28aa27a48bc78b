"""The reconciler: brings each endpoint's instances to its desired state by an idempotent ``step``.

A background thread calls ``step(name)`` for every endpoint, over and over: Creating -> start the
variants' instances -> InService when all answer /ping; an instance that exits -> Failed with its
last log lines; Deleting -> stop the instances, then drop the record.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from mainsail.control import resources as res
from mainsail.control.backends import Backend, Instance, InstanceSpec, ModelSourceError
from mainsail.control.endpoints import CREATING, DELETING, ENDPOINT, FAILED, IN_SERVICE
from mainsail.control.store import Record, StateStore

logger = logging.getLogger(__name__)


class Reconciler:
    """Drives endpoints in ``store`` through ``backend``; ``start()`` runs ``step`` in a thread."""

    def __init__(self, store: StateStore, backend: Backend, *, interval: float = 0.2) -> None:
        self.store = store
        self.backend = backend
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mainsail-reconciler",
                                            daemon=True)
            self._thread.start()

    def stop(self, *, stop_instances: bool = False) -> None:
        """Stop the loop; with ``stop_instances`` also stop every recorded instance."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if stop_instances:
            for record in self.store.list(ENDPOINT):
                self._stop_instances(record)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step_all()
            self._stop.wait(self.interval)

    def step_all(self) -> None:
        for record in self.store.list(ENDPOINT):
            try:
                self.step(record["EndpointName"])
            except Exception:
                logger.exception("reconciling endpoint %s failed", record["EndpointName"])

    # -- one step ------------------------------------------------------------------------------

    def step(self, name: str) -> None:
        """One idempotent move of endpoint ``name`` towards its desired state."""
        record = self.store.get(ENDPOINT, name)
        if record is None:
            return
        status = record["EndpointStatus"]
        if status == DELETING:
            self._stop_instances(record)
            self.store.delete(ENDPOINT, name)
        elif status == CREATING:
            self._create(record)
        elif status == IN_SERVICE:
            self._watch(record)

    def _instances(self, record: Record) -> list[Instance]:
        return [Instance.from_record(i) for i in record.get("Instances", [])]

    def _stop_instances(self, record: Record) -> None:
        for instance in self._instances(record):
            self.backend.stop(instance)

    def _set(self, name: str, **changes: Any) -> None:
        def mutate(record: Record) -> Record:
            if record["EndpointStatus"] == DELETING and changes.get("EndpointStatus") != DELETING:
                return record  # a delete raced us: leave it to the next step
            record.update(changes)
            record["LastModifiedTime"] = time.time()
            return record

        self.store.update(ENDPOINT, name, mutate)

    def _fail(self, record: Record, reason: str) -> None:
        self._stop_instances(record)
        self._set(record["EndpointName"], EndpointStatus=FAILED, FailureReason=reason[-1024:])

    def _specs(self, record: Record) -> list[InstanceSpec]:
        config = self.store.get(res.ENDPOINT_CONFIG, record["EndpointConfigName"])
        if config is None:
            raise ModelSourceError(
                f"Endpoint configuration {record['EndpointConfigName']} no longer exists.")
        specs = []
        for pv in config.get("ProductionVariants", []):
            model = self.store.get(res.MODEL, pv["ModelName"])
            if model is None:
                raise ModelSourceError(f"Model {pv['ModelName']} no longer exists.")
            container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
            url = container.get("ModelDataUrl")
            if not url:
                raise ModelSourceError(f"Model {pv['ModelName']} has no ModelDataUrl.")
            env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
            for index in range(int(pv.get("InitialInstanceCount", 1))):
                specs.append(InstanceSpec(endpoint=record["EndpointName"],
                                          variant=pv["VariantName"], index=index,
                                          model_data_url=url, environment=env))
        return specs

    def _create(self, record: Record) -> None:
        name = record["EndpointName"]
        if not record.get("Instances"):
            try:
                specs = self._specs(record)
                started: list[Instance] = []
                try:
                    for spec in specs:
                        started.append(self.backend.start(spec))
                except BaseException:
                    for instance in started:
                        self.backend.stop(instance)
                    raise
            except ModelSourceError as exc:
                self._fail(record, str(exc))
                return
            recorded = [i.to_record() for i in started]

            def save(current: Record) -> Record:
                current["Instances"] = recorded
                return current

            if self.store.update(ENDPOINT, name, save) is None:  # deleted meanwhile
                for instance in started:
                    self.backend.stop(instance)
            return
        instances = self._instances(record)
        for instance in instances:
            reason = self.backend.failure(instance)
            if reason is not None:
                self._fail(record, reason)
                return
        if all(self.backend.healthy(i) for i in instances):
            variants = []
            for pv in record["ProductionVariants"]:
                count = sum(1 for i in instances if i.variant == pv["VariantName"])
                variants.append({**pv, "CurrentInstanceCount": count})
            self._set(name, EndpointStatus=IN_SERVICE, ProductionVariants=variants)

    def _watch(self, record: Record) -> None:
        for instance in self._instances(record):
            reason = self.backend.failure(instance)
            if reason is not None:
                self._fail(record, reason)
                return
