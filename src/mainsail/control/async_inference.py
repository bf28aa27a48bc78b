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
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mainsail.control import resources as res
from mainsail.control.endpoints import ENDPOINT, IN_SERVICE, UPDATING
from mainsail.control.router import Router, runtime_error
from mainsail.control.store import Record, StateStore

logger = logging.getLogger(__name__)

ASYNC_REQUEST = "async-request"
#: The largest async payload read from its input location (SageMaker: 1 GB).
MAX_ASYNC_PAYLOAD = 1024**3
DEFAULT_TTL, DEFAULT_TIMEOUT, DEFAULT_CONCURRENCY = 6 * 3600, 900, 4
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

    def __init__(self, store: StateStore, router: Router, home: Path, *, poll: float = 0.2) -> None:
        self.store = store
        self.router = router
        self.home = home
        self.poll = poll
        self.route = Route("/endpoints/{name:path}/async-invocations", self.invoke_async, methods=["POST"])
        self._kick = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._storage: Any = None

    @property
    def storage(self) -> Any:
        if self._storage is None:
            from mainsail.control.transform import Storage

            self._storage = Storage(self.home)
        return self._storage

    # -- the route ------------------------------------------------------------------------------

    async def invoke_async(self, request: Request) -> Response:
        name = urllib.parse.unquote(request.path_params["name"])
        record = await run_in_threadpool(self.store.get, ENDPOINT, name)
        if record is None:
            return runtime_error(400, "ValidationError", f"Endpoint {name} of account {res.ACCOUNT} not found.")
        config = record.get("AsyncInferenceConfig")
        if not config:
            return runtime_error(400, "ValidationError",
                          f"Endpoint {name} of account {res.ACCOUNT} is not an asynchronous inference endpoint "
                          "(its endpoint configuration has no AsyncInferenceConfig).")
        if record["EndpointStatus"] not in (IN_SERVICE, UPDATING):
            return runtime_error(400, "ValidationError", f"Endpoint {name} of account {res.ACCOUNT} is not in service "
                          f"(status {record['EndpointStatus']}).")
        h = request.headers
        location = h.get(_HEADER + "inputlocation")
        if not location:
            return runtime_error(400, "ValidationError", "InputLocation (X-Amzn-SageMaker-InputLocation) is required.")
        if not location.startswith(("s3://", "file://", "/")):
            return runtime_error(400, "ValidationError", f"InputLocation {location!r} is not an s3:// or file:// URL.")
        ttl = _bounded_int(h.get(_HEADER + "requestttlseconds"), DEFAULT_TTL, 60, 21600, "RequestTTLSeconds")
        timeout = _bounded_int(h.get(_HEADER + "invocationtimeoutseconds"), DEFAULT_TIMEOUT, 1, 3600,
                               "InvocationTimeoutSeconds")
        for problem in (ttl, timeout):
            if isinstance(problem, str):
                return runtime_error(400, "ValidationError", problem)
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
                pass

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
                await self._finish(key, item, None, "The endpoint was deleted before the request ran.")
                continue
            if record["EndpointStatus"] not in (IN_SERVICE, UPDATING):
                continue
            if busy.get(name, 0) >= self._capacity(record):
                continue
            busy[name] = busy.get(name, 0) + 1
            self._running[key] = asyncio.get_running_loop().create_task(self._process(key, item))

    async def _process(self, key: str, item: Record) -> None:
        age = time.time() - float(item["EnqueuedAt"])
        if age > float(item["RequestTTLSeconds"]):
            await self._finish(key, item, None, f"Request expired: it waited {age:.0f} s in the queue, "
                               f"longer than its RequestTTLSeconds ({item['RequestTTLSeconds']}).")
            return
        try:
            body = await run_in_threadpool(self._read, item["InputLocation"])
        except Exception as exc:
            await self._finish(key, item, None, f"Could not read the input {item['InputLocation']}: {exc}")
            return
        headers = [(k, v) for k, v in (("content-type", item.get("ContentType")), ("accept", item.get("Accept")),
                                       ("x-amzn-sagemaker-custom-attributes", item.get("CustomAttributes")),
                                       ("x-amzn-sagemaker-inference-id", item["InferenceId"])) if v]
        response = await self._call(item["EndpointName"], body, headers, float(item["InvocationTimeoutSeconds"]))
        if response is None:  # throttled (serverless MaxConcurrency): stays queued for the next pass
            return
        status, content_type, answer = response
        if 200 <= status < 300:
            await self._finish(key, item, (answer, content_type), None)
        else:
            try:
                message = json.loads(answer).get("message", answer.decode("utf-8", "replace"))
            except (ValueError, AttributeError):
                message = answer.decode("utf-8", "replace")
            await self._finish(key, item, None, str(message))

    def _read(self, location: str) -> bytes:
        from mainsail.control.transform import InputObject, _local, _s3_parts

        local = _local(location)
        if local is not None:
            obj = InputObject(location, local.name, 0, path=str(local))
        else:
            bucket, key = _s3_parts(location)
            obj = InputObject(location, key, 0, bucket=bucket, key=key)
        with self.storage.open_raw(obj) as fh:
            data: bytes = fh.read(MAX_ASYNC_PAYLOAD + 1)
        if len(data) > MAX_ASYNC_PAYLOAD:
            raise ValueError(f"the input is larger than {MAX_ASYNC_PAYLOAD} bytes")
        return data

    async def _call(self, name: str, body: bytes, headers: list[tuple[str, str]],
                    timeout: float) -> tuple[int, str, bytes] | None:
        """The request through the router's InvokeEndpoint path (no payload limit: 1 GB async)."""
        chunks = [body]

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": chunks.pop() if chunks else b"", "more_body": False}

        scope = {"type": "http", "method": "POST", "path": f"/endpoints/{name}/invocations", "root_path": "",
                 "query_string": b"", "path_params": {"name": name}, "mainsail.internal": True,
                 "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]}
        try:
            response = await asyncio.wait_for(self.router.invoke(Request(scope, receive)), timeout)
        except TimeoutError:
            return 504, "text/plain", f"The invocation did not finish within {timeout:g} s.".encode()
        if response.status_code == 429:
            return None
        return response.status_code, response.headers.get("content-type", ""), bytes(response.body)

    async def _finish(self, key: str, item: Record, result: tuple[bytes, str] | None, failure: str | None) -> None:
        def write() -> None:
            if result is not None:
                self._write(item["OutputLocation"], result[0], result[1])
            elif item.get("FailureLocation"):
                self._write(item["FailureLocation"], failure.encode() if failure else b"", "text/plain")
            self.store.delete(ASYNC_REQUEST, key)

        try:
            await run_in_threadpool(write)
        except Exception:
            logger.exception("async inference %s: could not write its result", item["InferenceId"])
            await run_in_threadpool(self.store.delete, ASYNC_REQUEST, key)
        if failure:
            logger.warning("async inference %s on %s failed: %s", item["InferenceId"], item["EndpointName"], failure)

    def _write(self, location: str, data: bytes, content_type: str | None) -> None:
        sink = self.storage.writer(location, content_type or None)
        try:
            sink.write(data)
            sink.commit()
        except BaseException:
            sink.abort()
            raise
