"""Refusing a request body for its size without breaking the connection (both planes).

A server that answers 413 before reading the body, and then closes, leaves the unread bytes in its
socket: the kernel resets the connection, and a client still sending gets a broken pipe instead of the
answer. uvicorn closes at once when the request asked for it (``Connection: close``, which Python's
``urllib`` always sends, or HTTP/1.0); on a keep-alive connection it reads and throws away the rest
itself, for as long as the client sends. So the rest of a refused body is read and thrown away here, up
to :data:`DRAIN_LIMIT`, before the refusal is sent (nginx's lingering close does the same): the client
reads the answer, and the connection carries its next request. Beyond the bound the answer says
``Connection: close`` and the server closes after it.

Only a refusal pays for this: a body within the limit is read as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

#: the most bytes of a refused request body read (and thrown away) before the refusal is sent;
#: a body declared or found larger is answered at once with ``Connection: close``
DRAIN_LIMIT = 64 * 1024 * 1024

#: what a refusal whose body was not read to its end adds to its response headers
CLOSE: Mapping[str, str] = MappingProxyType({"connection": "close"})

#: ASGI ``receive`` (Starlette's ``starlette.types.Receive``, which this leaf does not import)
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


async def drain_body(receive: Receive, headers: Mapping[str, str], received: int = 0) -> bool:
    """Read and throw away the rest of a request body that is refused, before the refusal is sent.
    Call it only while more of the body is to come (the last ``http.request`` message read, if any,
    had ``more_body``); ``headers`` are the request's (names in lower case), ``received`` the body's
    bytes read so far.

    True: the body was read to its end, and the connection can carry the next request. False: the
    client waits for ``100 Continue`` (and sends no body unless told to), declared or sent more than
    :data:`DRAIN_LIMIT`, or went away; the refusal must close the connection (:data:`CLOSE`)."""
    if received == 0 and headers.get("expect", "").lower() == "100-continue":
        return False
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > DRAIN_LIMIT):
        return False
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False  # the client went away
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
        if received > DRAIN_LIMIT:
            return False
