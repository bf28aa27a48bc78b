"""``InvokeEndpointWithResponseStream``: ``POST /endpoints/{name}/invocations-response-stream``.

The request is admitted as InvokeEndpoint's (:meth:`Router.admit`: the endpoint, the 6 MB limit, the
variant and instance, ``X-Amzn-SageMaker-Target-Variant``), sent to the instance's ``/invocations``
with the ``X-Amzn-SageMaker-Accept`` header as its Accept, and the instance's body relayed as it
arrives, each piece one ``PayloadPart`` event of the AWS event stream (:mod:`mainsail.aws.eventstream`).
An instance that answers an error before streaming is InvokeEndpoint's ``ModelError``; one that sends
nothing within the invocation timeout is a ``ModelError`` too. After the first part, a broken stream
(the instance dropped the connection) ends with a ``ModelStreamError`` event (``StreamBroken``) and a
stream over its time limit with one (``ModelInvocationTimeExceeded``). A client that goes away stops
the relay and closes the connection to the instance, which closes the script's generator.

Answered as plain ASGI (like ``Router.serve_invocation``), in one task: the instance's exchange is
entered and left where the response is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from mainsail.aws import eventstream
from mainsail.aws.identity import endpoint_log_group_arn, region_of
from mainsail.aws.shapes import HeaderCheck
from mainsail.backends.base import Address, ForwardError, StreamedResponse, Upstream
from mainsail.routing.forwarding import Exchange, forwarded
from mainsail.routing.responses import ModelError, RuntimeApiError, ValidationError, model_error
from mainsail.routing.router import PREFIX, Router
from mainsail.routing.target_model import TARGET_MODEL

logger = logging.getLogger(__name__)
#: InvokeEndpointWithResponseStream's headers as botocore's model of the runtime API constrains them
STREAM_HEADERS = HeaderCheck("sagemaker-runtime", "InvokeEndpointWithResponseStream", error=ValidationError)

SUFFIX = "/invocations-response-stream"
EVENT_STREAM = "application/vnd.amazon.eventstream"
ERROR_BODY_LIMIT = 64 * 1024
RELAY_QUEUE = 8
"""Events read ahead of the client (each at most one read of the instance's socket, 1 MiB)."""


def is_response_stream(scope: Scope) -> bool:
    """Whether ``scope`` is ``POST /endpoints/{name}/invocations-response-stream``."""
    if scope["type"] != "http":
        return False
    path: str = scope["path"]
    return (scope["method"] == "POST" and path.startswith(PREFIX)
            and path.endswith(SUFFIX) and len(path) > len(PREFIX) + len(SUFFIX))


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ResponseStreams:
    """The streaming runtime operation over ``router`` (its admission, traffic and transport): the
    first byte within ``router.timeout`` seconds, the whole stream within ``stream_timeout``."""

    def __init__(self, router: Router, *, stream_timeout: float = 480.0) -> None:
        self.router = router
        self.stream_timeout = stream_timeout

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        name = urllib.parse.unquote(scope["path"][len(PREFIX):-len(SUFFIX)])
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._serve(request, name, receive, tracked)
        except RuntimeApiError as exc:
            await exc.response()(scope, receive, send)
        except Exception as exc:  # a bug of ours: the runtime's 500 (or, mid-stream, the stream's end)
            logger.exception("InvokeEndpointWithResponseStream failed")
            if started:
                await send({"type": "http.response.body", "body": eventstream.exception(
                    "InternalStreamFailure", Message=f"{type(exc).__name__}: {exc}"), "more_body": False})
                return
            await RuntimeApiError(500, "InternalFailure", f"{type(exc).__name__}: {exc}").response()(
                scope, receive, send)

    async def _serve(self, request: Request, name: str, receive: Receive, send: Send) -> None:
        router = self.router
        started = time.perf_counter()
        if TARGET_MODEL in request.headers:
            raise ValidationError("InvokeEndpointWithResponseStream does not take a TargetModel: streaming to "
                                  "a model of a multi-model endpoint is not supported.")
        variant, address, body = await router.admit(request, name, STREAM_HEADERS)
        if variant.multi_model:
            raise ValidationError(f"Endpoint {name} is a multi-model endpoint, which "
                                  "InvokeEndpointWithResponseStream does not serve.")
        log_arn = endpoint_log_group_arn(region_of(request.headers.get("authorization")), name)
        headers = forwarded(request.headers, ("content-type", "x-amzn-sagemaker-custom-attributes",
                                              "x-amzn-sagemaker-inference-id"))
        accept = request.headers.get("x-amzn-sagemaker-accept")
        if accept is not None:
            headers.append(("accept", accept))
        async with contextlib.AsyncExitStack() as stack:
            leased: Address = await stack.enter_async_context(router.traffic.lease(name, variant, address))
            exchange = Exchange(router.traffic, name, variant, log_arn)

            async def attempt(target: Address) -> StreamedResponse:
                return await stack.enter_async_context(router.transport.stream(
                    target, "/invocations", body, headers, length=len(body), timeout=self.stream_timeout))

            try:
                async with asyncio.timeout(router.timeout):
                    upstream = await exchange.send(leased, attempt)
                    if not exchange.check(upstream.status):
                        text = await upstream.read(ERROR_BODY_LIMIT)
                        raise model_error(Upstream(upstream.status, upstream.headers, text), log_arn)
                    pieces = upstream.body().__aiter__()
                    first = await anext(pieces, None)
            except TimeoutError:
                exchange.failed(504)
                raise ModelError(f"Your model in endpoint {name} did not send its first byte within "
                                 f"{router.timeout:g} s. See {log_arn} for more information.",
                                 OriginalStatusCode=504, LogStreamArn=log_arn) from None
            except ForwardError as exc:
                raise exchange.unreachable(exc) from exc
            out = [(b"content-type", EVENT_STREAM.encode()),
                   (b"x-amzn-invoked-production-variant", variant.name.encode()),
                   (b"x-amzn-sagemaker-content-type",
                    upstream.headers.get("content-type", "application/octet-stream").encode("latin-1"))]
            custom = upstream.headers.get("x-amzn-sagemaker-custom-attributes")
            if custom is not None:
                out.append((b"x-amzn-sagemaker-custom-attributes", custom.encode("latin-1")))
            await send({"type": "http.response.start", "status": 200, "headers": out})
            stack.enter_context(router.traffic.busy(leased))
            await self._relay(send, receive, first, pieces, name, variant.name, log_arn)
            exchange.observe((time.perf_counter() - started) * 1e6)

    async def _relay(self, send: Send, receive: Receive, first: bytes | None, pieces: AsyncIterator[bytes],
                     name: str, variant: str, log_arn: str) -> None:
        """The instance's body as PayloadPart events, then the end (or a ModelStreamError event).

        Reading the instance and writing the client overlap: a reader task encodes the pieces into a
        short queue (at most ``RELAY_QUEUE`` events ahead) while this task writes them out."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(RELAY_QUEUE)

        async def read() -> None:
            try:
                async for piece in pieces:
                    if piece:
                        await queue.put(eventstream.event("PayloadPart", piece))
            except ForwardError as exc:
                code = "ModelInvocationTimeExceeded" if "timed out" in str(exc) else "StreamBroken"
                message = (f"Your model {variant} in endpoint {name} stopped its response stream: {exc}. "
                           f"See {log_arn} for more information.")
                await queue.put(eventstream.exception("ModelStreamError", Message=message, ErrorCode=code))
            await queue.put(None)

        gone = asyncio.ensure_future(_disconnected(receive))
        reader = asyncio.ensure_future(read()) if first is not None else None
        try:
            if first:
                await send({"type": "http.response.body", "body": eventstream.event("PayloadPart", first),
                            "more_body": True})
            while reader is not None:
                step = asyncio.ensure_future(queue.get())
                await asyncio.wait((step, gone), return_when=asyncio.FIRST_COMPLETED)
                if not step.done():  # the client went away: stop reading (the exchange is closed after)
                    step.cancel()
                    return
                message = step.result()
                if message is None:
                    break
                await send({"type": "http.response.body", "body": message, "more_body": True})
            if reader is not None:
                await reader  # its own failure (a bug of ours), if any, is raised here
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
