"""``mainsail serve --api-key``: a shared secret every request but ``GET /ping`` must carry, as
``X-Api-Key: KEY`` or ``Authorization: Bearer KEY``, for a model server reached directly (not through
``mainsail up``, whose SigV4 and policies cover its instances). The check wraps the app only when a
key is set, so the default hot path is unchanged."""

from __future__ import annotations

import hmac

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

HEADER = b"x-api-key"


class ApiKeyGate:
    """Answers 401 (JSON ``{"error", "message"}``) to a request without the key; passes the rest on."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    def _presented(self, scope: Scope) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name == HEADER:
                return bytes(value)
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return bytes(value[7:]).strip()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] == "/ping" and scope["method"] in ("GET", "HEAD")):
            await self.app(scope, receive, send)
            return
        presented = self._presented(scope)
        if presented is not None and hmac.compare_digest(presented, self.key):
            await self.app(scope, receive, send)
            return
        message = ("This server requires an API key: send it as X-Api-Key: KEY or Authorization: Bearer KEY."
                   if presented is None else "The API key is not valid.")
        body = orjson.dumps({"error": "Unauthorized", "message": message})
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="mainsail"'), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
