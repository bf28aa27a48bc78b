"""What a script's ``output_fn`` / ``transform_fn`` result becomes: a :class:`Reply`.

Bytes and text as they are, a ``(body, content_type)`` tuple, anything else JSON (as Multi Model Server
encodes it); a response object (werkzeug / Flask ``Response``, ``worker.Response``) as the HTTP response it
stands for; a stream's reply carrying its chunks (:mod:`mainsail.handlers.streaming`). The status and
headers a script set on its context apply to each.
"""

from __future__ import annotations

from typing import Any

import orjson

from mainsail.codecs import toolkit
from mainsail.errors import ModelError
from mainsail.handlers.base import Reply
from mainsail.handlers.context import Context

_SERVER_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding", "connection", "date", "server"})


def response_object(result: Any) -> Reply | None:
    """``output_fn``'s (or ``transform_fn``'s) result as the HTTP response it stands for, when it is a
    response object: a werkzeug / Flask ``Response`` (the scikit-learn and XGBoost containers'
    ``worker.Response`` is one: Flask sends it as it is) or anything else with an ``int``
    ``status_code`` and a body (``get_data()`` or ``body``); ``None`` for any other result."""
    if isinstance(result, (bytes, str, dict, list, tuple)):  # what output_fn returns most often
        return None
    status = getattr(result, "status_code", None)
    if not isinstance(status, int):
        return None
    get_data = getattr(result, "get_data", None)
    body = get_data() if callable(get_data) else getattr(result, "body", None)
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        return None
    if not 100 <= status <= 599:
        raise ModelError(f"output_fn returned a {type(result).__name__} with status {status}")
    raw = getattr(result, "headers", None) or {}
    pairs = list(raw.items()) if hasattr(raw, "items") else list(raw)
    content_type = getattr(result, "content_type", None) or getattr(result, "media_type", None) \
        or next((v for k, v in pairs if str(k).lower() == "content-type"), None) or "application/octet-stream"
    headers = {str(k): str(v) for k, v in pairs if str(k).lower() not in _SERVER_HEADERS}
    return Reply(bytes(body), str(content_type), status, headers)


def streamed(chunks: Any, accept: str, context: Context | None) -> Reply:
    """A streamed reply (its status and headers from the context, as :func:`reply_for`)."""
    reply = reply_for(b"", accept, context)
    reply.chunks = chunks
    return reply


def reply_for(result: Any, accept: str, context: Context | None) -> Reply:
    response = response_object(result)
    if response is not None:
        return response
    content_type = accept
    if isinstance(result, tuple) and len(result) == 2:
        result, content_type = result
    if isinstance(result, bytes):
        body = result
    elif isinstance(result, str):
        body = result.encode("utf-8")
    elif isinstance(result, (bytearray, memoryview)):
        body = bytes(result)
    else:
        # Multi Model Server JSON-encodes what is neither bytes nor str; so do we.
        body = orjson.dumps(result, default=toolkit.tolist)
    reply = Reply(body, str(content_type))
    if context is not None and context.request_processor:
        status, _ = context.get_response_status(0)
        reply.status = status
        headers = context.get_response_headers(0)
        if "content-type" in headers:
            reply.content_type = headers.pop("content-type")
        reply.headers.update(headers)
    return reply
