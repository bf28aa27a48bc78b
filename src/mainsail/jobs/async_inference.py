"""Asynchronous inference: ``InvokeEndpointAsync`` (``POST /endpoints/{name}/async-invocations``).

A request names its input (``X-Amzn-SageMaker-InputLocation``: ``s3://`` in mainsail's own store or
real S3, or ``file://``), is queued durably in the state store and answered at once with 202, its
``InferenceId`` and where its result will be (``OutputLocation``: ``S3OutputPath/<id>.out``) or its
failure (``FailureLocation``: ``S3FailurePath/<id>-error.out``). A worker task of ``mainsail up``
takes queued requests in order, sends each through the router (the same path as ``InvokeEndpoint``,
so weights, cold starts and metrics apply) and writes the answer; a request still queued when
``mainsail up`` stops is processed after it starts again. Up to ``MaxConcurrentInvocationsPerInstance``
(default 4) requests per instance run at once; a request older than its ``RequestTTLSeconds`` fails
with "expired"; one that takes longer than ``InvocationTimeoutSeconds`` fails with a timeout.

Payloads (up to 1 GB, :data:`mainsail.jobs.async_payloads.MAX_ASYNC_PAYLOAD`) are streamed, never held here
(:mod:`mainsail.jobs.async_payloads`): the input is read 1 MiB at a time from its location (a file
of the own store or a local file, sent with its ``Content-Length``; real S3's ``get_object`` body,
sent chunked) and written to the instance as it is read (:meth:`mainsail.backends.base.Transport.stream` of the
router's transport, the backend's: for the local backend a connection of its own, not the buffered
hop); the instance's answer is written to the
output location as it arrives (a temp file renamed into place, or a multipart upload), visible only
once complete. The instance itself holds the whole body, as the model needs it: an async endpoint's
instances run with ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` at 1024 (set by the reconciler,
:data:`mainsail.hosting.endpoints.ASYNC_INSTANCE_MAX_PAYLOAD_MB`) where real-time
ones keep 6 MB. The request is routed as the router routes ``InvokeEndpoint`` (weights, cold
starts, idle tracking, in-flight counts, metrics), through the router's public
:class:`~mainsail.routing.traffic.Traffic` and :class:`~mainsail.routing.forwarding.Exchange`; a
runtime error on the way (:class:`~mainsail.routing.responses.RuntimeApiError`) becomes the failure's
text; a throttled one, or one that finds no instance ready (a restart), stays queued, and one whose
instance died under it runs again on the replacement (up to :data:`MAX_TRIES` times in all).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mainsail.aws.identity import ACCOUNT, endpoint_log_group_arn, region_of
from mainsail.aws.shapes import HeaderCheck
from mainsail.backends.base import Address, ForwardError, Upstream
from mainsail.backends.model_fetch import NO_S3_ENDPOINT
from mainsail.hosting.endpoints import ENDPOINT, EndpointStatus
from mainsail.hosting.store import Record, StateStore
from mainsail.jobs.async_payloads import InputError, PayloadInput, PayloadOutput
from mainsail.jobs.storage import Storage
from mainsail.routing.forwarding import Exchange
from mainsail.routing.responses import (
    InstanceUnreachable,
    RuntimeApiError,
    Throttled,
    ValidationError,
    model_error,
    runtime_api,
)
from mainsail.routing.router import Router
from mainsail.routing.table import Variant
from mainsail.settings import S3Access

logger = logging.getLogger(__name__)

ASYNC_REQUEST = "async-request"
_ERROR_BODY = 64 * 1024  # bytes of an instance's error answer kept for the failure
DEFAULT_TTL, DEFAULT_TIMEOUT, DEFAULT_CONCURRENCY = 6 * 3600, 900, 4
COALESCE_S = 0.002
"""After a wake-up, how long the worker waits for more arrivals or completions to share its pass."""
#: InvokeEndpointAsync's headers as botocore's model of the runtime API constrains them (mainsail also
#: reads its input from a local path or file:// URL)
ASYNC_HEADERS = HeaderCheck("sagemaker-runtime", "InvokeEndpointAsync", error=ValidationError,
                            exempt={"inputLocation": lambda value: value.startswith(("file://", "/"))})
#: how many times a queued request runs when its instance dies under it each time (then it fails)
MAX_TRIES: Final = 3
#: what _invoke returns for a request to keep queued (throttled, or no instance ready yet)
_THROTTLED: Final = "\0throttled"
_HEADER = "x-amzn-sagemaker-"


def _bounded_int(raw: str | None, default: int, low: int, high: int, name: str) -> int | str:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return f"{name} must be an integer, not {raw!r}."
    if not low <= value <= high:
        return f"{name} must be between {low} and {high}, not {value}."
    return value


class AsyncInference:
    """The InvokeEndpointAsync route, its durable queue and the worker that drains it."""

    def __init__(self, store: StateStore, router: Router, home: Path, *, poll: float = 0.2,
                 s3: S3Access = NO_S3_ENDPOINT) -> None:
        self.store = store
        self.router = router
        self.traffic = router.traffic
        #: the backend's transport, as the router has it
        self.transport = router.transport
        self.home = home
        self.s3 = s3
        self.poll = poll
        self.route = Route("/endpoints/{name:path}/async-invocations", runtime_api(self.invoke_async),
                           methods=["POST"])
        self._kick = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        #: tries of each queued request whose instance died under it (it runs again, up to MAX_TRIES)
        self._tries: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._storage: Any = None

    @property
    def storage(self) -> Any:
        if self._storage is None:
            self._storage = Storage(self.home, self.s3)
        return self._storage

    # -- the route ------------------------------------------------------------------------------

    async def invoke_async(self, request: Request) -> Response:
        """``InvokeEndpointAsync``: the request queued, answered 202; runtime errors are raised."""
        name = urllib.parse.unquote(request.path_params["name"])
        ASYNC_HEADERS.check(request.scope["headers"])  # as the service model constrains them, first
        record = await run_in_threadpool(self.store.get, ENDPOINT, name)
        if record is None:
            raise ValidationError(f"Endpoint {name} of account {ACCOUNT} not found.")
        config = record.get("AsyncInferenceConfig")
        if not config:
            raise ValidationError(f"Endpoint {name} of account {ACCOUNT} is not an asynchronous inference endpoint "
                                  "(its endpoint configuration has no AsyncInferenceConfig).")
        if record["EndpointStatus"] not in (EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING):
            raise ValidationError(f"Endpoint {name} of account {ACCOUNT} is not in service "
                                  f"(status {record['EndpointStatus']}).")
        h = request.headers
        location = h.get(_HEADER + "inputlocation")
        if not location:
            raise ValidationError("InputLocation (X-Amzn-SageMaker-InputLocation) is required.")
        if not location.startswith(("s3://", "file://", "/")):
            raise ValidationError(f"InputLocation {location!r} is not an s3:// or file:// URL.")
        ttl = _bounded_int(h.get(_HEADER + "requestttlseconds"), DEFAULT_TTL, 60, 21600, "RequestTTLSeconds")
        timeout = _bounded_int(h.get(_HEADER + "invocationtimeoutseconds"), DEFAULT_TIMEOUT, 1, 3600,
                               "InvocationTimeoutSeconds")
        for problem in (ttl, timeout):
            if isinstance(problem, str):
                raise ValidationError(problem)
        inference_id = h.get(_HEADER + "inference-id") or str(uuid.uuid4())
        output = config.get("OutputConfig") or {}
        extension = (h.get(_HEADER + "s3outputpathextension") or "").strip("/")
        filename = h.get(_HEADER + "filename") or f"{inference_id}.out"
        out_base = str(output.get("S3OutputPath", "")).rstrip("/")
        output_location = "/".join(p for p in (out_base, extension, filename) if p)
        failure_base = str(output.get("S3FailurePath") or "").rstrip("/")
        failure_location = f"{failure_base}/{inference_id}-error.out" if failure_base else None
        queued: Record = {
            "EndpointName": name, "InferenceId": inference_id, "InputLocation": location,
            "OutputLocation": output_location, "FailureLocation": failure_location,
            "ContentType": h.get(_HEADER + "content-type"), "Accept": h.get(_HEADER + "accept"),
            "CustomAttributes": h.get(_HEADER + "custom-attributes"),
            "RequestTTLSeconds": ttl, "InvocationTimeoutSeconds": timeout, "EnqueuedAt": time.time(),
        }
        key = f"{name}/{time.time_ns():020d}-{inference_id}"
        queued["_key"] = key
        await run_in_threadpool(self.store.insert, ASYNC_REQUEST, key, queued)
        self._kick.set()
        headers = {"X-Amzn-SageMaker-OutputLocation": output_location}
        if failure_location:
            headers["X-Amzn-SageMaker-FailureLocation"] = failure_location
        return Response(json.dumps({"InferenceId": inference_id}), status_code=202,
                        media_type="application/json", headers=headers)

    # -- the worker -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mainsail-async")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._running.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self._dispatch()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("async inference worker")
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), self.poll)
            except TimeoutError:
                continue
            # Requests that finish together (or arrive in a burst) share one pass over the queue.
            await asyncio.sleep(COALESCE_S)

    def _capacity(self, record: Record | None) -> int:
        if record is None:
            return 0
        client = (record.get("AsyncInferenceConfig") or {}).get("ClientConfig") or {}
        per_instance = int(client.get("MaxConcurrentInvocationsPerInstance") or DEFAULT_CONCURRENCY)
        instances = max(1, sum(int(pv.get("CurrentInstanceCount") or 0) for pv in record["ProductionVariants"]))
        return per_instance * instances

    async def _dispatch(self) -> None:
        queued = await run_in_threadpool(self.store.list, ASYNC_REQUEST)
        endpoints: dict[str, Record | None] = {}
        busy: dict[str, int] = {}
        for key in list(self._running):
            if self._running[key].done():
                del self._running[key]
        for key in self._running:
            endpoint = key.split("/", 1)[0]
            busy[endpoint] = busy.get(endpoint, 0) + 1
        for item in queued:
            name = item["EndpointName"]
            key = str(item["_key"])
            if key in self._running:
                continue
            if name not in endpoints:
                endpoints[name] = await run_in_threadpool(self.store.get, ENDPOINT, name)
            record = endpoints[name]
            if record is None:
                await self._finish(key, item, "The endpoint was deleted before the request ran.")
                continue
            if record["EndpointStatus"] not in (EndpointStatus.IN_SERVICE, EndpointStatus.UPDATING):
                continue
            if busy.get(name, 0) >= self._capacity(record):
                continue
            busy[name] = busy.get(name, 0) + 1
            self._running[key] = asyncio.get_running_loop().create_task(self._process(key, item))

    async def _process(self, key: str, item: Record) -> None:
        age = time.time() - float(item["EnqueuedAt"])
        if age > float(item["RequestTTLSeconds"]):
            await self._finish(key, item, f"Request expired: it waited {age:.0f} s in the queue, "
                               f"longer than its RequestTTLSeconds ({item['RequestTTLSeconds']}).")
            return
        timeout = float(item["InvocationTimeoutSeconds"])
        source = PayloadInput(self.storage, str(item["InputLocation"]))
        try:
            try:
                await source.open()
                async with asyncio.timeout(timeout):
                    failure = await self._invoke(item, source, timeout)
            except InputError as exc:
                failure = f"Could not read the input {item['InputLocation']}: {exc}"
            except TimeoutError:
                failure = f"The invocation did not finish within {timeout:g} s."
            except Exception as exc:  # a bug: fail this request rather than retry it forever
                logger.exception("async inference %s", item["InferenceId"])
                failure = f"Internal error: {type(exc).__name__}: {exc}"
        finally:
            await source.close()
        if failure == _THROTTLED:  # serverless MaxConcurrency, or no instance ready: stays queued for the next pass
            return
        await self._finish(key, item, failure)
        self._kick.set()  # a slot is free: the next queued request starts now, not at the next poll

    async def _invoke(self, item: Record, source: PayloadInput, timeout: float) -> str | None:
        """Route the request as the router routes ``InvokeEndpoint`` (weights, cold starts, idle
        tracking, in-flight counts, metrics), then stream it: ``None`` once the result is written,
        else why it failed (or ``_THROTTLED``)."""
        traffic, name = self.traffic, str(item["EndpointName"])
        table = await traffic.tables.get(name)
        if table is None:
            return "The endpoint was deleted before the request ran."
        if not table.serving:
            return f"Endpoint {name} is not in service (status {table.status})."
        choice = traffic.pick(table, None)
        if choice == "":  # serving, its instances still starting (a restart): stays queued until one is ready
            traffic.wake()
            return _THROTTLED
        if isinstance(choice, str):
            return choice
        variant, address = choice
        if variant.multi_model:
            return f"Endpoint {name} is a multi-model endpoint, which asynchronous inference does not serve."
        try:
            async with traffic.lease(name, variant, address) as address:
                return await self._exchange(item, source, variant, address, timeout)
        except Throttled:  # serverless MaxConcurrency: stays queued
            return _THROTTLED
        except InstanceUnreachable as exc:  # the instance died under it: again, on its replacement
            key = str(item["_key"])
            self._tries[key] = tries = self._tries.get(key, 1) + 1
            if tries <= MAX_TRIES:
                logger.info("async inference %s: its instance went away (%s); try %d of %d", item["InferenceId"],
                            exc.message, tries, MAX_TRIES)
                return _THROTTLED
            return exc.message
        except RuntimeApiError as exc:  # a cold start that failed, an instance that cannot be reached
            return exc.message

    async def _exchange(self, item: Record, source: PayloadInput, variant: Variant, address: Address,
                        timeout: float) -> str | None:
        """Stream the input to the instance at ``address`` (or its replacement when it is gone) and
        its answer to the output location."""
        name = str(item["EndpointName"])
        exchange = Exchange(self.traffic, name, variant, endpoint_log_group_arn(region_of(None), name),
                            asynchronous=True)
        status, failure = await exchange.send(
            address, lambda a: self._stream(item, source, a, timeout, exchange.log_arn))
        exchange.check(status)
        return failure

    async def _stream(self, item: Record, source: PayloadInput, address: Address, timeout: float,
                      log_arn: str) -> tuple[int, str | None]:
        """One exchange with an instance: its status, and why it failed (``None``: written)."""
        headers = [(k, v) for k, v in (("content-type", item.get("ContentType")), ("accept", item.get("Accept")),
                                       ("x-amzn-sagemaker-custom-attributes", item.get("CustomAttributes")),
                                       ("x-amzn-sagemaker-inference-id", item["InferenceId"])) if v]
        # the outer deadline (InvocationTimeoutSeconds) fires first, with its own message
        async with self.transport.stream(address, "/invocations", source.chunks(), headers, length=source.size,
                                         timeout=timeout + 5) as upstream:
            if not 200 <= upstream.status < 300:
                text = await upstream.read(_ERROR_BODY)
                return upstream.status, model_error(Upstream(upstream.status, upstream.headers, text), log_arn).message
            output = PayloadOutput(self.storage, str(item["OutputLocation"]), upstream.headers.get("content-type"))
            try:
                await output.open()
                async for piece in upstream.body():
                    await output.write(piece)
                await output.commit()
            except ForwardError:
                await output.abort()
                raise
            except Exception as exc:  # the output location refused it (no bucket, no permission...)
                await output.abort()
                return upstream.status, f"Could not write the result to {item['OutputLocation']}: {exc}"
            except BaseException:
                await output.abort()
                raise
        return upstream.status, None

    async def _finish(self, key: str, item: Record, failure: str | None) -> None:
        """Record the outcome: the failure written to the failure location (a result was written as
        it streamed), and the request removed from the queue."""
        self._tries.pop(key, None)
        def write() -> None:
            if failure is not None and item.get("FailureLocation"):
                self._write(item["FailureLocation"], failure.encode(), "text/plain")
            self.store.delete(ASYNC_REQUEST, key)

        try:
            await run_in_threadpool(write)
        except Exception:
            logger.exception("async inference %s: could not write its failure", item["InferenceId"])
            await run_in_threadpool(self.store.delete, ASYNC_REQUEST, key)
        if failure is not None:
            logger.warning("async inference %s on %s failed: %s", item["InferenceId"], item["EndpointName"], failure)

    def _write(self, location: str, data: bytes, content_type: str | None) -> None:
        sink = self.storage.writer(location, content_type or None)
        try:
            sink.write(data)
            sink.commit()
        except BaseException:
            sink.abort()
            raise

