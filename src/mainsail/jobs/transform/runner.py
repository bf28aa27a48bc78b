"""The :class:`TransformRunner` (a thread of ``mainsail up``): it polls the state store for
``InProgress`` transform jobs and runs each in its own thread (:class:`~.job.Job`), passes
``StopTransformJob`` on to them, and settles the jobs an earlier ``mainsail up`` left running.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from mainsail.backends.base import Backend, Instance
from mainsail.backends.model_fetch import NO_S3_ENDPOINT
from mainsail.hosting.store import Record, StateStore
from mainsail.jobs.storage import Storage
from mainsail.jobs.transform.api import TRANSFORM_JOB
from mainsail.jobs.transform.api import TransformJobStatus as Status
from mainsail.jobs.transform.job import Job
from mainsail.settings import S3Access

logger = logging.getLogger(__name__)


class TransformRunner:
    """Runs the InProgress transform jobs of ``store`` on instances of ``backend``, each in a thread.

    ``start()`` first settles jobs an earlier ``mainsail up`` left running (their instances
    stopped; Stopping ones Stopped, InProgress ones resumed by the next poll), then polls the store
    every ``interval`` seconds. ``stop()`` interrupts running jobs (instances stopped, partial
    outputs discarded, left InProgress for the next start to resume) and joins them.
    """

    def __init__(self, store: StateStore, backend: Backend, home: Path, *, interval: float = 0.2,
                 startup_timeout: float = 600.0, s3: S3Access = NO_S3_ENDPOINT) -> None:
        self.store = store
        self.backend = backend
        self.home = Path(home)
        self.interval = interval
        self.startup_timeout = startup_timeout
        self.storage = Storage(self.home, s3)
        self._jobs: dict[str, Job] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self.recover()
            self._thread = threading.Thread(target=self._run, name="mainsail-transform", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for job in list(self._jobs.values()):
            job.shutdown = True
            job.cancel.set()
        for job in list(self._jobs.values()):
            job.thread.join(timeout)
        self._jobs.clear()

    def recover(self) -> None:
        """Settle jobs an earlier control plane left running: their instances are stopped;
        ``Stopping`` ones become ``Stopped``, ``InProgress`` ones stay so, and the first poll
        resumes them (redoing only the inputs whose output is not complete)."""
        for record in self.store.list(TRANSFORM_JOB):
            if record["TransformJobStatus"] not in (Status.IN_PROGRESS, Status.STOPPING):
                continue
            for item in record.get("Instances", []):
                try:
                    self.backend.stop(Instance.from_record(item))
                except Exception:
                    logger.exception("stopping a leftover instance of transform job %s",
                                     record["TransformJobName"])

            def settle(current: Record) -> Record:
                if current["TransformJobStatus"] == Status.STOPPING:
                    current["TransformJobStatus"] = Status.STOPPED
                    current["TransformEndTime"] = time.time()
                current["LastModifiedTime"] = time.time()
                current["Instances"] = []
                return current

            self.store.update(TRANSFORM_JOB, record["TransformJobName"], settle)
            if record["TransformJobStatus"] == Status.IN_PROGRESS:
                logger.warning("transform job %s was interrupted by a restart; resuming it",
                               record["TransformJobName"])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:
                logger.exception("transform runner poll failed")
            self._stop.wait(self.interval)

    def poll(self) -> None:
        """Start new InProgress jobs, pass StopTransformJob on to running ones, forget finished ones."""
        for name, running in list(self._jobs.items()):
            if not running.thread.is_alive():
                del self._jobs[name]
        for record in self.store.list(TRANSFORM_JOB):
            name, status = record["TransformJobName"], record["TransformJobStatus"]
            job = self._jobs.get(name)
            if status == Status.IN_PROGRESS and job is None and not self._stop.is_set():
                new = Job(self, record)
                self._jobs[name] = new
                new.thread.start()
            elif status == Status.STOPPING:
                if job is not None:
                    job.cancel.set()
                else:
                    def stopped(current: Record) -> Record:
                        if current["TransformJobStatus"] == Status.STOPPING:
                            current["TransformJobStatus"] = Status.STOPPED
                            current["TransformEndTime"] = current["LastModifiedTime"] = time.time()
                        return current

                    self.store.update(TRANSFORM_JOB, name, stopped)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Whether every job thread finished within ``timeout`` (for tests)."""
        deadline = time.monotonic() + timeout
        for job in list(self._jobs.values()):
            job.thread.join(max(0.0, deadline - time.monotonic()))
        return all(not j.thread.is_alive() for j in self._jobs.values())
