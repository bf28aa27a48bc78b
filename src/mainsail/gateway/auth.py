"""Signed requests on ``mainsail up``'s one port: with access keys configured, every request is
authenticated (AWS SigV4, ``mainsail.aws.auth.sigv4``) and authorized (the key's IAM policy) before the
control plane sees it, and refused with the error the addressed service itself answers: SageMaker and
CloudWatch Logs (AWS JSON 1.1), CloudWatch (CBOR, JSON 1.0 or query, with ``x-amzn-query-error``), the
runtime API (REST JSON), STS (query, XML) and S3 (XML).

What is signed, the service is told by the request itself: S3 by its credential scope (or, unsigned,
by its path: everything the other APIs do not claim); the JSON services by ``X-Amz-Target``; STS and
CloudWatch's query protocol by a form-encoded ``POST /`` (``Version`` tells them apart once the body is
in); CloudWatch's CBOR by its ``/service/...`` path; the runtime API by its ``/endpoints/...`` paths.
``GET /metrics`` (Prometheus cannot sign) is answered unsigned to loopback clients only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import cbor2
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mainsail.aws.auth import actions, sigv4
from mainsail.aws.auth.credentials import AccessKey, KeyRing
from mainsail.aws.auth.policy import Decision
from mainsail.aws.auth.sigv4 import AuthFailure
from mainsail.aws.cloudwatch import wire as cloudwatch_wire
from mainsail.aws.protocol import respond
from mainsail.aws.s3.files import S3Error
from mainsail.aws.s3.routes import signed_for_s3
from mainsail.aws.s3.wire import AwsChunkedDecoder, error_response
from mainsail.aws.sts import NAMESPACE as STS_NAMESPACE
from mainsail.aws.xmltext import xml_escape
from mainsail.drain import drain_body
from mainsail.routing.responses import MAX_PAYLOAD, payload_too_large

logger = logging.getLogger(__name__)

#: the scope key the authenticated :class:`AccessKey` is kept under (STS answers it)
IDENTITY = "mainsail.identity"
#: the largest body of a JSON or query call buffered to be hashed (a runtime call: 6 MB)
MAX_API_BODY = 16 * 1024 * 1024
LOOPBACK = ("127.0.0.1", "::1", "localhost")

#: (code, HTTP status) per failure kind and protocol
_JSON_CODES = {"missing": ("MissingAuthenticationTokenException", 403),
               "incomplete": ("IncompleteSignatureException", 400),
               "unsupported": ("IncompleteSignatureException", 400),
               "unknown_key": ("UnrecognizedClientException", 403),
               "token": ("UnrecognizedClientException", 403)}
_QUERY_CODES = {"missing": ("MissingAuthenticationToken", 403), "incomplete": ("IncompleteSignature", 400),
                "unsupported": ("IncompleteSignature", 400), "unknown_key": ("InvalidClientTokenId", 403),
                "token": ("InvalidClientTokenId", 403)}
_S3_CODES = {"missing": ("AccessDenied", 403), "incomplete": ("AuthorizationHeaderMalformed", 400),
             "unsupported": ("InvalidRequest", 400), "unknown_key": ("InvalidAccessKeyId", 403),
             "token": ("InvalidToken", 400), "signature": ("SignatureDoesNotMatch", 403),
             "skewed": ("RequestTimeTooSkewed", 403), "expired": ("AccessDenied", 403),
             "scope": ("AuthorizationHeaderMalformed", 400), "payload": ("XAmzContentSHA256Mismatch", 400)}
_S3_MESSAGES = {"missing": "Access Denied",
                "unknown_key": "The AWS Access Key Id you provided does not exist in our records.",
                "token": "The provided token is malformed or otherwise invalid.",
                "skewed": "The difference between the request time and the current time is too large."}


@dataclass(frozen=True)
class Service:
    """Who a request is for: ``protocol`` (json, rest-json, query, s3, metrics) and the SigV4 service
    name it must be signed for (``None``: any)."""

    protocol: str
    signing_name: str | None
    operation: str = ""


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]


_CLOUDWATCH_CBOR = f"/service/{cloudwatch_wire.TARGET_PREFIX}/operation/"


def classify(scope: Scope, headers: dict[str, str]) -> Service:
    """Which API a request addresses (before its body is read)."""
    if signed_for_s3(scope):
        return Service("s3", "s3")
    target = headers.get("x-amz-target")
    method, path = scope["method"], scope["path"]
    if target:
        prefix, _, operation = target.partition(".")
        if prefix == "SageMaker":
            return Service("json", "sagemaker", operation)
        if prefix.startswith("Logs_"):
            return Service("json", "logs", operation)
        if prefix == cloudwatch_wire.TARGET_PREFIX:
            return Service("json", "monitoring", operation)
        if prefix == "AnyScaleFrontendService":
            return Service("json", "application-autoscaling", operation)
        return Service("json", None, operation)
    if method == "POST" and path.startswith(_CLOUDWATCH_CBOR):
        return Service("cbor", "monitoring", path[len(_CLOUDWATCH_CBOR):])
    if method == "POST" and path == "/" and headers.get("content-type", "").split(";")[0].strip().lower() \
            == "application/x-www-form-urlencoded":
        return Service("query", None)
    if method == "POST" and actions.runtime(path, "") is not None:
        return Service("rest-json", "sagemaker")
    if method == "GET" and path == "/metrics":
        return Service("metrics", None)
    return Service("s3", "s3")


def _error(service: Service, code: str, status: int, message: str, method: str, path: str,
           fields: dict[str, str] | None = None) -> Response:
    request_id = str(uuid.uuid4())
    if service.protocol == "json" and service.signing_name == "monitoring":  # query-compatible: the code twice
        return Response(json.dumps({"__type": code, "message": message}), status_code=status,
                        media_type=cloudwatch_wire.JSON_TYPE, headers={
                            "x-amzn-RequestId": request_id, "x-amzn-query-error": f"{_query_code(code)};Sender"})
    if service.protocol == "json":
        return respond(status, {"__type": code, "Message": message}, request_id)
    if service.protocol == "cbor":  # CloudWatch's smithy-rpc-v2-cbor
        return Response(cbor2.dumps({"__type": code, "message": message}), status_code=status,
                        media_type=cloudwatch_wire.CBOR_TYPE, headers={
                            "x-amzn-RequestId": request_id, "smithy-protocol": "rpc-v2-cbor",
                            "x-amzn-query-error": f"{_query_code(code)};Sender"})
    if service.protocol == "rest-json":
        return Response(json.dumps({"message": message}), status_code=status, media_type="application/json",
                        headers={"X-Amzn-ErrorType": code, "x-amzn-RequestId": request_id})
    if service.protocol == "query":
        xml = (f'<ErrorResponse xmlns="{STS_NAMESPACE}"><Error><Type>Sender</Type><Code>{code}</Code>'
               f"<Message>{xml_escape(message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>")
        return Response(xml, status_code=status, media_type="text/xml", headers={"x-amzn-RequestId": request_id})
    if service.protocol == "s3":
        return error_response(S3Error(code, status, message, **(fields or {})), request_id.replace("-", "")[:16]
                              .upper(), method, path)
    return Response(json.dumps({"error": code, "message": message}), status_code=status,
                    media_type="application/json")


def _query_code(code: str) -> str:
    """A JSON error code as the query protocol words it (``AccessDeniedException``: ``AccessDenied``)."""
    return code.removesuffix("Exception")


def failure_response(service: Service, failure: AuthFailure, method: str, path: str) -> Response:
    """``failure`` as the addressed service words it."""
    if service.protocol == "s3":
        code, status = _S3_CODES.get(failure.kind, ("SignatureDoesNotMatch", 403))
        fields = {k: v for k, v in failure.fields.items() if k in (
            "AWSAccessKeyId", "StringToSign", "SignatureProvided", "CanonicalRequest", "RequestTime", "ServerTime",
            "MaxAllowedSkewMilliseconds", "X-Amz-Expires", "Expires", "ClientComputedContentSHA256",
            "S3ComputedContentSHA256")}
        return _error(service, code, status, _S3_MESSAGES.get(failure.kind, failure.detail), method, path, fields)
    table = _QUERY_CODES if service.protocol == "query" else _JSON_CODES
    default = ("SignatureDoesNotMatch", 403) if service.protocol == "query" else ("InvalidSignatureException", 403)
    code, status = table.get(failure.kind, default)
    return _error(service, code, status, failure.detail or code, method, path)


def denied_response(service: Service, key: AccessKey, action: str, resource: str, decision: Decision,
                    method: str, path: str) -> Response:
    """AWS's AccessDenied answer naming the user, the action and the resource."""
    why = ("with an explicit deny in an identity-based policy" if decision is Decision.EXPLICIT_DENY
           else f"because no identity-based policy allows the {action} action")
    message = f"User: {key.arn} is not authorized to perform: {action} on resource: {resource} {why}"
    if service.protocol in ("s3", "query"):
        return _error(service, "AccessDenied", 403, message, method, path)
    return _error(service, "AccessDeniedException", 400, message, method, path)


def authorize(key: AccessKey, requests: list[actions.Request]) -> tuple[str, str, Decision] | None:
    """The first (action, resource, decision) that ``key``'s policy does not allow, or ``None``."""
    if key.policy is None:
        return None
    for request in requests:
        for resource in request.resources:
            decision = key.policy.evaluate(request.action, resource)
            if decision is not Decision.ALLOW:
                return request.action, resource, decision
    return None


class _Replay:
    """Hands a buffered body to the app, then the client's own messages (a disconnect)."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive

    async def __call__(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.receive()


class _S3BodyCheck:
    """Checks an S3 body as the S3 API reads it: its SHA-256 against ``x-amz-content-sha256``, or every
    ``aws-chunked`` chunk's signature; a mismatch fails the read (nothing is stored)."""

    def __init__(self, receive: Receive, declared: str, verified: sigv4.Verified) -> None:
        self.receive = receive
        self.declared = declared
        self.hash = hashlib.sha256() if sigv4.is_sha256_hex(declared) else None
        self.decoder = None
        if declared in (sigv4.STREAMING_SIGNED, sigv4.STREAMING_SIGNED_TRAILER):
            self.decoder = AwsChunkedDecoder(sigv4.ChunkSignatures(verified),
                                             signed_trailer=declared == sigv4.STREAMING_SIGNED_TRAILER)

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] != "http.request":
            return message
        body = message.get("body", b"")
        last = not message.get("more_body", False)
        if self.hash is not None:
            self.hash.update(body)
            if last and self.hash.hexdigest() != self.declared:
                raise S3Error("XAmzContentSHA256Mismatch", 400, "The provided 'x-amz-content-sha256' header does "
                              "not match what was computed.", ClientComputedContentSHA256=self.declared,
                              S3ComputedContentSHA256=self.hash.hexdigest())
        if self.decoder is not None:
            try:
                self.decoder.feed(body)
                if last:
                    self.decoder.finish()
            except AuthFailure as exc:
                raise S3Error("SignatureDoesNotMatch", 403, exc.detail) from None
        return message


class SignedRequests:
    """The ASGI gate in front of the control plane: authenticate, authorize, then pass on."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_list = _headers(scope)
        headers: dict[str, str] = {}
        for name, value in header_list:
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        service = classify(scope, headers)
        method, path = scope["method"], scope["path"]
        raw_path = (scope.get("raw_path") or path.encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        if service.protocol == "metrics" and "authorization" not in headers:
            client = scope.get("client")
            if client and client[0] in LOOPBACK:
                await self.app(scope, receive, send)
                return
        try:
            signed = sigv4.parse(headers, query)
            if service.signing_name and signed.service != service.signing_name:
                raise AuthFailure("scope", f"Credential should be scoped to correct service: "
                                  f"'{service.signing_name}'. ")
        except AuthFailure as failure:
            await failure_response(service, failure, method, path)(scope, receive, send)
            return
        if service.protocol == "s3":
            await self._s3(scope, receive, send, service, signed, header_list, headers, raw_path, query)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            body += message.get("body", b"")
            if len(body) > MAX_API_BODY or (service.protocol == "rest-json" and len(body) > MAX_PAYLOAD):
                response = (payload_too_large().response() if service.protocol == "rest-json" else _error(
                    service, "SerializationException", 413, "The request body is too large.", method, path))
                # the rest of the body read and thrown away first (mainsail.drain): a client still
                # sending reads this answer, not a reset connection
                if message.get("more_body", False) and not await drain_body(receive, headers, len(body)):
                    response.headers["Connection"] = "close"
                await response(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        data = bytes(body)
        try:
            payload_hash = hashlib.sha256(data).hexdigest()
            declared = headers.get("x-amz-content-sha256")
            if declared is not None and declared != payload_hash and not signed.presigned:
                raise AuthFailure("signature", "The x-amz-content-sha256 header does not match the body.")
            verified = sigv4.verify(signed, self.keys, method=method, raw_path=raw_path, query_string=query,
                                    headers=header_list, payload_hash=payload_hash)
        except AuthFailure as failure:
            await failure_response(service, failure, method, path)(scope, receive, send)
            return
        denied = authorize(verified.key, self._requests(service, path, data, signed.region))
        if denied is not None:
            await denied_response(service, verified.key, *denied, method, path)(scope, receive, send)
            return
        scope = {**scope, IDENTITY: verified.key}
        await self.app(scope, _Replay(data, receive), send)

    @staticmethod
    def _requests(service: Service, path: str, data: bytes, region: str) -> list[actions.Request]:
        if service.protocol == "query":
            params = cloudwatch_wire.query_params(data)
            if cloudwatch_wire.is_query_call(params):
                return [actions.cloudwatch(params.get("Action", ""))]
            return []  # STS GetCallerIdentity needs no permission
        if service.protocol == "metrics":
            return []  # /metrics needs only a valid key
        if service.signing_name == "monitoring":
            return [actions.cloudwatch(service.operation)]
        if service.signing_name == "application-autoscaling":
            return [actions.autoscaling(service.operation)]
        if service.protocol == "rest-json":
            runtime = actions.runtime(path, region)
            return [runtime] if runtime else []
        try:
            body: Any = json.loads(data) if data else {}
        except (ValueError, RecursionError):  # the operation itself answers SerializationException
            body = None
        if service.signing_name == "logs":
            return [actions.logs(service.operation, body, region)]
        return [actions.sagemaker(service.operation, body, region)]

    async def _s3(self, scope: Scope, receive: Receive, send: Send, service: Service, signed: sigv4.Signed,
                  header_list: list[tuple[str, str]], headers: dict[str, str], raw_path: str, query: str) -> None:
        method, path = scope["method"], scope["path"]
        try:
            if signed.presigned:
                declared = sigv4.UNSIGNED_PAYLOAD
            else:
                declared = headers.get("x-amz-content-sha256", "")
                if not declared:
                    await _error(service, "InvalidRequest", 400, "Missing required header for this request: "
                                 "x-amz-content-sha256", method, path)(scope, receive, send)
                    return
            verified = sigv4.verify(signed, self.keys, method=method, raw_path=raw_path, query_string=query,
                                    headers=header_list, payload_hash=declared)
        except AuthFailure as failure:
            await failure_response(service, failure, method, path)(scope, receive, send)
            return
        wanted = [actions.s3(method, raw_path, query, headers)]
        copy = actions.s3_copy_source(headers)
        if copy is not None:
            wanted.append(copy)
        denied = authorize(verified.key, wanted)
        if denied is not None:
            response = denied_response(service, verified.key, *denied, method, path)
            if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
                response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        checked: Receive = receive
        if not signed.presigned and (sigv4.is_sha256_hex(declared) or declared.startswith("STREAMING-AWS4")):
            checked = _S3BodyCheck(receive, declared, verified)
        await self.app({**scope, IDENTITY: verified.key}, checked, send)
