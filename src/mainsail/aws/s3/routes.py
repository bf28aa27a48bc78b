"""Routing inside the control app: which requests S3 takes (signed for ``s3``, or claimed before the
control plane's routes), as Starlette routes around the :class:`~mainsail.aws.s3.api.S3Api`."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.datastructures import URLPath
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from mainsail.aws.s3.api import S3Api
from mainsail.aws.s3.store import S3Store
from mainsail.aws.s3.wire import CREDENTIAL_RE

_INVOCATIONS_RE = re.compile(r"/endpoints/.+/invocations")
_S3_QUERY = ("uploads", "uploadId", "delete")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def signed_for_s3(scope: Scope) -> bool:
    """Whether a request is signed for the ``s3`` service: SigV4 (header or presigned URL) with an
    ``s3`` credential scope, or SigV2 (header or presigned URL), which only S3 speaks."""
    headers = _headers(scope)
    auth = headers.get("authorization", "")
    match = CREDENTIAL_RE.search(auth)
    if match:
        return match.group(2) == "s3"
    if auth.startswith("AWS "):
        return True
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    credential = query.get("X-Amz-Credential", [""])[0]
    if credential:
        return bool(credential.endswith("/s3/aws4_request"))
    return "AWSAccessKeyId" in query and "Signature" in query  # a SigV2 presigned URL: S3 only


def claims_before_control(scope: Scope) -> bool:
    """Requests that S3 takes although a control-plane route would match their path: anything signed
    for ``s3``, ``POST /endpoints/.../invocations`` with an S3 query (``uploads``, ``uploadId``,
    ``delete``: a bucket named ``endpoints``), and ``GET /metrics`` with an ``Authorization`` header."""
    if scope["type"] != "http":
        return False
    if signed_for_s3(scope):
        return True
    method, path = scope["method"], scope["path"]
    if method == "POST" and _INVOCATIONS_RE.fullmatch(path):
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        return any(name in query for name in _S3_QUERY)
    if method == "GET" and path == "/metrics":
        return "authorization" in _headers(scope)
    return False


class S3Route(BaseRoute):
    """A Starlette route that hands the requests ``claim`` accepts to the S3 app, whatever their path."""

    def __init__(self, app: S3Api, claim: Callable[[Scope], bool]) -> None:
        self.app = app
        self.claim = claim

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and self.claim(scope):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: object) -> URLPath:
        raise NoMatchFound(name, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def s3_routes(store: S3Store) -> tuple[S3Route, S3Route]:
    """(first, last): put ``first`` before the control plane's routes and ``last`` after them; S3
    then answers everything the control plane does not (GET/HEAD ``/``, ``/{bucket}``, ...)."""
    api = S3Api(store)
    return S3Route(api, claims_before_control), S3Route(api, lambda scope: True)
