"""HTTP plumbing shared by the data plane's apps (one model, and the multi-model container).

Request bodies read with a limit (413 as soon as it is exceeded, the rest of the body thrown away
first: ``mainsail.drain``), the handler's view of a request
(``make_invocation``), a complete response sent over raw ASGI, and the one place errors become JSON
bodies ``{"error": code, "message": text}``: ``error_response`` for ``MainsailError``, and the
Starlette exception handlers ``http_error`` (404/405 ...) and ``unexpected`` (500).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Send

from mainsail.drain import CLOSE, drain_body
from mainsail.errors import BadRequest, MainsailError, PayloadTooLarge
from mainsail.handlers.base import Invocation

REQUEST_ID_HEADERS = ("x-amzn-sagemaker-inference-id", "x-amzn-requestid", "x-request-id")
JSON_TYPE = "application/json"


def error_response(exc: MainsailError) -> Response:
    """The one place an error becomes a response: ``{"error": code, "message": text}``."""
    return Response(orjson.dumps(exc.to_dict()), status_code=exc.status_code, media_type=JSON_TYPE,
                    headers=CLOSE if exc.close_connection else None)


def json_response(payload: Any, status: int = 200) -> Response:
    """``payload`` as a JSON response."""
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON_TYPE)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as :func:`receive_body` refuses it."""
    return await receive_body(request.receive, request.headers, limit)


def make_invocation(body: bytes, headers: Mapping[str, str], default_accept: str) -> Invocation:
    """The handler's view of a request (``headers`` with lowercased names): a missing or ``*/*``
    Accept resolved to ``default_accept``, the request id from SageMaker's headers."""
    accept = headers.get("accept") or default_accept
    if accept.strip() == "*/*":
        accept = default_accept
    request_id = next((headers[h] for h in REQUEST_ID_HEADERS if h in headers), None)
    # The toolkit accepts any header matching ^[Cc]ontent-?[Tt]ype.
    content_type = headers.get("content-type") or headers.get("contenttype")
    return Invocation(body, content_type, accept, headers, request_id)


class Disconnected(Exception):
    """The client went away before its request body arrived."""


async def receive_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """A request body read from ASGI ``receive`` (``headers``: the request's, names in lower case),
    refused with 413 as soon as it is known to exceed ``limit``: the rest of it is read and thrown
    away first (:func:`mainsail.drain.drain_body`), so the client reads the 413."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"invalid Content-Length header {declared!r}") from None
        if size > limit:
            raise await _too_large(receive, headers, limit, 0)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            if not more:
                raise PayloadTooLarge(limit)
            raise await _too_large(receive, headers, limit, size)
        chunks.append(chunk)
        if not more:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _too_large(receive: Receive, headers: Mapping[str, str], limit: int, received: int) -> PayloadTooLarge:
    """The 413 of a body still coming in, once its rest is thrown away (or found too large to be)."""
    error = PayloadTooLarge(limit)
    error.close_connection = not await drain_body(receive, headers, received)
    return error


_CONTENT_TYPES: dict[str, bytes] = {}


def content_type_header(media_type: str) -> bytes:
    """The Content-Type value for ``media_type`` (``text/*`` in UTF-8 unless it names a charset),
    as Starlette's ``Response`` writes it; remembered for the next response."""
    value = _CONTENT_TYPES.get(media_type)
    if value is None:
        text = media_type
        if text.startswith("text/") and "charset=" not in text.lower():
            text += "; charset=utf-8"
        value = text.encode("latin-1")
        if len(_CONTENT_TYPES) < 256:
            _CONTENT_TYPES[media_type] = value
    return value


async def send_response(send: Send, status: int, media_type: str, body: bytes,
                        headers: Mapping[str, str] | None = None) -> None:
    """One complete response, with the headers Starlette's ``Response`` would give it."""
    if headers:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        names = {name for name, _ in raw}
        if b"content-length" not in names:
            raw.append((b"content-length", b"%d" % len(body)))
        if b"content-type" not in names:
            raw.append((b"content-type", content_type_header(media_type)))
    else:
        raw = [(b"content-length", b"%d" % len(body)), (b"content-type", content_type_header(media_type))]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's handler for ``HTTPException`` (unknown route 404, wrong method 405 ...)."""
    assert isinstance(exc, HTTPException)
    code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    return json_response({"error": code, "message": f"{request.method} {request.url.path}: {exc.detail}"},
                         exc.status_code)


async def unexpected(request: Request, exc: Exception) -> Response:
    """Starlette's handler for any other exception: 500 ``InternalError``."""
    return json_response({"error": "InternalError", "message": f"{type(exc).__name__}: {exc}"}, 500)
