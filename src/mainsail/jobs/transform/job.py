"""One transform job's run, in its own thread: its instances started through the ``Backend`` (with
the batch variables SageMaker sets) and stopped, always; its input objects transformed
``MaxConcurrentTransforms`` requests per instance at a time (:mod:`.objects`), each request retried
``InvocationsMaxRetries`` times; its progress and final status written to its record. Requests go
through the backend's transport (:meth:`~mainsail.backends.base.Transport.blocking`: a blocking
client of the job's own, closed when it ends).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from mainsail.backends.base import BlockingClient, Instance, InstanceSpec, ModelSourceError
from mainsail.backends.model_sources import container_model_source
from mainsail.hosting import resources as res
from mainsail.hosting.instance_types import model_server_workers
from mainsail.hosting.store import Record
from mainsail.jobs.storage import MB, InputObject, JobFailure
from mainsail.jobs.transform.api import DEFAULT_MAX_PAYLOAD_MB, TRANSFORM_JOB, UNLIMITED_PAYLOAD_MB
from mainsail.jobs.transform.api import TransformJobStatus as Status
from mainsail.jobs.transform.errors import Cancelled
from mainsail.jobs.transform.objects import transform_object
from mainsail.jobs.transform.records import Batch, batches

if TYPE_CHECKING:
    from mainsail.jobs.transform.runner import TransformRunner

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_RETRIES = 3


class Job:
    """One job's run, in its own thread."""

    def __init__(self, runner: TransformRunner, record: Record) -> None:
        self.runner = runner
        self.name: str = record["TransformJobName"]
        self.record = record
        self.cancel = threading.Event()
        """StopTransformJob, or mainsail up stopping (then ``shutdown`` is true)."""
        self.halt = threading.Event()
        """Another input file failed: the others stop too."""
        self.shutdown = False
        self.resumed = "TransformStartTime" in record  # an earlier mainsail up started it
        self.instances: list[Instance] = []
        self.progress: dict[str, int] = dict(record.get("Progress") or {})
        self._last_flush = 0.0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, name=f"mainsail-transform-{self.name}",
                                       daemon=True)

    # settings
    @property
    def payload_limit(self) -> int:
        mb = int(self.record.get("MaxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB))
        return (mb or UNLIMITED_PAYLOAD_MB) * MB

    def _write(self, mutate: Callable[[Record], None]) -> None:
        def apply(current: Record) -> Record:
            mutate(current)
            current["LastModifiedTime"] = time.time()
            return current

        self.runner.store.update(TRANSFORM_JOB, self.name, apply)

    def add(self, **counts: int) -> None:
        """Add to the progress counts (written to the record at most every half second)."""
        with self._lock:
            for key, n in counts.items():
                self.progress[key] = self.progress.get(key, 0) + n
        if time.monotonic() - self._last_flush > 0.5:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        with self._lock:
            snapshot = dict(self.progress)

        def keep(current: Record) -> None:
            current["Progress"] = snapshot

        self._write(keep)

    def check(self) -> None:
        """Raise :class:`Cancelled` once the job is stopped, or another input failed."""
        if self.cancel.is_set() or self.halt.is_set():
            raise Cancelled()

    # the run
    def run(self) -> None:
        status, reason = Status.COMPLETED, None
        try:
            if not self.resumed:
                self._write(lambda r: r.__setitem__("TransformStartTime", time.time()))
            self._execute()
        except Cancelled:
            status = Status.IN_PROGRESS if self.shutdown else Status.STOPPED  # a shutdown: resumed by the next start
        except (JobFailure, ModelSourceError) as exc:
            status, reason = Status.FAILED, str(exc)
        except Exception as exc:  # a bug: the job fails, mainsail up goes on
            logger.exception("transform job %s failed", self.name)
            status, reason = Status.FAILED, f"InternalServerError: {type(exc).__name__}: {exc}"
        finally:
            self._stop_instances()
        with self._lock:
            snapshot = dict(self.progress)

        def finish(current: Record) -> None:
            final = status
            if current["TransformJobStatus"] == Status.STOPPING and not self.shutdown:
                final = Status.STOPPED
            current["Progress"] = snapshot
            current["Instances"] = []
            if final == Status.IN_PROGRESS:  # mainsail up stops: the job stays InProgress, to be resumed
                return
            current["TransformJobStatus"] = final
            current["TransformEndTime"] = time.time()
            if final == Status.FAILED and reason:
                current["FailureReason"] = reason[:1024]

        self._write(finish)
        if status == Status.IN_PROGRESS:
            logger.info("transform job %s interrupted by shutdown; the next mainsail up resumes it", self.name)
        else:
            logger.info("transform job %s: %s%s", self.name, status, f" ({reason})" if reason else "")

    def _stop_instances(self) -> None:
        instances, self.instances = self.instances, []
        for instance in instances:
            try:
                self.runner.backend.stop(instance)
            except Exception:
                logger.exception("stopping instance %d of transform job %s", instance.pid, self.name)

    def _spec_environment(self) -> tuple[str, dict[str, str]]:
        model = self.runner.store.get(res.MODEL, self.record["ModelName"])
        if model is None:
            raise JobFailure(f"Model {self.record['ModelName']} no longer exists.")
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        url = container_model_source(container)
        if not url:
            raise JobFailure(f"Model {self.record['ModelName']} has no ModelDataUrl or ModelDataSource.")
        env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
        env.update({str(k): str(v) for k, v in (self.record.get("Environment") or {}).items()})
        strategy = self.record.get("BatchStrategy") or "MultiRecord"
        env.update({
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.payload_limit // MB),
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(self.concurrency),
            "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD" if strategy == "MultiRecord" else "SINGLE_RECORD",
            "MAINSAIL_MAX_CONCURRENT_TRANSFORMS": str(self.concurrency),
            "MAINSAIL_BATCH_STRATEGY": "MULTI_RECORD" if strategy == "MultiRecord" else "SINGLE_RECORD",
        })
        env.setdefault("SAGEMAKER_MODEL_SERVER_TIMEOUT", str(int(self.timeout)))
        return url, env

    @property
    def concurrency(self) -> int:
        """Requests in flight per instance: ``MaxConcurrentTransforms``, default 1."""
        return int(self.record.get("MaxConcurrentTransforms") or 0) or 1

    @property
    def slots(self) -> int:
        """Requests in flight at once, over all instances and input files."""
        return self.concurrency * int(self.record["TransformResources"]["InstanceCount"])

    @property
    def timeout(self) -> float:
        config = self.record.get("ModelClientConfig") or {}
        return float(config.get("InvocationsTimeoutInSeconds") or DEFAULT_TIMEOUT_S)

    @property
    def retries(self) -> int:
        config = self.record.get("ModelClientConfig") or {}
        value = config.get("InvocationsMaxRetries")
        return DEFAULT_RETRIES if value is None else int(value)

    def _start_instances(self) -> None:
        url, env = self._spec_environment()
        resources = self.record["TransformResources"]
        count = int(resources["InstanceCount"])
        # The container serves a transform job as it serves an endpoint: one worker per vCPU of the
        # instance type, unless the model's (or the job's) environment names the workers.
        workers = model_server_workers(resources.get("InstanceType"), env)
        for index in range(count):
            self.check()
            self.instances.append(self.runner.backend.start(InstanceSpec(
                endpoint=f"transform-{self.name}", variant="transform", index=index,
                model_data_url=url, environment=dict(env), workers=workers)))
            records = [i.to_record() for i in self.instances]

            def keep(current: Record, records: list[dict[str, Any]] = records) -> None:
                current["Instances"] = records

            self._write(keep)
        deadline = time.monotonic() + self.runner.startup_timeout
        waiting = list(self.instances)
        while waiting:
            self.check()
            for instance in list(waiting):
                reason = self.runner.backend.failure(instance)
                if reason is not None:
                    raise JobFailure(f"The model failed to start: {reason}")
                if self.runner.backend.healthy(instance):
                    waiting.remove(instance)
            if waiting:
                if time.monotonic() > deadline:
                    raise JobFailure(f"The model did not answer /ping within "
                                     f"{self.runner.startup_timeout:.0f} seconds.")
                self.cancel.wait(0.1)

    def _execute(self) -> None:
        storage = self.runner.storage
        tin, tout = self.record["TransformInput"], self.record["TransformOutput"]
        objects = storage.inputs(tin["DataSource"]["S3DataSource"])
        storage.check_output(str(tout["S3OutputPath"]))
        done: list[InputObject] = []
        if self.resumed:
            # S3 keeps whole seconds: an output of this job is at most 1 s older than its start
            since = float(self.record["TransformStartTime"]) - 1.0
            done = [o for o in objects if storage.output_done(self.output_uri(o), since)]
            logger.info("resuming transform job %s: %d of %d outputs are complete", self.name,
                        len(done), len(objects))
        skip = set(done)
        todo = [o for o in objects if o not in skip]
        with self._lock:
            self.progress.update(Objects=len(objects), InputBytes=sum(o.size for o in objects),
                                 ObjectsDone=len(done), BytesRead=sum(o.size for o in done))
        self.flush()
        if not todo:
            return
        self._start_instances()
        http = self.runner.backend.transport().blocking(self.timeout)
        slots = threading.Semaphore(self.slots)
        picker = itertools.count()
        try:
            # up to `slots` requests in flight, over as many input files at once (each file
            # streamed and written in order, as alone); slots are held until an answer is written
            with ThreadPoolExecutor(self.slots, thread_name_prefix=f"transform-{self.name}") as pool, \
                    ThreadPoolExecutor(min(self.slots, len(todo)),
                                       thread_name_prefix=f"transform-{self.name}-file") as files:
                futures = [files.submit(self._transform_file, obj, http, pool, slots, picker) for obj in todo]
                while True:
                    finished, running = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
                    errors = [error for f in finished if (error := f.exception()) is not None]
                    if errors or not running:
                        break
                    if self.cancel.is_set() and self.instances:
                        # requests in flight end with their instances (not after their timeout)
                        self._stop_instances()
                if errors:
                    self.halt.set()
                    self._stop_instances()  # no request in flight is waited for
                    for future in futures:
                        future.cancel()
                    wait(futures)
                    if self.cancel.is_set():  # a stop: whatever the files raised on the way out
                        raise Cancelled()
                    raise next((e for e in errors if not isinstance(e, Cancelled)), errors[0])
        finally:
            http.close()
        self.flush()

    def output_uri(self, obj: InputObject) -> str:
        """``<S3OutputPath>/<input name>.out``."""
        return str(self.record["TransformOutput"]["S3OutputPath"]).rstrip("/") + "/" + obj.relative + ".out"

    def _transform_file(self, obj: InputObject, http: BlockingClient, pool: ThreadPoolExecutor,
                        slots: threading.Semaphore, picker: Iterator[int]) -> None:
        self.check()
        transform_object(self, obj, http, pool, slots, picker)
        self.add(ObjectsDone=1)

    def batches(self, obj: InputObject, stream: Any) -> Iterator[Batch]:
        """The requests of ``obj`` read from ``stream``, by SplitType and BatchStrategy."""
        return batches(obj.uri, stream, limit=self.payload_limit,
                       split=self.record["TransformInput"].get("SplitType", "None") != "None",
                       single=self.record.get("BatchStrategy") == "SingleRecord",
                       per_record=self._per_record)

    @property
    def _per_record(self) -> bool:
        processing = self.record.get("DataProcessing") or {}
        return bool(processing.get("InputFilter") or processing.get("OutputFilter")
                    or processing.get("JoinSource") == "Input")

    def invoke(self, http: BlockingClient, instance: Instance, payload: bytes) -> bytes:
        """POST ``payload`` to ``instance``'s /invocations, retried InvocationsMaxRetries times."""
        tin, tout = self.record["TransformInput"], self.record["TransformOutput"]
        headers = [("Content-Type", tin.get("ContentType") or "application/octet-stream")]
        if tout.get("Accept"):
            headers.append(("Accept", tout["Accept"]))
        problem = ""
        for attempt in range(self.retries + 1):
            self.check()
            try:
                upstream = http.post(instance.address, "/invocations", payload, headers)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if upstream.status == 200:
                    return upstream.body
                problem = (f"Bad HTTP status received from algorithm: {upstream.status}: "
                           f"{upstream.body[:300].decode('utf-8', 'replace')}")
            if attempt < self.retries:
                self.cancel.wait(min(0.1 * 2 ** attempt, 2.0))
        self.check()  # a request cut short by a stop is no failure of the job
        raise JobFailure(problem)

